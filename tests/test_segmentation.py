"""The segmentation toolkit: digit-canvas datamodule, SoftLabelSegmenter and SmallFCN."""

import functools
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mixup.callback import MixupCallback
from lightning_mixup.cli import main
from lightning_mixup.segmentation import (
    DigitsSegmentationDataModule,
    SmallFCN,
    SoftLabelSegmenter,
)
from lightning_mixup.segmentation.data import INK_THRESHOLD

K = 11
BACKGROUND = 10
IGNORE = 255
DOUBLE_SMOOTHING = "Label smoothing is set twice"
SIZES = dict(train_canvases=24, val_canvases=12, test_canvases=12, batch_size=8)


@functools.cache
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    return torch.from_numpy(bunch.images).float() / 16, torch.from_numpy(bunch.target).long()


def _dm(**kwargs) -> DigitsSegmentationDataModule:
    dm = DigitsSegmentationDataModule(**{**SIZES, **kwargs})
    dm.setup()
    return dm


def _splits(dm: DigitsSegmentationDataModule) -> dict:
    return {"train": dm.train_dataset, "val": dm.val_dataset, "test": dm.test_dataset}


def _paint(layout: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: one canvas painted digit by digit with slices; returns [0, 1] image and ink owner."""
    images, _ = _raw()
    image = torch.zeros(size, size)
    owner = torch.full((size, size), -1, dtype=torch.long)
    for index, top, left in layout.tolist():
        if index < 0:
            continue
        digit = images[index].repeat_interleave(2, 0).repeat_interleave(2, 1)
        box = (slice(top, top + 16), slice(left, left + 16))
        image[box] = torch.maximum(image[box], digit)
        owner[box] = torch.where(digit >= INK_THRESHOLD, index, owner[box])
    return image, owner


def _near_ink(ink: torch.Tensor) -> torch.Tensor:
    """Pixels with an ink pixel among their 8 neighbours, by explicit shifts."""
    padded = F.pad(ink, (1, 1, 1, 1))
    h, w = ink.shape[-2:]
    out = torch.zeros_like(ink)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[..., dy : dy + h, dx : dx + w]
    return out


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def _module(ignore_index=None, width: int = 4, **kwargs) -> SoftLabelSegmenter:
    torch.manual_seed(0)
    return SoftLabelSegmenter(
        SmallFCN(num_classes=K, width=width), num_classes=K, ignore_index=ignore_index, **kwargs
    )


def _one_hot(mask: torch.Tensor, ignore_index=None) -> torch.Tensor:
    """Index mask (B, H, W) -> soft mask (B, K, H, W) with all-zero rows at ignored pixels."""
    ignored = mask == ignore_index if ignore_index is not None else torch.zeros_like(mask).bool()
    soft = F.one_hot(mask.masked_fill(ignored, 0), K).movedim(-1, 1).float()
    return soft.masked_fill(ignored.unsqueeze(1), 0.0)


def _manual_loss(logits, mask, labelled, eps=0.0) -> torch.Tensor:
    rows = (1 - eps) * F.one_hot(mask.clamp(0, K - 1), K).movedim(-1, 1).float() + eps / K
    per_pixel = -(rows * logits.log_softmax(dim=1)).sum(dim=1)
    return per_pixel[labelled].mean()


# ---------------------------------------------------------------------------- datamodule
def test_same_seed_gives_identical_tensors_and_another_seed_different_ones():
    a, b, c = _dm(seed=3), _dm(seed=3), _dm(seed=4)
    for split in ("train", "val", "test"):
        da, db, dc = _splits(a)[split], _splits(b)[split], _splits(c)[split]
        assert torch.equal(da.images, db.images) and torch.equal(da.labels, db.labels)
        assert torch.equal(a.layouts[split], b.layouts[split])
        assert not torch.equal(da.images, dc.images) and not torch.equal(da.labels, dc.labels)
    assert not torch.equal(a.train_indices, c.train_indices)


def test_batches_are_lists_of_float_images_and_int64_masks():
    dm = _dm(canvas_size=20)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32 and images.shape == (8, 1, 20, 20)
    assert masks.dtype == torch.int64 and masks.shape == (8, 20, 20)
    train = dm.train_dataset.images
    assert train.mean().abs() < 1e-5 and (train.std() - 1).abs() < 1e-4  # normalised
    val_batches = list(dm.val_dataloader())
    assert [len(b[1]) for b in val_batches] == [8, 4]  # no drop_last on evaluation loaders


def test_digit_pools_are_disjoint_and_each_split_uses_its_own_pool():
    dm = _dm()
    pools = {"train": dm.train_indices, "val": dm.val_indices, "test": dm.test_indices}
    assert [len(p) for p in pools.values()] == [1197, 300, 300]
    assert torch.cat(list(pools.values())).sort().values.equal(torch.arange(1797))
    for split, pool in pools.items():
        used = dm.layouts[split][..., 0]
        assert torch.isin(used[used >= 0], pool).all()
        counts = (used >= 0).sum(dim=1)
        assert counts.min() >= 1 and counts.max() <= 3
        assert ((used[:, 1:] >= 0) <= (used[:, :-1] >= 0)).all()  # used slots come first


def test_masks_and_images_match_an_independent_painting():
    dm = _dm(canvas_size=24)
    _, labels = _raw()
    for split, data in _splits(dm).items():
        for i in range(len(data)):
            layout = dm.layouts[split][i]
            used = layout[layout[:, 0] >= 0]
            assert (used[:, 1:] >= 0).all() and (used[:, 1:] <= 24 - 16).all()  # fully inside
            image, owner = _paint(layout, 24)
            assert torch.allclose(data.images[i, 0] * dm.std + dm.mean, image, atol=1e-5)
            mask = data.labels[i]
            # background exactly where no ink; ink pixels carry the class of the digit on top
            assert torch.equal(mask == BACKGROUND, image < INK_THRESHOLD)
            assert torch.equal(mask[owner >= 0], labels[owner[owner >= 0]])
        assert set(data.labels.unique().tolist()) <= set(range(K))


def test_label_noise_relabels_whole_training_digits_only():
    clean, noisy = _dm(train_canvases=300), _dm(train_canvases=300, label_noise=0.1)
    assert len(noisy.noisy_indices) == round(0.1 * 1197) == 120
    assert len(clean.noisy_indices) == 0
    _, labels = _raw()
    noisy_digits = set(noisy.train_indices[noisy.noisy_indices].tolist())
    for split in ("val", "test"):
        assert torch.equal(_splits(clean)[split].labels, _splits(noisy)[split].labels)
    assert torch.equal(clean.train_dataset.images, noisy.train_dataset.images)
    assert torch.equal(clean.layouts["train"], noisy.layouts["train"])
    given: dict[int, set] = {}
    for i in range(300):
        _, owner = _paint(noisy.layouts["train"][i], 32)
        mask, clean_mask = noisy.train_dataset.labels[i], clean.train_dataset.labels[i]
        changed = mask != clean_mask
        assert torch.equal(changed, torch.isin(owner, torch.tensor(sorted(noisy_digits))))
        for digit in owner[changed].unique().tolist():
            given.setdefault(digit, set()).update(mask[owner == digit].tolist())
    assert len(given) > 20  # enough noisy digits appeared to mean something
    for digit, classes in given.items():
        assert len(classes) == 1  # one wrong class, on all its ink, wherever it appears
        (wrong,) = classes
        assert 0 <= wrong < 10 and wrong != labels[digit]


def test_ignore_index_labels_the_ring_around_the_ink_in_every_split():
    plain, ringed = _dm(), _dm(ignore_index=IGNORE)
    assert ringed.ignore_index == IGNORE and plain.ignore_index is None
    for split in ("train", "val", "test"):
        a, b = _splits(plain)[split].labels, _splits(ringed)[split].labels
        ring = _near_ink(a != BACKGROUND) & (a == BACKGROUND)
        assert ring.any()
        assert torch.equal(b == IGNORE, ring)
        assert torch.equal(b[~ring], a[~ring])
        assert torch.equal(_splits(plain)[split].images, _splits(ringed)[split].images)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ignore_index=5), r"^`ignore_index` must be None or an integer outside \[0, 11\)"),
        (dict(ignore_index=True), r"^`ignore_index` must be .*got True\.$"),
        (dict(canvas_size=15), r"^`canvas_size` must be an integer >= 16, got 15\.$"),
        (dict(train_canvases=0), r"^`train_canvases` must be a positive integer, got 0\.$"),
        (dict(val_canvases=1.5), r"^`val_canvases` must be a positive integer, got 1\.5\.$"),
        (dict(label_noise=1.0), r"^`label_noise` must be a number in \[0, 1\)"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsSegmentationDataModule(**kwargs)


def test_datamodule_exposes_what_the_callback_reads():
    dm = DigitsSegmentationDataModule(ignore_index=-1)
    assert dm.num_classes == 11 and dm.background_class == 10 and dm.ignore_index == -1


# ---------------------------------------------------------------------------- the loss
def _logits_and_mask(shape=(2, 5, 6), seed=0, ignore_index=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], K, *shape[1:], generator=g) * 3
    mask = torch.randint(0, K, shape, generator=g)
    if ignore_index is not None:
        mask[torch.rand(shape, generator=g) < 0.3] = ignore_index
    return logits, mask


@pytest.mark.parametrize("ignore_index", [None, IGNORE, -1])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_index_mask_and_one_hot_soft_mask_give_the_same_loss(ignore_index, eps):
    model = _module(ignore_index=ignore_index)
    logits, mask = _logits_and_mask(ignore_index=ignore_index)
    soft = _one_hot(mask, ignore_index)
    labelled = mask != ignore_index if ignore_index is not None else torch.ones_like(mask).bool()
    index_loss = model.loss(logits, mask, label_smoothing=eps)
    soft_loss = model.loss(logits, soft, label_smoothing=eps)
    expected = _manual_loss(logits, mask, labelled, eps)
    assert index_loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert soft_loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_zero_soft_rows_are_unlabelled_even_without_ignore_index():
    # The rule: an all-zero soft row is unlabelled whatever `ignore_index` is, exactly like an
    # index pixel equal to `ignore_index`.
    logits, mask = _logits_and_mask(ignore_index=IGNORE)
    with_ignore = _module(ignore_index=IGNORE).loss(logits, mask)
    without = _module().loss(logits, _one_hot(mask, IGNORE))
    assert without.item() == pytest.approx(with_ignore.item(), abs=1e-6)


@pytest.mark.parametrize("form", ["index", "soft"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_unlabelled_pixels_contribute_nothing(form, eps):
    model = _module(ignore_index=IGNORE)
    logits, mask = _logits_and_mask(ignore_index=IGNORE)
    target = mask if form == "index" else _one_hot(mask, IGNORE)
    unlabelled = mask == IGNORE
    logits = logits.requires_grad_()
    loss = model.loss(logits, target, label_smoothing=eps)
    loss.backward()
    assert (logits.grad.movedim(1, -1)[unlabelled] == 0).all()
    assert (logits.grad.movedim(1, -1)[~unlabelled] != 0).any()
    changed = logits.detach().clone()
    changed.movedim(1, -1)[unlabelled] = torch.randn(int(unlabelled.sum()), K) * 100
    assert model.loss(changed, target, label_smoothing=eps).item() == pytest.approx(loss.item())
    per_pixel = model.loss(logits.detach(), target, label_smoothing=eps, reduction="none")
    assert per_pixel.shape == mask.shape and (per_pixel[unlabelled] == 0).all()
    assert per_pixel.sum() / (~unlabelled).sum() == pytest.approx(loss.item())
    # a batch without any labelled pixel gives 0, not NaN
    empty = torch.full_like(mask, IGNORE)
    nothing = empty if form == "index" else _one_hot(empty, IGNORE)
    assert model.loss(logits.detach(), nothing, label_smoothing=eps).item() == 0.0


@pytest.mark.parametrize("spatial", [(7,), (3, 4, 5)])
def test_one_and_three_spatial_dimensions(spatial):
    model = SoftLabelSegmenter(nn.Identity(), num_classes=K, ignore_index=IGNORE)
    logits, mask = _logits_and_mask(shape=(2, *spatial), ignore_index=IGNORE)
    expected = _manual_loss(logits, mask, mask != IGNORE).item()
    assert model.loss(logits, mask).item() == pytest.approx(expected, abs=1e-5)
    assert model.loss(logits, _one_hot(mask, IGNORE)).item() == pytest.approx(expected, abs=1e-5)
    probs = model.predict_step([logits, mask], 0)
    assert probs.shape == logits.shape and torch.allclose(probs.sum(1), torch.ones(2, *spatial))


def test_bfloat16_logits_are_scored_in_float32():
    model = _module()
    logits, mask = _logits_and_mask()
    low = logits.bfloat16()
    expected = F.cross_entropy(low.float(), mask)
    assert model.loss(low, mask).dtype == torch.float32
    assert model.loss(low, mask).item() == pytest.approx(expected.item(), abs=1e-6)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("logits_shape", "target", "error", "match"),
    [
        ((2, 5, 6, 6), torch.zeros(2, 6, 6).long(), ValueError,
         r"logits of shape \(2, 5, 6, 6\).*`num_classes` = 11 and expects \(batch, 11, \*spatial\)"),
        ((2, K), torch.zeros(2).long(), ValueError, r"logits of shape \(2, 11\)"),
        ((2, K, 6, 6), torch.zeros(2, 6, 5).long(), ValueError,
         r"index mask's spatial size \(6, 5\) differs from the logits' \(6, 6\) "
         r"\(logits of shape \(2, 11, 6, 6\)\)"),
        ((2, K, 6, 6), torch.zeros(3, 6, 6).long(), ValueError,
         r"index mask holds 3 samples but the logits 2"),
        ((2, K, 6, 6), torch.zeros(2, 1, 6, 6).long(), ValueError,
         r"index mask must have shape \(batch, \*spatial\) = \(2, 6, 6\), got \(2, 1, 6, 6\); "
         r"remove a channel dimension"),
        ((2, K, 6, 6), torch.zeros(2, 4, 6, 6), ValueError,
         r"soft mask must have `num_classes` = 11 channels, got shape \(2, 4, 6, 6\)"),
        ((2, K, 6, 6), torch.zeros(2, K, 6, 7), ValueError,
         r"soft mask's spatial size \(6, 7\) differs from the logits' \(6, 6\)"),
        ((2, K, 6, 6), torch.zeros(2, K, 1, 6, 6), ValueError,
         r"soft mask must have shape \(batch, num_classes, \*spatial\) = \(2, 11, 6, 6\), "
         r"got \(2, 11, 1, 6, 6\)"),
        ((2, K, 6, 6), torch.zeros(2, 6, 6), TypeError,
         r"floating point target of shape \(2, 6, 6\) fits neither form.*`mask.long\(\)`"),
        ((2, K, 6, 6), torch.zeros(2, 6, 6).bool(), TypeError,
         r"integer class-index mask \(2, 6, 6\) or a floating point soft mask \(2, 11, 6, 6\), "
         r"got dtype torch.bool and shape \(2, 6, 6\)"),
    ],
)  # fmt: skip
def test_bad_logits_and_targets_are_reported_with_their_shapes(logits_shape, target, error, match):
    model = _module()
    with pytest.raises(error, match=match):
        model.loss(torch.zeros(logits_shape), target)


def test_an_unknown_reduction_is_rejected():
    logits, mask = _logits_and_mask()
    with pytest.raises(
        ValueError, match=r"^`reduction` must be one of \('mean', 'none'\), got 'sum'"
    ):
        _module().loss(logits, mask, reduction="sum")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(ignore_index=3), ValueError,
         r"^`ignore_index` must be None or an integer outside \[0, 11\) \(the class indices\), "
         r"such as 255 or -100, got 3\.$"),
        (dict(ignore_index=False), ValueError, r"^`ignore_index` must be .*got False\.$"),
        (dict(ignore_index=255.0), ValueError, r"^`ignore_index` must be .*got 255\.0\.$"),
        (dict(num_classes=0), ValueError, r"^`num_classes` must be a positive integer, got 0\.$"),
        (dict(label_smoothing=1.5), ValueError,
         r"^`label_smoothing` must be a number in \[0, 1\], got 1\.5\.$"),
        (dict(backbone="fcn"), TypeError, r"^`backbone` must be a torch.nn.Module, got str\.$"),
        (dict(optimizer="sgd"), TypeError, r"^`optimizer` must be a callable.*got 'sgd'\.$"),
    ],
)  # fmt: skip
def test_module_rejects_bad_arguments(kwargs, error, match):
    args = {"backbone": nn.Identity(), "num_classes": K, **kwargs}
    with pytest.raises(error, match=match):
        SoftLabelSegmenter(**args)


def test_dict_batches_are_rejected_with_a_clear_error():
    with pytest.raises(TypeError, match=r"SoftLabelSegmenter expects batches `\[x, y\]`.*got dict"):
        _module().training_step({"x": torch.zeros(1)}, 0)


def test_setup_reports_a_backbone_or_datamodule_of_the_wrong_width():
    model = SoftLabelSegmenter(SmallFCN(num_classes=5, width=4), num_classes=K)
    with pytest.raises(ValueError, match=r"last layer outputs 5 channels but `num_classes` = 11"):
        _trainer().fit(model, datamodule=DigitsSegmentationDataModule(**SIZES))
    model = SoftLabelSegmenter(SmallFCN(num_classes=5, width=4), num_classes=5)
    with pytest.raises(
        ValueError, match=r"datamodule has `num_classes` = 11 but the module has `num_classes` = 5"
    ):
        _trainer().fit(model, datamodule=DigitsSegmentationDataModule(**SIZES))


# ---------------------------------------------------------------------------- Trainer runs
class _Probe(SoftLabelSegmenter):
    """Records each training step's logits, target and loss."""

    def on_fit_start(self) -> None:
        self.records = []

    def training_step(self, batch, batch_idx):
        logits = self(batch[0]).detach().float()
        target = batch[1].clone()
        loss = super().training_step(batch, batch_idx)
        self.records.append((logits, target, loss.detach()))
        return loss


def test_a_fit_logs_every_metric_and_they_equal_hand_computed_values():
    dm = DigitsSegmentationDataModule(**SIZES, ignore_index=IGNORE)
    model = _module(ignore_index=IGNORE, label_smoothing=0.3)  # must not reach val/nll
    trainer = _trainer()
    trainer.fit(model, datamodule=dm)
    metrics = dict(trainer.callback_metrics)
    assert {"train/loss", "val/miou", "val/pixel_acc", "val/nll"} <= metrics.keys()
    trainer.test(model, datamodule=dm)
    metrics.update(trainer.callback_metrics)
    assert all(math.isfinite(v.item()) for v in metrics.values())
    model.eval()
    images = torch.cat([b[0] for b in dm.test_dataloader()][:2])
    masks = torch.cat([b[1] for b in dm.test_dataloader()][:2])
    with torch.no_grad():
        logits = model(images)
    labelled = masks != IGNORE
    preds = logits.argmax(1)
    assert metrics["test/pixel_acc"].item() == pytest.approx(
        (preds == masks)[labelled].float().mean().item(), abs=1e-6
    )
    assert metrics["test/nll"].item() == pytest.approx(
        _manual_loss(logits, masks, labelled).item(), abs=1e-5
    )
    ious = []
    for c in range(K):
        p, t = (preds == c) & labelled, (masks == c) & labelled
        if (p | t).any():
            ious.append(((p & t).sum() / (p | t).sum()).item())
    assert metrics["test/miou"].item() == pytest.approx(sum(ious) / len(ious), abs=1e-6)


def test_validation_on_soft_masks_equals_validation_on_index_masks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g)
    mask = torch.randint(0, K, (6, 8, 8), generator=g)
    mask[torch.rand(6, 8, 8, generator=g) < 0.2] = IGNORE
    results = []
    for model, target in (
        (_module(ignore_index=IGNORE), mask),
        (_module(), _one_hot(mask, IGNORE)),  # zero rows, no ignore_index: excluded all the same
    ):
        trainer = _trainer()
        trainer.validate(model, DataLoader(TensorDataset(x, target), batch_size=4))
        results.append({k: v.item() for k, v in trainer.callback_metrics.items()})
    assert results[0].keys() == {"val/miou", "val/pixel_acc", "val/nll"}
    assert results[0] == pytest.approx(results[1], abs=1e-6)


def test_double_smoothing_warns_once_and_only_the_callback_smooths():
    dm = DigitsSegmentationDataModule(**SIZES, ignore_index=IGNORE)
    model = _Probe(SmallFCN(num_classes=K, width=4), num_classes=K, label_smoothing=0.2,
                   ignore_index=IGNORE)  # fmt: skip
    with pytest.warns(UserWarning, match=DOUBLE_SMOOTHING) as record:
        for _ in range(2):  # a second fit of the same module stays silent
            callback = MixupCallback(alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1, seed=0)
            _trainer(callbacks=[callback]).fit(model, datamodule=dm)
    assert sum(DOUBLE_SMOOTHING in str(w.message) for w in record) == 1
    message = next(str(w.message) for w in record if DOUBLE_SMOOTHING in str(w.message))
    assert "_Probe(label_smoothing=0.2) and MixupCallback(label_smoothing=0.1)" in message
    assert model.label_smoothing == 0.2 and model.train_label_smoothing == 0.0
    for logits, target, loss in model.records:
        # the callback smoothed the mask into soft rows (zero at ignored pixels), once
        assert target.is_floating_point() and target.shape[1] == K
        labelled = target.sum(1) > 0
        assert target.movedim(1, -1)[labelled].min() >= 0.1 / K - 1e-6
        per_pixel = -(target * logits.log_softmax(1)).sum(1)
        assert loss.item() == pytest.approx(per_pixel[labelled].mean().item(), abs=1e-5)


def test_module_smoothing_applies_without_a_callback():
    dm = DigitsSegmentationDataModule(**SIZES)
    model = _Probe(SmallFCN(num_classes=K, width=4), num_classes=K, label_smoothing=0.2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer().fit(model, datamodule=dm)
    assert not any(DOUBLE_SMOOTHING in str(w.message) for w in record)
    assert model.train_label_smoothing == 0.2
    for logits, mask, loss in model.records:
        labelled = torch.ones_like(mask).bool()
        assert loss.item() == pytest.approx(
            _manual_loss(logits, mask, labelled, 0.2).item(), abs=1e-5
        )
        assert loss.item() != pytest.approx(_manual_loss(logits, mask, labelled).item(), abs=1e-3)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_trains_on_masks_mixed_by_the_callback(alpha):
    # CutMix alone keeps index masks; with MixUp blending samples they arrive as soft masks whose
    # rows are zero at ignored pixels. Either way the loss is the mean over labelled pixels.
    dm = DigitsSegmentationDataModule(**SIZES, ignore_index=IGNORE)
    model = _Probe(SmallFCN(num_classes=K, width=4), num_classes=K, ignore_index=IGNORE)
    callback = MixupCallback(alpha=alpha, cutmix_alpha=1.0, mode="elem", seed=0)
    _trainer(callbacks=[callback]).fit(model, datamodule=dm)
    assert {t.is_floating_point() for _, t, _ in model.records} == {alpha > 0}
    for logits, target, loss in model.records:
        if alpha == 0:
            labelled = target != IGNORE
            expected = _manual_loss(logits, target, labelled)
        else:
            labelled = target.sum(1) > 0
            expected = -(target * logits.log_softmax(1)).sum(1)[labelled].mean()
        assert (~labelled).any()  # ignored pixels stay unlabelled through the mix
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert math.isfinite(loss.item())


def test_predict_step_returns_float32_probabilities():
    model = _module().eval()
    x = torch.randn(3, 1, 12, 20)
    for batch in (x, [x], [x, torch.zeros(3, 12, 20).long()]):
        probs = model.predict_step(batch, 0)
        assert probs.dtype == torch.float32 and probs.shape == (3, K, 12, 20)
        assert torch.allclose(probs.sum(1), torch.ones(3, 12, 20), atol=1e-6)


def test_hyperparameters_and_public_attributes():
    model = _module(ignore_index=IGNORE, label_smoothing=0.1)
    assert model.num_classes == K and model.ignore_index == IGNORE
    assert dict(model.hparams) == {"num_classes": K, "label_smoothing": 0.1, "ignore_index": IGNORE}


# ---------------------------------------------------------------------------- SmallFCN
@pytest.mark.parametrize("size", [(32, 32), (28, 20), (17, 9), (1, 1)])
def test_small_fcn_keeps_the_input_size(size):
    model = SmallFCN(num_classes=7, in_channels=3, width=4)
    assert model(torch.randn(2, 3, *size)).shape == (2, 7, *size)


def test_small_fcn_sees_a_whole_digit():
    # A pixel at one corner of a 16x16 digit must see the opposite corner, 15 pixels away.
    model = SmallFCN(num_classes=2, width=4).eval()
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    model(x)[0, :, 31, 31].sum().backward()
    assert x.grad[0, 0, 16, 16] != 0 and x.grad[0, 0, 31 - 15, 31] != 0


@pytest.mark.parametrize("arg", ["num_classes", "in_channels", "width"])
def test_small_fcn_rejects_bad_arguments(arg):
    with pytest.raises(ValueError, match=rf"^`{arg}` must be a positive integer, got 0\.$"):
        SmallFCN(**{arg: 0})


# ---------------------------------------------------------------------------- the example config
def test_segmentation_example_fits_with_cutmix_and_tests(tmp_path):
    config = Path(__file__).resolve().parents[1] / "examples" / "digits_segmentation.yaml"
    cli = main(
        [
            "fit",
            f"--config={config}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    assert isinstance(cli.model, SoftLabelSegmenter) and isinstance(cli.model.backbone, SmallFCN)
    assert isinstance(cli.datamodule, DigitsSegmentationDataModule)
    (mix,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, MixupCallback)]
    assert mix.alpha == 0 and mix.cutmix_alpha == 1
    # last in the YAML list (Lightning itself moves checkpoint callbacks to the end)
    assert cli.config["fit"]["trainer"]["callbacks"][-1]["class_path"].endswith("MixupCallback")
    assert cli.trainer.checkpoint_callback.monitor == "val/miou"
    assert {"test/miou", "test/pixel_acc", "test/nll"} <= set(cli.trainer.callback_metrics)
    assert list(Path(tmp_path).rglob("*.ckpt"))
