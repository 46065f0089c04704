"""The compiled CPU kernel (lightning_mixup/_kernel.c) against the torch-ops path it replaces."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightning_mixup import MixupCallback
from lightning_mixup import functional as F
from lightning_mixup import policies as P
from lightning_mixup.policies import CutMix, MixParams, MixUp, MixUpOrCutMix
from tests.probes import RecordingModule, loader, tiny_trainer


class CountingKernel:
    """Stands in for the compiled module and counts how often `mix_pairs` runs."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def mix_pairs(self, *args):
        self.calls += 1
        return self.real.mix_pairs(*args)


@pytest.fixture
def counting(monkeypatch):
    kernel = CountingKernel(F._kernel)
    monkeypatch.setattr(F, "_kernel", kernel)
    return kernel


def torch_ops(monkeypatch, x, target, params):
    """The result of `apply_mix` with the kernel switched off."""
    with monkeypatch.context() as m:
        m.setattr(F, "_kernel", None)
        return P.apply_mix(x, target, params)


def data(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def soft_rows(n, k=5, seed=1):
    return torch.softmax(data((n, k), seed=seed), 1)


@pytest.mark.skipif(
    os.environ.get("LIGHTNING_MIXUP_KERNEL") == "0", reason="kernel switched off on purpose"
)
def test_kernel_is_built():
    # CI installs with a C compiler, so the fast path must exist there; a user without one still
    # gets a working package (optional extension), which the torch-ops tests below cover.
    assert F.HAS_KERNEL, (
        "lightning_mixup._kernel was not built: `pip install -e .` needs a C compiler"
    )


def test_environment_variable_switches_the_kernel_off():
    code = "from lightning_mixup import functional as F; print(F.HAS_KERNEL, F._kernel is None)"
    env = {**os.environ, "LIGHTNING_MIXUP_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


POLICIES = {
    "mixup-batch": lambda: MixUp(1.0),
    "mixup-elem": lambda: MixUp(1.0, "elem"),
    "cutmix-batch": lambda: CutMix(1.0),
    "cutmix-elem": lambda: CutMix(1.0, "elem"),
    "switch-batch": lambda: MixUpOrCutMix(MixUp(1.0), CutMix(1.0)),
    "switch-elem": lambda: MixUpOrCutMix(MixUp(1.0, "elem"), CutMix(1.0, "elem"), 0.5),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 3, 16), (9, 3, 7, 9), (6, 2, 5, 6, 7), (2, 1, 4, 4)])
@pytest.mark.parametrize("name", list(POLICIES))
def test_kernel_equals_torch_ops(monkeypatch, counting, name, shape, dtype):
    policy = POLICIES[name]()
    for seed in range(12):
        params = policy.sample(shape, np.random.default_rng(seed), p=0.8)
        x, target = data(shape, dtype, seed), soft_rows(shape[0], seed=seed).to(dtype)
        want_x, want_t = torch_ops(monkeypatch, x.clone(), target, params)
        calls, target_before = counting.calls, target.clone()
        got_x, got_t = P.apply_mix(x, target, params)
        assert got_x is x and got_x.dtype == dtype
        assert torch.equal(target, target_before)  # the targets passed in are not mixed in place
        assert counting.calls == calls + (0 if params.identity else 1)
        boxed = params.cut.view(-1, *[1] * (len(shape) - 1)) & torch.ones(shape, dtype=torch.bool)
        # Box pixels are copies, so they match bit for bit; blends agree to rounding.
        assert torch.equal(got_x[boxed], want_x[boxed])
        torch.testing.assert_close(got_x, want_x, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got_t, want_t, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got_t.sum(1), torch.ones(shape[0], dtype=dtype))


def box_params(partner, lam, cut, lo, hi):
    return MixParams(
        torch.tensor(partner),
        torch.tensor(lam, dtype=torch.float64),
        torch.tensor(cut),
        torch.tensor(lo),
        torch.tensor(hi),
        per_batch=False,
    )


def test_overlapping_boxes_take_the_partners_original_pixels():
    # Sample 0's box covers rows 0-2, columns 0-3; sample 1's box rows 1-3, columns 2-4: they
    # overlap in rows 1-2, columns 2-3, where the two samples swap.
    x = data((2, 2, 4, 5))
    original = x.clone()
    params = box_params([1, 0], [0.4, 0.4], [True, True], [[0, 0], [1, 2]], [[3, 4], [4, 5]])
    target = F.soft_targets(torch.tensor([0, 1]), 2)
    mixed, soft = P.apply_mix(x, target, params)
    want = original.clone()
    want[0, :, 0:3, 0:4] = original[1, :, 0:3, 0:4]
    want[1, :, 1:4, 2:5] = original[0, :, 1:4, 2:5]
    assert torch.equal(mixed, want)
    torch.testing.assert_close(soft, torch.tensor([[0.4, 0.6], [0.6, 0.4]]))


def test_blend_paired_with_box_in_elem_mode():
    # Sample 0 blends (keeps 0.75), sample 1 takes a box of sample 0 along a 1-D signal.
    x = data((2, 3, 10), dtype=torch.float64)
    original = x.clone()
    params = box_params([1, 0], [0.75, 0.7], [False, True], [[0], [2]], [[0], [5]])
    mixed, _ = P.apply_mix(x, F.soft_targets(torch.tensor([0, 1]), 2), params)
    torch.testing.assert_close(mixed[0], torch.lerp(original[0], original[1], 0.25))
    want = original[1].clone()
    want[:, 2:5] = original[0, :, 2:5]
    assert torch.equal(mixed[1], want)


def test_unpaired_and_unmixed_samples_stay_bit_for_bit():
    x = data((5, 3, 4, 4))
    original = x.clone()
    # 0<->3 keep everything (λ = 1), 1<->4 blend, 2 is the odd batch's self-paired sample.
    params = MixParams(
        torch.tensor([3, 4, 2, 0, 1]),
        torch.tensor([1.0, 0.3, 1.0, 1.0, 0.3], dtype=torch.float64),
        torch.zeros(5, dtype=torch.bool),
        per_batch=False,
    )
    mixed, _ = P.apply_mix(x, F.soft_targets(torch.arange(5), 5), params)
    for i in (0, 2, 3):
        assert torch.equal(mixed[i], original[i])
    assert not torch.equal(mixed[1], original[1])


def test_a_pairing_that_is_not_symmetric_falls_back_to_torch_ops(monkeypatch, counting):
    # A 3-cycle is a valid permutation for torch ops, but not pairs the kernel can mix.
    x = data((3, 4))
    params = MixParams(
        torch.tensor([1, 2, 0]),
        torch.full((3,), 0.6, dtype=torch.float64),
        torch.zeros(3, dtype=torch.bool),
        per_batch=False,
    )
    target = F.soft_targets(torch.tensor([0, 1, 2]), 3)
    want_x, want_t = torch_ops(monkeypatch, x.clone(), target, params)
    got_x, got_t = P.apply_mix(x, target, params)
    assert counting.calls == 1  # it was asked, declined and changed nothing
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_t, want_t)


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.to(torch.bfloat16),
        lambda x: x.to(memory_format=torch.channels_last),
        lambda x: x[:, :, :, ::2],
    ],
    ids=["bfloat16", "channels_last", "strided"],
)
def test_inputs_the_kernel_cannot_take_use_torch_ops(monkeypatch, counting, make):
    x = make(data((6, 3, 8, 8)))
    params = CutMix(1.0, "elem").sample(x.shape, np.random.default_rng(3))
    target = soft_rows(6)
    want_x, _ = torch_ops(monkeypatch, x.clone(), target, params)
    got_x, _ = P.apply_mix(x, target, params)
    assert counting.calls == 0
    assert torch.equal(got_x, want_x)


def test_empty_samples_are_left_to_torch_ops(monkeypatch, counting):
    x = torch.empty(4, 0, 3)
    params = MixUp(1.0).sample(x.shape, np.random.default_rng(0))
    target = soft_rows(4)
    want_x, want_t = torch_ops(monkeypatch, x.clone(), target, params)
    got_x, got_t = P.apply_mix(x, target, params)
    assert counting.calls == 0 and got_x.shape == (4, 0, 3)
    torch.testing.assert_close(got_t, want_t)


def test_kernel_errors_name_the_problem():
    x = data((4, 2, 3, 3))
    partner, lam = torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5, dtype=torch.float64)
    cut = torch.ones(4, dtype=torch.bool)
    lo, hi = torch.zeros((4, 2), dtype=torch.int64), torch.full((4, 2), 3)
    with pytest.raises(ValueError, match=r"contiguous float32/float64 CPU tensors; got inputs of"):
        F._kernel_mix_(x.half(), partner, lam)
    with pytest.raises(
        ValueError, match=r"`partner` must be .* shape \(4,\), got dtype torch.int64, shape \(3,\)"
    ):
        F._kernel_mix_(x, partner[:3], lam)
    with pytest.raises(
        ValueError, match=r"`lam` must be .* of dtype torch.float64 .* got dtype torch.float32"
    ):
        F._kernel_mix_(x, partner, lam.float())
    with pytest.raises(
        ValueError, match=r"`lo` must be .* shape \(4, 2\), got dtype torch.int64, shape \(4, 3\)"
    ):
        F._kernel_mix_(x, partner, lam, cut, torch.zeros((4, 3), dtype=torch.int64), hi)
    with pytest.raises(
        ValueError, match=r"`cut` must be a contiguous CPU tensor of dtype torch.bool"
    ):
        F._kernel_mix_(x, partner, lam, cut.to(torch.uint8), lo, hi)
    with pytest.raises(ValueError, match=r"1-3 spatial dimensions, got inputs of shape \(4, 18\)"):
        F._kernel_mix_(x.view(4, 18), partner, lam, cut, lo, hi)
    with pytest.raises(ValueError, match=r"`target` must have shape \(4, K\), got \(3, 2\)"):
        F._kernel_mix_(x, partner, lam, target=torch.zeros(3, 2))
    before = x.clone()
    bad_hi = hi.clone()
    bad_hi[2] = torch.tensor([3, 4])  # one column past the edge
    with pytest.raises(ValueError, match=r"CutMix box of sample 2 spans \[0, 4\) along padded"):
        F._kernel_mix_(x, partner, lam, cut, lo, bad_hi)
    assert torch.equal(x, before)  # checked before anything was written


def test_kernel_declines_out_of_range_partners_without_writing():
    x = data((4, 3))
    before = x.clone()
    lam = torch.full((4,), 0.5, dtype=torch.float64)
    assert F._kernel_mix_(x, torch.tensor([1, 0, 7, 2]), lam) is False
    assert F._kernel_mix_(x, torch.tensor([1, 0, -1, 2]), lam) is False
    assert torch.equal(x, before)


def test_batch_mode_box_draw_matches_the_array_version():
    for d, spatial in [(1, (50,)), (2, (32, 32)), (2, (7, 13)), (3, (4, 9, 5))]:
        for seed in range(300):
            lam = np.random.default_rng(seed).random()
            a, b = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
            lo, hi, kept = F._box(lam, spatial, a)
            want_lo, want_hi, want_kept = F._boxes(np.array([lam]), spatial, b)
            assert lo == want_lo[0].tolist() and hi == want_hi[0].tolist(), (d, seed)
            assert kept == want_kept[0]
            assert a.random() == b.random()  # the same number of draws


def fit_records(**kw):
    module = RecordingModule()
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, seed=4, **kw)
    tiny_trainer(max_epochs=2, callbacks=[cb]).fit(module, loader(16, 4))
    return module.train_records, cb


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_trainer_run_mixes_the_same_with_and_without_the_kernel(monkeypatch, counting, mode):
    fast, cb = fit_records(mode=mode)
    assert counting.calls > 0 and cb._buffer is None  # the kernel needs no scratch batch
    with monkeypatch.context() as m:
        m.setattr(F, "_kernel", None)
        slow, cb_slow = fit_records(mode=mode)
    assert cb_slow._buffer is not None
    assert len(fast) == len(slow) == 8
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a["y"], b["y"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mixup-batch", "cutmix-batch", "switch-batch"])
def test_batch_mode_fast_sampler_equals_the_reference(name):
    policy = POLICIES[name]()
    for shape in [(8, 3, 6, 5), (7, 2, 9), (1, 3, 4, 4), (2, 1, 3, 3, 3)]:
        for p, scale in [(1.0, 1.0), (0.5, 1.0), (1.0, 0.3), (0.0, 1.0)]:
            for seed in range(25):
                n = shape[0]
                got = policy._sample_batch(n, shape, np.random.default_rng(seed), p, scale)
                want = policy._sample_arrays(
                    n, shape, np.random.default_rng(seed), p, scale, per_batch=True
                )
                for field in ("partner", "lam", "cut", "lo", "hi"):
                    a, b = getattr(got, field), getattr(want, field)
                    assert (a is None) == (b is None), (field, shape, p, seed)
                    assert a is None or (a.dtype == b.dtype and torch.equal(a, b)), field
                assert (got.per_batch, got.identity) == (want.per_batch, want.identity)
