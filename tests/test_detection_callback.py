"""``MixupCallback`` on detection batches: images with their boxes, labels and per-box weights."""

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib.image
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_mixup import MixedGridLogger, MixupCallback
from lightning_mixup._boxes import mix_detection
from lightning_mixup.detection import DigitsDetectionDataModule, FasterRCNNDetector
from lightning_mixup.policies import MixParams
from tests.probes import tiny_trainer


class BoxScenes(Dataset):
    """Sample ``i``: a 1×16×16 image of value ``i`` with ``1 + i % 3`` boxes of label ``i + 1``."""

    def __init__(self, n: int = 16, as_dict: bool = False) -> None:
        self.n, self.as_dict = n, as_dict

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        boxes = torch.tensor([[1.0 + 4 * k, 2.0, 4.0 + 4 * k, 9.0] for k in range(1 + i % 3)])
        target = {
            "boxes": boxes,
            "labels": torch.full((len(boxes),), i + 1, dtype=torch.int64),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
        }
        image = torch.full((1, 16, 16), float(i))
        return {"image": image, "target": target} if self.as_dict else (image, target)


def collate(samples: list) -> Any:
    if isinstance(samples[0], dict):
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "target": [s["target"] for s in samples],
        }
    return [torch.stack([s[0] for s in samples]), [s[1] for s in samples]]


def box_loader(n: int = 16, batch_size: int = 4, as_dict: bool = False, shuffle: bool = False):
    return DataLoader(BoxScenes(n, as_dict), batch_size=batch_size, collate_fn=collate,
                      shuffle=shuffle)  # fmt: skip


class BoxRecorder(pl.LightningModule):
    """Records each training batch (images, targets) and the callback's parameters."""

    def __init__(self, out_dir: str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.records: list[dict[str, Any]] = []
        self.out_dir = out_dir

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets = (batch["image"], batch["target"]) if isinstance(batch, dict) else batch
        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        self.records.append(
            {
                "epoch": self.current_epoch,
                "batch_idx": batch_idx,
                "images": images.clone(),
                "targets": [{k: v.clone() for k, v in t.items()} for t in targets],
                "params": cb.last_params,
            }
        )
        return (self.weight * images.mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        if self.out_dir is not None:
            torch.save(self.records, Path(self.out_dir) / f"rank{self.global_rank}.pt")


def originals(batch_idx: int, batch_size: int = 4, n: int = 16) -> tuple[torch.Tensor, list]:
    """The unshuffled loader's batch ``batch_idx`` as the dataset made it."""
    samples = [BoxScenes(n)[i] for i in range(batch_idx * batch_size, (batch_idx + 1) * batch_size)]
    return collate(samples)


@pytest.mark.parametrize(
    "settings",
    [{"alpha": 1.0}, {"alpha": 0.0, "cutmix_alpha": 1.0},
     {"alpha": 1.0, "cutmix_alpha": 1.0, "mode": "elem"}],
)  # fmt: skip
def test_every_mixed_batch_is_decoded_from_last_params_alone(settings):
    module = BoxRecorder()
    tiny_trainer(max_epochs=2, callbacks=[MixupCallback(seed=1, **settings)]).fit(
        module, box_loader()
    )
    assert len(module.records) == 8
    for record in module.records:
        images, targets = originals(record["batch_idx"])
        params = record["params"]
        assert params is not None
        want_images, want_targets = mix_detection(images, targets, params)
        torch.testing.assert_close(record["images"], want_images)
        for got, want in zip(record["targets"], want_targets):
            assert set(got) == {"boxes", "labels", "iscrowd", "weights"}
            for key in want:
                assert torch.equal(got[key], want[key]), key
            assert got["weights"].dtype == torch.float32 and got["labels"].dtype == torch.int64
            inside = (got["boxes"][:, :2] >= 0).all() and (got["boxes"][:, 2:] <= 16).all()
            assert inside and (got["boxes"][:, 2:] > got["boxes"][:, :2]).all()


def test_mixup_joins_both_images_boxes_with_their_shares():
    module = BoxRecorder()
    tiny_trainer(callbacks=[MixupCallback(alpha=1.0, mode="elem", seed=0)]).fit(
        module, box_loader(8)
    )
    record = module.records[0]
    _, targets = originals(0)
    params = record["params"]
    for i, got in enumerate(record["targets"]):
        j, lam = int(params.partner[i]), float(params.lam[i])
        value = float(record["images"][i, 0, 0, 0])
        assert value == pytest.approx(lam * i + (1 - lam) * j, abs=1e-5)  # the image names both
        if j == i:
            assert torch.equal(got["labels"], targets[i]["labels"])
            continue
        n = len(targets[i]["labels"])
        assert torch.equal(got["labels"], torch.cat([targets[i]["labels"], targets[j]["labels"]]))
        torch.testing.assert_close(got["weights"][:n], torch.full((n,), lam, dtype=torch.float32))
        torch.testing.assert_close(got["weights"][n:], torch.full_like(got["weights"][n:], 1 - lam))


def test_an_unmixed_batch_gets_weights_of_one_and_keeps_its_boxes():
    module = BoxRecorder()
    cb = MixupCallback(alpha=1.0, ramp_start_epoch=1)
    tiny_trainer(max_epochs=2, callbacks=[cb]).fit(module, box_loader(8))
    first = module.records[0]
    assert first["params"] is None
    _, targets = originals(0)
    for got, want in zip(first["targets"], targets):
        assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(
            got["weights"], torch.ones(len(want["boxes"]))
        )
    assert module.records[-1]["params"] is not None


def test_keep_clean_puts_the_clean_targets_first_then_the_mixed_ones():
    module = BoxRecorder()
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, keep_clean=True, mode="elem", seed=3)
    tiny_trainer(callbacks=[cb]).fit(module, box_loader(8))
    record = module.records[0]
    images, targets = originals(0)
    assert record["images"].shape[0] == 8 and len(record["targets"]) == 8
    torch.testing.assert_close(record["images"][:4], images)
    _, mixed = mix_detection(images, targets, record["params"])
    for got, want in zip(record["targets"][:4], targets):
        assert torch.equal(got["boxes"], want["boxes"]) and bool((got["weights"] == 1).all())
    for got, want in zip(record["targets"][4:], mixed):
        assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(
            got["weights"], want["weights"]
        )


def test_dict_batches_find_their_keys_by_name_or_as_named():
    module = BoxRecorder()
    cb = MixupCallback(alpha=1.0, target_key="target")  # "target": one of the usual names too
    tiny_trainer(callbacks=[cb]).fit(module, box_loader(8, as_dict=True))
    assert module.records[0]["params"] is not None
    assert "weights" in module.records[0]["targets"][0]


def test_a_non_finite_image_leaves_its_batch_unmixed_with_one_warning():
    class WithNaN(BoxScenes):
        def __getitem__(self, i):
            image, target = super().__getitem__(i)
            if i == 1:
                image[0, 0, 0] = float("nan")
            return image, target

    module = BoxRecorder()
    data = DataLoader(WithNaN(8), batch_size=4, collate_fn=collate)
    with pytest.warns(UserWarning, match="contain NaN or Inf"):
        tiny_trainer(callbacks=[MixupCallback(alpha=1.0)]).fit(module, data)
    first, second = module.records
    assert first["params"] is None and second["params"] is not None
    assert torch.isnan(first["images"][1, 0, 0, 0]) and not torch.isnan(first["images"][0]).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": "loss"}, r"targets='loss' mixes a criterion over class targets; detection"),
        ({"mix_at": "weight_layer"}, r"detection boxes follow the images' pixels"),
    ],
)
def test_what_cannot_apply_to_boxes_is_refused_on_the_first_batch(kwargs, match):
    class WithLayer(BoxRecorder):
        def __init__(self):
            super().__init__()
            self.weight_layer = nn.Identity()
            self.criterion = nn.CrossEntropyLoss()

    with pytest.raises(ValueError, match=match):
        tiny_trainer(callbacks=[MixupCallback(**kwargs)]).fit(WithLayer(), box_loader(8))


def test_an_invalid_box_is_named():
    class Bad(BoxScenes):
        def __getitem__(self, i):
            image, target = super().__getitem__(i)
            target["boxes"][0, 2] = 40.0  # beyond the 16-pixel image
            return image, target

    with pytest.raises(ValueError, match=r'targets\[0\]\["boxes"\]\[0\] = .* is not a valid box'):
        tiny_trainer(callbacks=[MixupCallback()]).fit(
            BoxRecorder(), DataLoader(Bad(8), batch_size=4, collate_fn=collate)
        )


def test_resume_draws_and_mixes_exactly_what_the_uninterrupted_run_did(tmp_path):
    def run(epochs, ckpt=None, callbacks=()):
        module = BoxRecorder()
        cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=9)
        trainer = tiny_trainer(max_epochs=epochs, callbacks=[cb, *callbacks],
                               enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(module, box_loader(12), ckpt_path=ckpt)
        return module.records

    full = run(3)
    run(1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    resumed = run(3, ckpt=tmp_path / "last.ckpt")
    for a, b in zip(resumed, full[3:]):
        assert torch.equal(a["images"], b["images"])
        for ta, tb in zip(a["targets"], b["targets"]):
            assert all(torch.equal(ta[k], tb[k]) for k in tb)


@pytest.mark.slow
def test_under_ddp_each_rank_mixes_its_own_boxes_with_its_own_draws(tmp_path):
    module = BoxRecorder(out_dir=str(tmp_path))
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem")
    trainer = tiny_trainer(devices=2, strategy="ddp_spawn", callbacks=[cb])
    trainer.fit(module, box_loader(16))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]
    assert not torch.equal(ranks[0][0]["params"].lam, ranks[1][0]["params"].lam)
    for records in ranks:
        for record in records:
            images = record["images"]
            # The unmixed inputs are not known per rank (the sampler splits them); the targets
            # must still be a valid mix of whole samples: labels of at most two samples each.
            for target in record["targets"]:
                assert len(target["labels"].unique()) <= 2
                assert target["weights"].dtype == torch.float32
            assert images.shape == (4, 1, 16, 16)


def test_the_grid_logger_draws_the_boxes(tmp_path):
    module = BoxRecorder()
    callbacks = [MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem"), MixedGridLogger()]
    tiny_trainer(callbacks=callbacks, default_root_dir=tmp_path).fit(module, box_loader(8))
    saved = list(tmp_path.rglob("mixed_grid_epoch0.png"))
    assert len(saved) == 1
    image = matplotlib.image.imread(saved[0])
    red = (image[..., 0] > 0.6) & (image[..., 1] < 0.4) & (image[..., 2] < 0.4)
    assert red.sum() > 50  # the box outlines (tab:red) are on the grid


def test_unmixed_params_are_the_identity():
    params = MixParams.unmixed(3)
    assert params.identity and torch.equal(params.partner, torch.arange(3))
    assert torch.equal(params.lam, torch.ones(3, dtype=torch.float64))


# ---------------------------------------------------------------------------- a real detector
SMALL_MODEL = dict(min_size=96, max_size=96, representation_size=32, box_batch_size_per_image=16)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{"alpha": 1.0}, {"alpha": 0.0, "cutmix_alpha": 1.0}])
def test_faster_rcnn_trains_on_batches_the_callback_mixed(settings):
    pl.seed_everything(0)
    dm = DigitsDetectionDataModule(train_canvases=8, val_canvases=4, test_canvases=4, batch_size=4)
    model = FasterRCNNDetector(**SMALL_MODEL)
    mixer = MixupCallback(mode="elem", **settings)
    trainer = tiny_trainer(max_epochs=1, callbacks=[mixer], limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert float(trainer.callback_metrics["mixup/lambda_mean"]) < 1.0
    assert "val/map" in trainer.callback_metrics
