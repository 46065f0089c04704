"""The detection toolkit: digit-canvas datamodule with boxes, and the Faster R-CNN module."""

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_mixup import MixupCallback
from lightning_mixup._boxes import check_detection_batch, detection_shape, mix_detection
from lightning_mixup._seed import numpy_generator
from lightning_mixup.cli import main
from lightning_mixup.detection import (
    DigitsDetectionDataModule,
    FasterRCNNDetector,
    collate_detection,
)
from lightning_mixup.policies import make_policy
from lightning_mixup.segmentation.data import INK_THRESHOLD
from tests.test_segmentation import _raw

SIZES = dict(train_canvases=40, val_canvases=12, test_canvases=12, batch_size=8)
SMALL_MODEL = dict(min_size=96, max_size=96, representation_size=32, box_batch_size_per_image=16)
QUIET = dict(
    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
)


def _dm(**kwargs) -> DigitsDetectionDataModule:
    dm = DigitsDetectionDataModule(**{**SIZES, **kwargs})
    dm.setup()
    return dm


def _splits(dm):
    return {"train": dm.train_dataset, "val": dm.val_dataset, "test": dm.test_dataset}


def _paint(layout: torch.Tensor, size: int) -> tuple[torch.Tensor, list[list[float]]]:
    """Oracle: one canvas painted digit by digit with slices; its ink boxes from the painting."""
    images, _ = _raw()
    image = torch.zeros(size, size)
    for index, top, left in layout.tolist():
        if index >= 0:
            digit = images[index].repeat_interleave(2, 0).repeat_interleave(2, 1)
            image[top : top + 16, left : left + 16] = digit
    boxes = []
    for index, top, left in layout.tolist():
        if index >= 0:
            ink = image[top : top + 16, left : left + 16] >= INK_THRESHOLD
            rows, cols = ink.any(1).nonzero().flatten(), ink.any(0).nonzero().flatten()
            boxes.append([left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1])
    return image, [[float(v) for v in b] for b in boxes]


# ---------------------------------------------------------------------------- datamodule
def test_same_seed_gives_identical_canvases_and_another_seed_different_ones():
    a, b, c = _dm(seed=3), _dm(seed=3), _dm(seed=4)
    for split in ("train", "val", "test"):
        da, db, dc = _splits(a)[split], _splits(b)[split], _splits(c)[split]
        assert torch.equal(da.images, db.images) and not torch.equal(da.images, dc.images)
        assert torch.equal(a.layouts[split], b.layouts[split])
        assert all(
            torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
            for x, y in zip(da.labels, db.labels)
        )


def test_batches_are_float_images_and_a_list_of_target_dicts_that_own_their_memory():
    dm = _dm()
    images, targets = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32 and images.shape == (8, 1, 64, 64)
    assert isinstance(targets, list) and len(targets) == 8
    assert check_detection_batch(images, targets) == [(64, 64)] * 8  # valid boxes in the canvas
    for t in targets:
        assert set(t) == {"boxes", "labels"}
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert 1 <= len(t["boxes"]) <= 3
    train = dm.train_dataset.images
    assert train.mean().abs() < 1e-5 and (train.std() - 1).abs() < 1e-4  # normalised
    assert [len(b[1]) for b in dm.val_dataloader()] == [8, 4]  # no drop_last on evaluation
    # a fetched batch is a copy: writing into it leaves the stored split as it was
    first = next(iter(dm.val_dataloader()))
    stored = dm.val_dataset.labels[0]["boxes"].clone()
    first[1][0]["boxes"].zero_()
    assert torch.equal(dm.val_dataset.labels[0]["boxes"], stored)
    # the per-sample form collates to the same batch
    again = collate_detection([dm.val_dataset[i] for i in range(8)])
    fetched = next(iter(dm.val_dataloader()))
    assert torch.equal(again[0], fetched[0])
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(again[1], fetched[1]))


def test_boxes_and_images_match_an_independent_painting():
    dm = _dm(canvas_size=48)
    _, digit_labels = _raw()
    for split, data in _splits(dm).items():
        for i in range(len(data)):
            layout = dm.layouts[split][i]
            used = layout[layout[:, 0] >= 0]
            assert (used[:, 1:] >= 0).all() and (used[:, 1:] <= 48 - 16).all()  # fully inside
            image, boxes = _paint(layout, 48)
            assert torch.allclose(data.images[i, 0] * dm.std + dm.mean, image, atol=1e-5)
            assert data.labels[i]["boxes"].tolist() == boxes
            assert data.labels[i]["labels"].tolist() == (digit_labels[used[:, 0]] + 1).tolist()


def test_digit_squares_never_overlap():
    dm = _dm(canvas_size=48, train_canvases=300)
    for layout in dm.layouts.values():
        for rows in layout.tolist():
            squares = [(top, left) for d, top, left in rows if d >= 0]
            for a in range(len(squares)):
                for b in range(a + 1, len(squares)):
                    (ta, la), (tb, lb) = squares[a], squares[b]
                    assert abs(ta - tb) >= 16 or abs(la - lb) >= 16


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


def test_label_noise_relabels_whole_training_digits_only():
    clean, noisy = _dm(train_canvases=400), _dm(train_canvases=400, label_noise=0.2)
    assert len(noisy.noisy_indices) == round(0.2 * 1197) == 239 and len(clean.noisy_indices) == 0
    assert torch.equal(clean.train_dataset.images, noisy.train_dataset.images)
    assert torch.equal(clean.layouts["train"], noisy.layouts["train"])
    for split in ("val", "test"):
        for x, y in zip(_splits(clean)[split].labels, _splits(noisy)[split].labels):
            assert torch.equal(x["labels"], y["labels"])
    _, digit_labels = _raw()
    noisy_digits = set(noisy.train_indices[noisy.noisy_indices].tolist())
    given: dict[int, set] = {}
    changed = total = 0
    for layout, x, y in zip(
        noisy.layouts["train"], clean.train_dataset.labels, noisy.train_dataset.labels
    ):
        digits = layout[layout[:, 0] >= 0, 0].tolist()
        assert torch.equal(x["boxes"], y["boxes"])
        for digit, before, after in zip(digits, x["labels"].tolist(), y["labels"].tolist()):
            assert before == digit_labels[digit] + 1
            assert (before != after) == (digit in noisy_digits)
            if digit in noisy_digits:
                given.setdefault(digit, set()).add(after)
            changed, total = changed + (before != after), total + 1
    assert len(given) > 50
    for digit, classes in given.items():  # one wrong class wherever the digit appears
        (wrong,) = classes
        assert 1 <= wrong <= 10 and wrong != digit_labels[digit] + 1
    assert abs(changed / total - 0.2) < 0.05  # the boxes' noise rate follows the pool's


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(canvas_size=40), r"^`canvas_size` must be an integer >= 48, got 40\.$"),
        (dict(train_canvases=0), r"^`train_canvases` must be a positive integer, got 0\.$"),
        (dict(label_noise=1.0), r"^`label_noise` must be a number in \[0, 1\)"),
        (dict(batch_size=0), r"^`batch_size` must be an integer >= 1, got 0\.$"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDetectionDataModule(**kwargs)


# ---------------------------------------------------------------------------- the module
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(num_classes=1), ValueError, r"^`num_classes` must be an integer >= 2, got 1\.$"),
        (dict(in_channels=2), ValueError, r"^`in_channels` must be 1 or 3, got 2\.$"),
        (dict(min_size=0), ValueError, r"^`min_size` must be a positive integer, got 0\.$"),
        (dict(max_size=64), ValueError, r"^`max_size` must be an integer >= 256, got 64\.$"),
        (dict(min_box_weight=1.5), ValueError, r"^`min_box_weight` must be a number in \[0, 1\]"),
        (dict(optimizer=3), TypeError, r"^`optimizer` must be a callable"),
        (dict(lr_scheduler="cosine"), TypeError, r"^`lr_scheduler` must be None or a callable"),
    ],
)
def test_module_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FasterRCNNDetector(**kwargs)


def test_bad_batches_are_reported():
    model = FasterRCNNDetector(**SMALL_MODEL)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    with pytest.raises(TypeError, match=r"expects batches `\[images, targets\]`.*got dict"):
        model.training_step({"x": 1}, 0)
    with pytest.raises(ValueError, match=r"`in_channels` = 1 and expects images \(1, H, W\)"):
        model.training_step([torch.zeros(2, 3, 32, 32), targets], 0)
    with pytest.raises(ValueError, match=r"2 images, got 1 targets"):
        model.training_step([torch.zeros(2, 1, 32, 32), targets[:1]], 0)


@pytest.mark.parametrize("label", [0, -1, 11])
def test_box_labels_outside_one_to_num_classes_are_refused(label):
    # torchvision trains a box labelled 0 (or -1) silently as background; 11 fails deep inside.
    model = FasterRCNNDetector(**SMALL_MODEL)
    box = torch.tensor([[2.0, 2.0, 20.0, 20.0]])
    targets = [{"boxes": box, "labels": torch.tensor([k])} for k in (3, label)]
    match = rf'targets\[1\]\["labels"\] holds {label}.*`num_classes` = 11.*\[1, 10\].*0-based'
    for step in (model.training_step, model.validation_step):
        with pytest.raises(ValueError, match=match):
            step([torch.zeros(2, 1, 32, 32), targets], 0)


class _TargetSpy(pl.Callback):
    """Records what the torchvision model receives as targets in training."""

    def on_fit_start(self, trainer, pl_module):
        self.seen = []
        net = pl_module.model
        forward = net.forward

        def spy(images, targets=None):
            if targets is not None:
                self.seen.append(targets)
            return forward(images, targets)

        net.forward = spy


class _MixDetection(pl.Callback):
    """The thin call a callback makes: draw for the batch's shape, mix out of place, write back."""

    def __init__(self, alpha, cutmix_alpha):
        self.policy = make_policy(alpha, cutmix_alpha, mode="elem")
        self.mixed = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, targets = batch
        params = self.policy.sample(detection_shape(images), numpy_generator(0, batch_idx))
        batch[0], batch[1] = mix_detection(images, targets, params)
        self.mixed.append((params, batch[1]))


@pytest.mark.slow
def test_module_trains_in_a_real_trainer_and_logs_map():
    pl.seed_everything(0)
    dm = DigitsDetectionDataModule(train_canvases=8, val_canvases=4, test_canvases=4, batch_size=4)
    model = FasterRCNNDetector(**SMALL_MODEL)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(max_epochs=1, num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, datamodule=dm)
    metrics = dict(trainer.callback_metrics)
    trainer.test(model, datamodule=dm)
    metrics.update(trainer.callback_metrics)
    for name in ("train/loss", "train/loss_classifier", "train/loss_objectness", "val/map"):
        assert name in metrics and math.isfinite(float(metrics[name])), name
    for name in ("val/map", "val/map_50", "test/map", "test/map_50"):
        assert -1.0 <= float(metrics[name]) <= 1.0  # torchmetrics' -1: nothing to score
    assert "train/kept_boxes" not in metrics  # no weights, nothing selected
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert sum(changed) > len(changed) // 2


@pytest.mark.parametrize(("alpha", "cutmix_alpha"), [(1.0, 0.0), (0.0, 1.0)])
def test_trains_on_mixed_batches_and_selects_boxes_by_weight(alpha, cutmix_alpha):
    pl.seed_everything(0)
    dm = DigitsDetectionDataModule(train_canvases=8, val_canvases=4, test_canvases=4, batch_size=4)
    model = FasterRCNNDetector(**SMALL_MODEL, min_box_weight=0.5)
    spy, mix = _TargetSpy(), _MixDetection(alpha, cutmix_alpha)
    trainer = pl.Trainer(
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[mix, spy], **QUIET
    )
    trainer.fit(model, datamodule=dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert len(spy.seen) == len(mix.mixed) == 2
    kept = total = 0
    for (params, mixed), seen in zip(mix.mixed, spy.seen):
        assert not params.identity
        for target, got in zip(mixed, seen):
            keep = target["weights"] >= 0.5
            assert set(got) == {"boxes", "labels"}
            assert torch.equal(got["boxes"], target["boxes"][keep])
            assert torch.equal(got["labels"], target["labels"][keep])
            kept, total = kept + int(keep.sum()), total + len(keep)
    if alpha > 0:  # MixUp: each pair's lighter image loses its boxes
        assert 0 < kept < total
    else:  # CutMix: weights are 1, every surviving box trains
        assert kept == total
    logged = float(trainer.callback_metrics["train/kept_boxes"])
    assert logged == pytest.approx(kept / total, abs=0.2)  # logged as a mean over the 2 steps


def test_images_of_different_sizes_train_as_a_list():
    model = FasterRCNNDetector(**SMALL_MODEL)
    images = [torch.rand(1, 48, 64), torch.rand(1, 64, 48)]
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 20.0, 30.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    params = make_policy(1.0, 0.0).sample(detection_shape(images), np.random.default_rng(0))
    images, targets = mix_detection(images, targets, params)
    assert [tuple(x.shape) for x in images] == [(1, 64, 64)] * 2
    losses = model.model(model._images(images), model._train_targets(targets)[0])
    sum(losses.values()).backward()
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    model.eval()
    detections = model(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores"}


def test_setup_reports_a_datamodule_of_another_width():
    model = FasterRCNNDetector(num_classes=5, **SMALL_MODEL)
    trainer = pl.Trainer(max_epochs=1, **QUIET)
    with pytest.raises(
        ValueError, match=r"datamodule has `num_classes` = 11 but the module has `num_classes` = 5"
    ):
        trainer.fit(model, datamodule=DigitsDetectionDataModule(**SIZES))


# ---------------------------------------------------------------------------- the example config
@pytest.mark.slow
def test_detection_example_runs_with_fast_dev_run(tmp_path):
    config = Path(__file__).resolve().parents[1] / "examples" / "digits_detection.yaml"
    cli = main(
        [
            "fit",
            f"--config={config}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true",
            "--data.batch_size=4",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    assert isinstance(cli.model, FasterRCNNDetector)
    assert isinstance(cli.datamodule, DigitsDetectionDataModule)
    assert cli.trainer.global_step == 1  # one training step, one validation batch, then a test
    assert {"test/map", "test/map_50"} <= set(cli.trainer.callback_metrics)
    # The example's MixupCallback mixed that step.
    mixers = [cb for cb in cli.trainer.callbacks if isinstance(cb, MixupCallback)]
    assert len(mixers) == 1 and mixers[0].last_params is not None
