import math

import numpy as np
import pytest
import torch

from lightning_mixup import functional as F
from lightning_mixup.policies import CutMix, MixUp, MixUpOrCutMix


def box_mask(lo, hi, spatial):
    """Reference: True inside each sample's box ``[lo, hi)``, shaped ``(n, 1, *spatial)``."""
    grids = torch.meshgrid(*(torch.arange(size) for size in spatial), indexing="ij")
    inside = torch.ones((len(lo), *spatial), dtype=torch.bool)
    for k, pos in enumerate(grids):
        view = (-1,) + (1,) * len(spatial)
        inside &= (pos >= lo[:, k].view(view)) & (pos < hi[:, k].view(view))
    return inside.unsqueeze(1)


def gen(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def data(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- soft targets
def test_soft_targets_one_hot_and_smoothing_sum_to_one():
    y = torch.tensor([0, 3, 1])
    plain = F.soft_targets(y, 4)
    assert torch.equal(plain, torch.eye(4)[y])
    smooth = F.soft_targets(y, 4, label_smoothing=0.2)
    assert smooth.dtype == torch.float32
    torch.testing.assert_close(smooth.sum(1), torch.ones(3))
    assert smooth[0, 0].item() == pytest.approx(0.8 + 0.05)
    assert smooth[0, 1].item() == pytest.approx(0.05)


def test_soft_targets_pass_two_d_through_unsmoothed():
    soft = torch.tensor([[0.25, 0.75], [1.0, 1.0]], dtype=torch.float64)
    out = F.soft_targets(soft, 2, label_smoothing=0.3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, soft.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_soft_targets_cpu_numpy_path_equals_scatter(dtype, label_dtype, smoothing):
    # float32/float64 rows are built with NumPy on the CPU; compare with torch's scatter.
    y = torch.randint(0, 7, (33,), generator=torch.Generator().manual_seed(0)).to(label_dtype)
    off = smoothing / 7
    want = torch.full((33, 7), off, dtype=dtype).scatter_(
        1, y.long().unsqueeze(1), 1 - smoothing + off
    )
    got = F.soft_targets(y[::1], 7, smoothing, dtype)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(F.soft_targets(y[::2], 7, smoothing, dtype), want[::2])  # a strided view


@pytest.mark.parametrize(
    ("target", "k", "smoothing", "error", "match"),
    [
        (torch.tensor([0, 5]), 5, 0.0, ValueError, r"\[0, 5\), got values \[5\]"),
        (torch.tensor([-1, 0]), 5, 0.0, ValueError, r"got values \[-1\]"),
        (torch.zeros(2, 3), 4, 0.0, ValueError, r"`num_classes` = 4 columns, got shape \(2, 3\)"),
        (torch.zeros(2, 3, dtype=torch.bool), 3, 0.0, TypeError, "Index masks must be integer"),
        (torch.zeros(2), 3, 0.0, TypeError, "1-D targets must be integer class indices"),
        (torch.tensor(1), 3, 0.0, ValueError, r"got shape \(\)"),
        (torch.tensor([0]), 0, 0.0, ValueError, "`num_classes` must be a positive integer, got 0"),
        (
            torch.tensor([0]),
            3,
            1.5,
            ValueError,
            r"`label_smoothing` must be a number in \[0, 1\], got 1.5",
        ),
    ],
)
def test_soft_targets_errors(target, k, smoothing, error, match):
    with pytest.raises(error, match=match):
        F.soft_targets(target, k, smoothing)


# ----------------------------------------------------------------------------- λ sampling
@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_sample_beta_matches_beta_moments(alpha):
    lam = F.sample_beta(alpha, 200_000, gen(1))
    assert lam.min() >= 0 and lam.max() <= 1
    var = 1.0 / (4 * (2 * alpha + 1))
    assert lam.mean().item() == pytest.approx(0.5, abs=0.005)
    assert lam.var().item() == pytest.approx(var, rel=0.02)


def test_sample_beta_tiny_alpha_is_finite_and_near_edges():
    lam = F.sample_beta(1e-6, 1000, gen())
    assert torch.isfinite(lam).all()
    assert ((lam < 1e-3) | (lam > 1 - 1e-3)).all()


def test_sample_beta_zero_alpha_means_no_mix_and_seed_repeats():
    assert torch.equal(F.sample_beta(0.0, 3, gen()), torch.ones(3, dtype=torch.float64))
    assert torch.equal(F.sample_beta(0.4, 50, gen(7)), F.sample_beta(0.4, 50, gen(7)))
    assert not torch.equal(F.sample_beta(0.4, 50, gen(7)), F.sample_beta(0.4, 50, gen(8)))
    with pytest.raises(ValueError, match="`alpha` must be a number >= 0, got -1"):
        F.sample_beta(-1, 3, gen())


def test_sampling_uses_only_the_given_generator():
    torch.manual_seed(123)
    np.random.seed(123)
    before, np_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    F.sample_beta(0.5, 100, gen())
    F.sample_partners(10, gen())
    MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem")).sample((8, 3, 4, 4), gen())
    assert torch.equal(before, torch.get_rng_state())
    assert np.array_equal(np_before, np.random.get_state()[1])


# ----------------------------------------------------------------------------- pairing
@pytest.mark.parametrize("n", [1, 2, 3, 8, 9])
def test_partners_are_a_matching(n):
    p = F.sample_partners(n, gen(n))
    assert torch.equal(p[p], torch.arange(n))
    fixed = (p == torch.arange(n)).sum().item()
    assert fixed == n % 2


def test_partner_is_uniform_among_others():
    n, trials = 6, 30_000
    g = gen(3)
    counts = torch.zeros(n)
    for _ in range(trials):
        counts[F.sample_partners(n, g)[0]] += 1
    assert counts[0] == 0
    expected = trials / (n - 1)
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum().item()
    assert chi2 < 20.5  # 0.1 % quantile of chi-square with 4 degrees of freedom is 18.5


# ----------------------------------------------------------------------------- ramp
def test_ramp_strength_shapes_and_stop():
    assert F.ramp_strength(0.5, ramp_start_epoch=1, ramp_epochs=2) == 0.0
    assert F.ramp_strength(1.0, ramp_start_epoch=1, ramp_epochs=2) == 0.0
    assert F.ramp_strength(2.0, ramp_start_epoch=1, ramp_epochs=2) == 0.5
    assert F.ramp_strength(2.0, 1, 2, "cosine") == pytest.approx(0.5)
    assert F.ramp_strength(1.5, 1, 2, "cosine") == pytest.approx(0.5 - 0.5 * math.cos(math.pi / 4))
    assert F.ramp_strength(9.0, 1, 2) == 1.0
    assert F.ramp_strength(0.0) == 1.0
    assert F.ramp_strength(4.99, stop_epoch=5) == 1.0
    assert F.ramp_strength(5.0, stop_epoch=5) == 0.0
    with pytest.raises(
        ValueError, match=r"`ramp_shape` must be one of \('linear', 'cosine'\), got 'step'"
    ):
        F.ramp_strength(3.0, 0, 2, "step")


# ----------------------------------------------------------------------------- MixUp
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("n", [2, 5, 8])
def test_mixup_is_pairwise_convex_combination(mode, n):
    x = data(n, 3, 4, 4, seed=10)
    y = F.soft_targets(torch.arange(n) % 3, 3)
    policy = MixUp(alpha=1.0, mode=mode)
    params = policy.sample(x.shape, gen(n))
    mixed, target = policy.apply(x.clone(), y.clone(), params)
    for i in range(n):
        j, lam = params.partner[i].item(), params.lam[i].item()
        torch.testing.assert_close(mixed[i], lam * x[i] + (1 - lam) * x[j])
        torch.testing.assert_close(target[i], lam * y[i] + (1 - lam) * y[j])
    torch.testing.assert_close(target.sum(1), torch.ones(n))
    paired = params.partner != torch.arange(n)
    assert (params.lam[~paired] == 1).all()
    assert params.lam[paired].unique().numel() == (1 if mode == "batch" else int(paired.sum()))


def test_mixup_two_nonzeros_per_row_with_distinct_labels():
    n = 6
    x = torch.randn(n, 5)
    y = F.soft_targets(torch.arange(n), n)
    policy = MixUp(alpha=1.0, mode="elem")
    _, target = policy.apply(x, y, policy.sample(x.shape, gen(4)))
    assert ((target > 0).sum(1) == 2).all()


def test_mixup_keeps_dtype_device_and_works_on_any_shape():
    for shape in [(4, 7), (4, 2, 9), (4, 1, 2, 3, 4)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        policy = MixUp(alpha=0.4)
        out, target = policy.apply(x, torch.eye(4), policy.sample(x.shape, gen()))
        assert out is x and out.dtype == torch.bfloat16 and target.dtype == torch.float32


def test_batch_of_one_and_lambda_one_are_identity():
    x = torch.randn(1, 3, 4, 4)
    policy = MixUpOrCutMix(MixUp(1.0), CutMix(1.0))
    params = policy.sample(x.shape, gen())
    assert params.is_identity
    out, _ = policy.apply(x.clone(), torch.eye(1), params)
    assert torch.equal(out, x)
    x = torch.randn(4, 3)
    params = MixUp(1.0).sample(x.shape, gen(), p=0.0)
    assert params.is_identity and torch.equal(params.lam, torch.ones(4, dtype=torch.float64))


def test_a_draft_mixes_unless_one_sample_or_no_draw_lowers_lambda():
    policy = MixUpOrCutMix(MixUp(1.0), CutMix(1.0))
    assert policy.draft(4, gen()).mixes
    assert not policy.draft(1, gen()).mixes  # a batch of one has no partner
    assert not policy.draft(4, gen(), p=0.0).mixes  # every coin says no: lambda is 1 everywhere


def test_seeded_generator_repeats_itself():
    policy = MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem"))
    a = policy.sample((9, 3, 8, 8), gen(5))
    b = policy.sample((9, 3, 8, 8), gen(5))
    for name in ("partner", "lam", "cut", "lo", "hi"):
        assert torch.equal(getattr(a, name), getattr(b, name))


# ----------------------------------------------------------------------------- CutMix
@pytest.mark.parametrize("spatial", [(16,), (8, 12), (4, 6, 5)])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pixels_from_two_samples_and_lambda_is_kept_area(spatial, mode):
    n = 7
    # Every sample is a constant distinct value, so each output pixel names its source.
    x = (
        torch.arange(n, dtype=torch.float32)
        .view(n, 1, *([1] * len(spatial)))
        .expand(n, 2, *spatial)
        .clone()
    )
    y = F.soft_targets(torch.arange(n), n)
    policy = CutMix(alpha=1.0, mode=mode)
    for seed in range(5):
        params = policy.sample(x.shape, gen(seed))
        out, target = policy.apply(x.clone(), y.clone(), params)
        for i in range(n):
            j = params.partner[i].item()
            values = set(out[i].unique().tolist())
            assert values <= {float(i), float(j)}
            own = (out[i] == i).float().mean().item() if i != j else 1.0
            assert params.lam[i].item() == pytest.approx(own)
            torch.testing.assert_close(target[i, i], torch.tensor(own, dtype=torch.float32))
        torch.testing.assert_close(target.sum(1), torch.ones(n))


def test_cutmix_box_is_one_rectangle_and_clipped():
    lam = torch.tensor([0.0, 0.75, 1.0], dtype=torch.float64)
    lo, hi, kept = F.cutmix_boxes(lam, (8, 8), gen(2))
    assert (lo >= 0).all() and (hi <= 8).all() and (hi >= lo).all()
    area = (hi - lo).prod(1).double()
    torch.testing.assert_close(kept, 1 - area / 64)
    assert kept[2] == 1.0
    mask = box_mask(lo, hi, (8, 8))
    assert mask.shape == (3, 1, 8, 8)
    torch.testing.assert_close(mask.flatten(1).double().mean(1), 1 - kept)


def test_cutmix_requested_area_before_clipping():
    # Without clipping (box fully inside) the kept area equals the requested λ up to rounding.
    lam = torch.full((2000,), 0.75, dtype=torch.float64)
    lo, hi, kept = F.cutmix_boxes(lam, (32, 32), gen(0))
    inside = (lo > 0).all(1) & (hi < 32).all(1)
    assert inside.any()
    assert kept[inside].unique().tolist() == [0.75]


def test_cutmix_rejects_flat_inputs():
    with pytest.raises(ValueError, match=r"shape \(B, C, \*spatial\).*got shape \(4, 10\)"):
        CutMix(1.0).sample((4, 10), gen())
    with pytest.raises(ValueError, match="1 to 3 spatial dimensions"):
        F.cutmix_boxes(torch.ones(2), (2, 2, 2, 2), gen())


def test_switch_batch_mode_picks_one_per_batch_and_rate_follows_switch_prob():
    policy = MixUpOrCutMix(MixUp(1.0), CutMix(1.0), switch_prob=0.25)
    g = gen(11)
    cuts = []
    for _ in range(4000):
        params = policy.sample((4, 3, 8, 8), g)
        assert params.cut.unique().numel() == 1
        cuts.append(bool(params.cut[0]))
    assert sum(cuts) / len(cuts) == pytest.approx(0.25, abs=0.03)


def test_switch_elem_mode_mixes_both_kinds_in_one_batch():
    n = 64
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()
    y = F.soft_targets(torch.arange(n), n)
    policy = MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem"), switch_prob=0.5)
    params = policy.sample(x.shape, gen(3))
    assert 0 < params.cut.sum() < n
    out, target = policy.apply(x.clone(), y, params)
    for i in range(n):
        j, lam = params.partner[i].item(), params.lam[i].item()
        if params.cut[i]:
            assert set(out[i].unique().tolist()) <= {float(i), float(j)}
        else:
            torch.testing.assert_close(out[i], lam * x[i] + (1 - lam) * x[j])
        assert target[i, i].item() == pytest.approx(lam if i != j else 1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MixUp(alpha=-0.1), "`alpha` must be a number >= 0, got -0.1"),
        (lambda: MixUp(alpha=True), "`alpha` must be a number >= 0, got True"),
        (lambda: MixUp(mode="pixel"), r"`mode` must be one of \('batch', 'elem'\), got 'pixel'"),
        (lambda: CutMix(alpha=-1), "`cutmix_alpha` must be a number >= 0, got -1"),
        (
            lambda: MixUpOrCutMix(MixUp(), CutMix(), switch_prob=2),
            r"`switch_prob` must be a number in \[0, 1\], got 2",
        ),
        (
            lambda: MixUpOrCutMix(MixUp(mode="elem"), CutMix()),
            "`mode` must be the same for both policies",
        ),
    ],
)
def test_policy_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


PAIR_POLICIES = {
    "mixup-batch": MixUp(1.0, "batch"),
    "mixup-elem": MixUp(1.0, "elem"),
    "cutmix-elem": CutMix(1.0, "elem"),
    "both-elem": MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem"), 0.5),
    "both-elem-p": MixUpOrCutMix(MixUp(0.5, "elem"), CutMix(2.0, "elem"), 0.3),
}


@pytest.mark.parametrize("n", [2, 6, 7, 64])
@pytest.mark.parametrize("name", PAIR_POLICIES)
def test_pair_by_pair_path_equals_the_gather_path_bit_for_bit(monkeypatch, n, name):
    from lightning_mixup import policies as P

    policy = PAIR_POLICIES[name]
    x = data(n, 3, 16, 16, seed=n)
    y = F.soft_targets(torch.arange(n) % 5, 5)
    params = policy.sample(x.shape, gen(n), p=0.8)
    monkeypatch.setattr(P, "PAIRWISE_MIN_BYTES", 1 << 40)  # every sample is "small": gather
    gathered, y_gathered = policy.apply(x.clone(), y, params, buffer=torch.empty_like(x))
    calls = []
    real = F.mix_pairs_
    monkeypatch.setattr(F, "mix_pairs_", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(P, "PAIRWISE_MIN_BYTES", 0)  # every sample is "large": pair by pair
    paired, y_paired = policy.apply(x.clone(), y, params, buffer=torch.empty_like(x))
    assert calls == ([] if params.identity else [1])
    assert torch.equal(paired, gathered) and torch.equal(y_paired, y_gathered)
    unbuffered, _ = policy.apply(x.clone(), y, params)  # no scratch: the same values
    assert torch.equal(unbuffered, gathered)


def test_pair_by_pair_mix_refuses_a_pairing_that_is_not_symmetric():
    x = data(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"`partner` must be a symmetric pairing"):
        F.mix_pairs_(x, torch.tensor([1, 2, 0]), torch.full((3,), 0.5, dtype=torch.float64))
