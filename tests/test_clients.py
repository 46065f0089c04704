"""Modules this project did not write train with only the callback added (``targets="loss"``).

torchgeo's tasks, a user's module around a timm model and a Hugging Face model built from a
config (no download) keep their criterion, their class-index labels and their own torchmetrics.
These packages come with the ``dev`` extra (``clients``); the oldest-versions CI stage, which does
not install them, deselects this module by its marker.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, Dataset

# Without the `clients` extra (the oldest-versions stage) this module is skipped as a whole, at
# collection too (--doctest-modules imports it); the -ra summary names the missing package.
_EXTRA = 'the `clients` extra: pip install -e ".[dev]"'
timm = pytest.importorskip("timm", reason=_EXTRA)
torchgeo_trainers = pytest.importorskip("torchgeo.trainers", reason=_EXTRA)
transformers = pytest.importorskip("transformers", reason=_EXTRA)
ClassificationTask = torchgeo_trainers.ClassificationTask
SemanticSegmentationTask = torchgeo_trainers.SemanticSegmentationTask
ResNetConfig = transformers.ResNetConfig
ResNetForImageClassification = transformers.ResNetForImageClassification

from lightning_mixup import DigitsDataModule, MixupCallback  # noqa: E402
from tests.probes import tiny_trainer  # noqa: E402

pytestmark = [pytest.mark.clients, pytest.mark.slow]


class GeoScenes(Dataset):
    """torchgeo-style samples: ``{"image": (3, 32, 32) float, "label" | "mask": ...}``.

    A sample's class sets the mean of its first channel, so the classes can be learnt. Masks
    hold the class in a square, 0 elsewhere, and 255 (unlabelled) on a border ring.
    """

    def __init__(self, n: int, num_classes: int, dense: bool) -> None:
        g = torch.Generator().manual_seed(n)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.images[:, 0] += self.labels.float()[:, None, None]
        self.dense = dense

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not self.dense:
            return {"image": self.images[i], "label": self.labels[i]}
        mask = torch.zeros(32, 32, dtype=torch.long)
        mask[8:24, 8:24] = self.labels[i]
        mask[0], mask[-1], mask[:, 0], mask[:, -1] = 255, 255, 255, 255
        return {"image": self.images[i], "mask": mask}


def geo_fit(task: pl.LightningModule, dense: bool, mixer: MixupCallback) -> pl.Trainer:
    train = DataLoader(GeoScenes(32, 4, dense), batch_size=8, shuffle=True)
    val = DataLoader(GeoScenes(8, 4, dense), batch_size=8)
    trainer = tiny_trainer(max_epochs=2, callbacks=[mixer], num_sanity_val_steps=1)
    trainer.fit(task, train, val)
    return trainer


def test_torchgeo_classification_task_with_class_weights_trains_with_the_callback_alone(caplog):
    caplog.set_level(logging.INFO)
    task = ClassificationTask(
        model="resnet18", weights=None, in_channels=3, num_classes=4,
        class_weights=[1.0, 2.0, 1.0, 0.5],
    )  # fmt: skip
    mixer = MixupCallback(alpha=1.0, cutmix_alpha=1.0)
    trainer = geo_fit(task, dense=False, mixer=mixer)
    metrics = trainer.callback_metrics
    assert "train_OverallAccuracy" in metrics and "train_loss" in metrics
    assert torch.isfinite(metrics["train_loss"])
    assert float(metrics["mixup/lambda_mean"]) < 1.0  # batches were mixed
    assert "targets='loss' (ClassificationTask has `criterion`)" in caplog.text
    assert type(task.criterion) is nn.CrossEntropyLoss and "criterion" not in vars(task)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_torchgeo_segmentation_task_with_ignore_index_and_class_weights_trains(mode):
    task = SemanticSegmentationTask(
        model="unet", backbone="resnet18", weights=None, in_channels=3, num_classes=4,
        ignore_index=255, class_weights=[0.5, 1.0, 2.0, 1.0],
    )  # fmt: skip
    mixer = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode=mode)
    trainer = geo_fit(task, dense=True, mixer=mixer)
    metrics = trainer.callback_metrics
    assert "train_MulticlassJaccardIndex" in metrics and torch.isfinite(metrics["train_loss"])
    assert float(metrics["mixup/lambda_mean"]) < 1.0
    assert mixer._targets.ignore_index == 255


class TimmDigits(pl.LightningModule):
    """A user's module: timm's ResNet-18, its own criterion and a torchmetrics accuracy."""

    def __init__(self) -> None:
        super().__init__()
        self.model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.labels: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.labels.append(y)
        logits = self.model(nn.functional.interpolate(x, size=32))
        loss = self.criterion(logits, y)
        self.train_acc(logits, y)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def test_a_timm_module_with_torchmetrics_learns_the_digits_with_the_callback_added():
    pl.seed_everything(0)
    module = TimmDigits()
    trainer = tiny_trainer(
        max_epochs=3, limit_train_batches=10, callbacks=[MixupCallback(alpha=0.4)]
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert all(y.dtype == torch.int64 and y.ndim == 1 for y in module.labels)
    # Against each sample's own label on mixed inputs; chance is 0.1.
    assert float(trainer.callback_metrics["train/acc"]) > 0.3


class HFDigits(pl.LightningModule):
    """The guide's recipe for a Hugging Face model: logits from the model, the loss from ours.

    The model is not given ``labels`` (it would pick its own loss from their dtype); the module
    holds the criterion, which the callback mixes.
    """

    def __init__(self) -> None:
        super().__init__()
        config = ResNetConfig(
            num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
            num_labels=10, downsample_in_first_stage=False,
        )  # fmt: skip
        self.model = ResNetForImageClassification(config)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(pixel_values=batch["pixel_values"]).logits
        self.train_acc(logits, batch["labels"])
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return self.criterion(logits, batch["labels"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class HFStyle(Dataset):
    """The digits datamodule's training samples as Hugging Face style dicts."""

    def __init__(self, samples: Dataset) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.samples[i]
        return {"pixel_values": x, "labels": y}


def test_a_hugging_face_model_from_a_config_trains_with_the_guides_recipe():
    pl.seed_everything(0)
    data = DigitsDataModule(batch_size=32)
    data.setup("fit")
    train = DataLoader(HFStyle(data.train_dataloader().dataset), batch_size=32, shuffle=True)
    module = HFDigits()
    mixer = MixupCallback(alpha=0.4)  # keys found: pixel_values, labels
    trainer = tiny_trainer(max_epochs=6, limit_train_batches=12, callbacks=[mixer])
    trainer.fit(module, train)
    assert float(trainer.callback_metrics["train/acc"]) > 0.3  # chance is 0.1
    assert mixer.last_params is not None
