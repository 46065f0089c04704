"""Dense targets: CutMix and MixUp of per-pixel (per-frame, per-voxel) index and soft masks."""

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_mixup import CutMix, MixUp, MixupCallback, MixUpOrCutMix
from lightning_mixup import functional as F
from tests.probes import MaskData, MaskRecorder, Originals, tiny_trainer

K, IGNORE = 5, 255
SPATIAL = [(12,), (6, 7), (3, 4, 5)]


def reference(mask, params, k=K, ignore=None, smoothing=0.0):
    """Per-sample reference of a mixed mask: ``(index mask, soft mask)`` from the drawn params.

    Written sample by sample from the definitions, independently of the library's broadcasts:
    the partner's share is 1 inside a CutMix box and 0 outside, ``1 - λ`` for a blend; a mixed
    pixel with any share from an ignored pixel has an all-zero row.
    """
    b, spatial = mask.shape[0], mask.shape[1:]
    ignored = mask == ignore if ignore is not None else torch.zeros_like(mask, dtype=torch.bool)
    rows = torch.full((b, k, *spatial), smoothing / k)
    for i in range(b):
        for q in range(mask[i].numel()):
            pos = np.unravel_index(q, tuple(spatial))
            if not ignored[i][pos]:
                rows[(i, int(mask[i][pos]), *pos)] += 1.0 - smoothing
            else:
                rows[(i, slice(None), *pos)] = 0.0
    index, soft = mask.clone(), rows.clone()
    for i in range(b):
        j = int(params.partner[i])
        if params.cut[i]:
            share = torch.zeros(spatial)
            box = tuple(slice(int(a), int(z)) for a, z in zip(params.lo[i], params.hi[i]))
            share[box] = 1.0
        else:
            share = torch.full(spatial, 1.0 - float(params.lam[i]))
        index[i] = torch.where(share > 0.5, mask[j], mask[i])
        soft[i] = (1 - share) * rows[i] + share * rows[j]
        lost = (ignored[i] & (share < 1)) | (ignored[j] & (share > 0))
        soft[i][:, lost] = 0.0
    return index, soft


def batch_of(n, spatial, ignore=None, seed=0):
    data = MaskData(n, spatial, K, ignore)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = torch.stack([data[int(i)][0] for i in order])
    mask = torch.stack([data[int(i)][1] for i in order])
    return x, mask


def drawn(policy, shape, seed=0):
    """The first parameters from seeds ``seed, seed+1, …`` that change the batch."""
    for s in range(seed, seed + 50):
        params = policy.sample(shape, np.random.default_rng(s))
        if not params.identity:
            return params
    raise AssertionError("no mixing draw in 50 seeds")


# ----------------------------------------------------------------------------- target forms
@pytest.mark.parametrize(
    ("x_shape", "target", "form"),
    [
        ((4, 3, 8, 8), torch.zeros(4, dtype=torch.long), "labels"),
        ((4, 3, 8, 8), torch.zeros(4, 10), "soft"),
        ((4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long), "index_mask"),
        ((4, 3, 8, 8), torch.zeros(4, 10, 8, 8), "soft_mask"),
        ((4, 1, 16), torch.zeros(4, 16, dtype=torch.uint8), "index_mask"),
        ((4, 1, 16), torch.zeros(4, 16), "soft"),  # (B, K) rows, even with K equal to the length
        ((4, 1, 16), torch.zeros(4, 3, 16), "soft_mask"),
        ((4, 1, 2, 3, 5), torch.zeros(4, 2, 3, 5, dtype=torch.int32), "index_mask"),
        ((4, 32), torch.zeros(4, dtype=torch.long), "labels"),
    ],
)
def test_target_form_is_read_from_dtype_and_shape(x_shape, target, form):
    assert F.target_form(x_shape, target) == form


@pytest.mark.parametrize(
    ("x_shape", "target", "error", "match"),
    [
        ((4, 3, 8, 8), torch.zeros(4, 8, 7, dtype=torch.long), ValueError,
         r"index mask's spatial size \(8, 7\) differs from the inputs' \(8, 8\)"),
        ((4, 3, 8, 8), torch.zeros(4, 10, 8, 6), ValueError,
         r"soft mask's spatial size \(8, 6\) differs from the inputs' \(8, 8\)"),
        ((4, 3, 8, 8), torch.zeros(4, 8, 8), TypeError,
         r"mask of shape \(4, 8, 8\) must hold integer class indices, got dtype torch.float32"),
        ((4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.bool), TypeError,
         "dtype torch.bool fit no target form"),
        ((4, 32), torch.zeros(4, 32, dtype=torch.long), ValueError,
         r"Integer targets of shape \(4, 32\) fit neither class indices"),
        ((4, 3, 8, 8), torch.zeros(4, 2, 8, 8, dtype=torch.long), ValueError,
         r"Integer targets of shape \(4, 2, 8, 8\) fit neither"),
        ((4, 3, 8, 8), torch.zeros(4, 1, 2, 8, 8), ValueError,
         r"Floating point targets of shape \(4, 1, 2, 8, 8\) fit neither"),
    ],
)  # fmt: skip
def test_target_form_errors_name_the_shapes(x_shape, target, error, match):
    with pytest.raises(error, match=match):
        F.target_form(x_shape, target)


def test_soft_targets_of_an_index_mask_put_classes_second_and_zero_ignored_pixels():
    mask = torch.tensor([[[0, 2], [IGNORE, 1]]])
    out = F.soft_targets(mask, 3, label_smoothing=0.3, ignore_index=IGNORE)
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([0.1, 0.1, 0.8]))
    assert torch.equal(out[0, :, 1, 0], torch.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"\[0, 3\), got values \[255\]; .*; if they mark unlabelled pixels, set `ignore_index`",
    ):
        F.soft_targets(mask, 3)
    with pytest.raises(ValueError, match=r"`ignore_index` = 255 excepted\), got values \[7\]"):
        F.check_indices(torch.tensor([[7, IGNORE]]), 3, IGNORE)


# ----------------------------------------------------------------------------- CutMix on masks
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pastes_the_partners_mask_exactly_where_its_pixels_go(spatial, mode):
    x, mask = batch_of(6, spatial, ignore=IGNORE)
    policy = CutMix(1.0, mode)
    for seed in range(0, 30, 10):
        params = drawn(policy, x.shape, seed)
        mixed_x, mixed = policy.apply(x.clone(), mask, params)
        assert mixed.dtype == mask.dtype and mixed.shape == mask.shape  # still an index mask
        # Every pixel's image value names the sample it came from; the mask must agree.
        source = mixed_x[:, 0].long()
        order = x[:, 0].flatten(1)[:, 0].long()  # sample id at each batch position
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        expected = torch.gather(mask.flatten(1), 0, position[source.flatten(1)]).view_as(mask)
        assert torch.equal(mixed, expected)
        assert torch.equal(mixed, reference(mask, params, ignore=IGNORE)[0])
        assert (source != order.view(-1, *([1] * len(spatial)))).any()  # something was pasted
        assert (mixed == IGNORE).any() and torch.equal(mask, batch_of(6, spatial, IGNORE)[1])


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_moves_soft_masks_with_the_image_box(spatial, mode):
    x, mask = batch_of(5, spatial)
    soft = F.soft_targets(mask, K)
    policy = CutMix(1.0, mode)
    params = drawn(policy, x.shape, 3)
    _, mixed = policy.apply(x.clone(), soft, params)
    torch.testing.assert_close(mixed, reference(mask, params)[1])


# ----------------------------------------------------------------------------- MixUp on masks
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_soft_masks_use_the_images_lambda_and_sum_to_one(spatial, mode):
    x, mask = batch_of(7, spatial)
    policy = MixUp(1.0, mode)
    params = drawn(policy, x.shape, 1)
    mixed_x, mixed = policy.apply(x.clone(), F.soft_targets(mask, K), params)
    torch.testing.assert_close(mixed, reference(mask, params)[1])
    torch.testing.assert_close(mixed.sum(1), torch.ones_like(mask, dtype=torch.float32))
    lam = params.lam.float().view(-1, *([1] * (len(spatial) + 1)))
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[params.partner])


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_an_ignored_pixel_never_becomes_a_class(mode):
    x, mask = batch_of(8, (5, 6), ignore=IGNORE)
    policy = MixUpOrCutMix(MixUp(1.0, mode), CutMix(1.0, mode), switch_prob=0.5)
    for seed in range(6):
        params = drawn(policy, x.shape, 10 * seed)
        unlabelled = mask == IGNORE
        soft = F.soft_targets(mask, K, ignore_index=IGNORE)
        _, mixed = policy.apply(x.clone(), soft, params, unlabelled=unlabelled)
        torch.testing.assert_close(mixed, reference(mask, params, ignore=IGNORE)[1])
        sums = mixed.sum(1)
        assert torch.all((sums.sub(1).abs() < 1e-6) | (sums == 0))  # a class mix or no label
        pasted = reference(mask, params, ignore=IGNORE)[0]  # the source's index, cut samples
        for b in range(len(mask)):
            if params.cut[b]:  # each pixel is one source's: unlabelled where that one was
                assert torch.equal(sums[b] == 0, pasted[b] == IGNORE)
            elif params.lam[b] < 1:  # blended: unlabelled where either source was
                assert torch.equal(sums[b] == 0, unlabelled[b] | unlabelled[params.partner[b]])


def test_disabled_masks_come_back_bit_for_bit():
    x, mask = batch_of(6, (4, 4), ignore=IGNORE)
    policy = CutMix(1.0, "elem")
    params = drawn(policy, x.shape)
    off, on = torch.tensor(False), torch.tensor(True)
    _, same = policy.apply(x.clone(), mask, params, enabled=off)
    assert torch.equal(same, mask)
    _, mixed = policy.apply(x.clone(), mask, params, enabled=on)
    assert torch.equal(mixed, policy.apply(x.clone(), mask, params)[1])


# ----------------------------------------------------------------------------- the callback
def fit_masks(cb, n=16, spatial=(6, 6), ignore=None, module_ignore=None, epochs=1, **kw):
    module = MaskRecorder(K, ignore_index=module_ignore)
    loader = DataLoader(MaskData(n, spatial, K, ignore), batch_size=4, shuffle=True)
    tiny_trainer(callbacks=[Originals(), cb], max_epochs=epochs, **kw).fit(module, loader)
    return module


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_callback_cutmix_keeps_index_masks_and_copies_ignored_pixels(spatial, mode):
    cb = MixupCallback(alpha=0.0, cutmix_alpha=1.0, mode=mode, ignore_index=IGNORE, seed=1)
    module = fit_masks(cb, spatial=spatial, ignore=IGNORE, module_ignore=IGNORE)
    mixed_batches = 0
    for record, (_, mask) in zip(module.records, module.originals):
        assert record["y"].dtype == torch.int64 and record["y"].shape == mask.shape
        if record["params"] is None:
            assert torch.equal(record["y"], mask)
            continue
        mixed_batches += 1
        assert torch.equal(record["y"], reference(mask, record["params"], ignore=IGNORE)[0])
        # The mask follows the image: each pixel's class is its source sample's class there,
        # the source being named by the pixel's image value (MaskData: sample s is all s).
        source = record["x"][:, 0].long()
        flat = torch.arange(mask[0].numel()).view(mask.shape[1:])
        want = torch.where((source + 2 * flat) % 7 == 0, IGNORE, (source + flat) % K)
        assert torch.equal(record["y"], want)
    assert mixed_batches == len(module.records) == 4


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_callback_mixup_makes_soft_masks_with_ignored_pixels_unlabelled(mode):
    cb = MixupCallback(alpha=1.0, mode=mode, seed=2)  # ignore_index read from the module
    module = fit_masks(cb, ignore=IGNORE, module_ignore=IGNORE)
    for record, (_, mask) in zip(module.records, module.originals):
        y, params = record["y"], record["params"]
        assert y.dtype == torch.float32 and y.shape == (4, K, 6, 6)
        torch.testing.assert_close(y, reference(mask, params, ignore=IGNORE)[1])
        assert torch.all(y.sum(1)[mask == IGNORE] == 0)


def test_callback_switch_in_elem_mode_mixes_cut_and_blended_samples_in_one_soft_mask():
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=0, label_smoothing=0.1)
    module = fit_masks(cb, n=32, ignore=IGNORE, module_ignore=IGNORE)
    kinds = set()
    for record, (_, mask) in zip(module.records, module.originals):
        params = record["params"]
        kinds |= {bool(c) for c in params.cut}
        want = reference(mask, params, ignore=IGNORE, smoothing=0.1)[1]
        torch.testing.assert_close(record["y"], want)
    assert kinds == {True, False}


def test_label_smoothing_reaches_unmixed_index_masks_once():
    cb = MixupCallback(alpha=1.0, p=0.0, label_smoothing=0.2, ignore_index=IGNORE)
    module = fit_masks(cb, ignore=IGNORE, module_ignore=IGNORE)
    for record, (_, mask) in zip(module.records, module.originals):
        assert record["params"] is None
        want = F.soft_targets(mask, K, label_smoothing=0.2, ignore_index=IGNORE)
        assert torch.equal(record["y"], want)
        assert sorted(record["y"].unique().tolist()) == pytest.approx([0.0, 0.04, 0.84])


def test_unmixed_index_masks_pass_through_untouched():
    module = fit_masks(MixupCallback(alpha=1.0, cutmix_alpha=1.0, stop_epoch=1), epochs=2)
    unmixed = [(r, o) for r, o in zip(module.records, module.originals) if r["epoch"] == 1]
    assert len(unmixed) == 4
    for record, (_, mask) in unmixed:
        assert record["params"] is None and torch.equal(record["y"], mask)


@pytest.mark.parametrize(
    ("batch", "cb_kw", "error", "match"),
    [
        ([torch.zeros(4, 2, 6, 6), torch.zeros(4, 6, 5, dtype=torch.long)], {}, ValueError,
         r"spatial size \(6, 5\) differs from the inputs' \(6, 6\)"),
        ([torch.zeros(4, 2, 6, 6), torch.full((4, 6, 6), IGNORE)], {}, ValueError,
         r"\[0, 5\), got values \[255\];.*if they mark unlabelled pixels, set `ignore_index`"),
        ([torch.zeros(4, 2, 6, 6), torch.full((4, 6, 6), 9)], {"ignore_index": IGNORE},
         ValueError, r"\(`ignore_index` = 255 excepted\), got values \[9\]"),
        ([torch.zeros(4, 2, 6, 6), torch.zeros(4, 3, 6, 6)], {}, ValueError,
         r"`num_classes` = 5 columns, got shape \(4, 3, 6, 6\)"),
        ([torch.zeros(4, 2, 6, 6), torch.zeros(4, 6, 6)], {}, TypeError,
         "must hold integer class indices, got dtype torch.float32"),
        ([torch.zeros(4, 2, 6, 6), torch.zeros(4, 6, 6, dtype=torch.bool)], {}, TypeError,
         "dtype torch.bool fit no target form"),
    ],
)  # fmt: skip
def test_bad_masks_fail_before_the_first_step(batch, cb_kw, error, match):
    module = MaskRecorder(K)
    loader = DataLoader([0], batch_size=1, collate_fn=lambda _: [t.clone() for t in batch])
    with pytest.raises(error, match=match):
        tiny_trainer(callbacks=[MixupCallback(**cb_kw)]).fit(module, loader)
    assert module.records == []


def test_index_masks_with_ignored_pixels_are_accepted_when_ignore_index_is_set():
    module = fit_masks(
        MixupCallback(alpha=1.0, ignore_index=IGNORE), ignore=IGNORE, module_ignore=IGNORE
    )
    assert len(module.records) == 4


def test_ignore_index_argument_is_checked():
    with pytest.raises(ValueError, match="`ignore_index` must be an integer or None, got 2.5"):
        MixupCallback(ignore_index=2.5)


def test_resume_repeats_the_mixed_masks(tmp_path):
    def cb():
        return MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", ignore_index=IGNORE)

    full = fit_masks(cb(), ignore=IGNORE, module_ignore=IGNORE, epochs=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module = MaskRecorder(K, ignore_index=IGNORE)
    loader = DataLoader(MaskData(16, (6, 6), K, IGNORE), batch_size=4, shuffle=True)
    tiny_trainer(callbacks=[Originals(), cb(), ckpt], max_epochs=1, enable_checkpointing=True).fit(
        module, loader
    )
    resumed = MaskRecorder(K, ignore_index=IGNORE)
    tiny_trainer(callbacks=[Originals(), cb()], max_epochs=3).fit(
        resumed, loader, ckpt_path=tmp_path / "last.ckpt"
    )
    records = module.records + resumed.records
    assert [(r["epoch"], r["batch_idx"]) for r in records] == [
        (r["epoch"], r["batch_idx"]) for r in full.records
    ]
    for a, b in zip(records, full.records):
        assert torch.equal(a["params"].partner, b["params"].partner)
        assert torch.equal(a["params"].lam, b["params"].lam)


def ddp_masks(out_dir, epochs, ckpt_path=None, checkpoint=None):
    """Fit a MaskRecorder on two spawned CPU processes; return each rank's records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", ignore_index=IGNORE, seed=4)
    module = MaskRecorder(K, ignore_index=IGNORE, out_dir=str(out_dir))
    loader = DataLoader(MaskData(32, (6, 6), K, IGNORE), batch_size=4)
    trainer = tiny_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=epochs,
        callbacks=[Originals(), cb, *([checkpoint] if checkpoint else [])],
        enable_checkpointing=checkpoint is not None,
        default_root_dir=out_dir,
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.slow
def test_ddp_ranks_mix_their_masks_with_their_own_draws_and_resume_exactly(tmp_path):
    full = ddp_masks(tmp_path / "full", epochs=2)
    for rank in full:
        assert len(rank["records"]) == 8  # 32 samples, 2 ranks, batch 4, 2 epochs
        for record, (_, mask) in zip(rank["records"], rank["originals"]):
            want = reference(mask, record["params"], ignore=IGNORE)
            assert torch.equal(record["y"], want[0]) or torch.allclose(record["y"], want[1])
    pairs = zip(full[0]["records"], full[1]["records"])
    assert all(not torch.equal(a["params"].lam, b["params"].lam) for a, b in pairs)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ddp_masks(tmp_path / "first", epochs=1, checkpoint=ckpt)
    second = ddp_masks(tmp_path / "second", epochs=2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for rank in (0, 1):
        resumed = first[rank]["records"] + second[rank]["records"]
        assert len(resumed) == len(full[rank]["records"])
        for a, b in zip(resumed, full[rank]["records"]):
            assert torch.equal(a["params"].partner, b["params"].partner)
            assert torch.equal(a["params"].lam, b["params"].lam)
            assert torch.equal(a["y"], b["y"])  # unshuffled data: the same masks, mixed the same
