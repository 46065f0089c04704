"""Probe modules and data shared by the Trainer-level tests (module level, so they pickle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


class IdentityData(Dataset):
    """Sample ``i`` is a constant image of value ``i`` with label ``i``: a mix names its sources."""

    def __init__(self, n: int, shape: Sequence[int] = (2, 4, 4), as_dict: bool = False) -> None:
        self.n, self.shape, self.as_dict = n, tuple(shape), as_dict

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        x = torch.full(self.shape, float(i))
        if self.as_dict:
            return {"image": x, "label": i}
        return x, i


def loader(
    n: int = 16, batch_size: int = 4, as_dict: bool = False, shuffle: bool = False, **kw: Any
) -> DataLoader:
    """A DataLoader over :class:`IdentityData` (lists of tensors, or dicts)."""
    return DataLoader(
        IdentityData(n, as_dict=as_dict, **kw), batch_size=batch_size, shuffle=shuffle
    )


class RecordingModule(pl.LightningModule):
    """Tiny classifier that records what each training/validation step receives."""

    def __init__(
        self, num_classes: int = 16, in_features: int = 32, input_key: Any = 0, target_key: Any = 1
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_key, self.target_key = input_key, target_key
        self.layer = nn.Linear(in_features, num_classes)
        self.train_records: list[dict[str, Any]] = []
        self.val_records: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[self.input_key], batch[self.target_key]
        self.train_records.append(
            {
                "epoch": self.current_epoch,
                "batch_idx": batch_idx,
                "x": x.detach().clone(),
                "y": y.detach().clone(),
            }
        )
        logits = self.layer(x.flatten(1).to(self.layer.weight.dtype)).float()
        return nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[self.input_key], batch[self.target_key]
        self.val_records.append({"x": x.detach().clone(), "y": y.detach().clone()})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tensor_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 4) -> DataLoader:
    """A plain DataLoader over tensors."""
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def tiny_trainer(**kw: Any) -> pl.Trainer:
    """A quiet CPU Trainer for tests."""
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    opts.update(kw)
    return pl.Trainer(**opts)


class DrawRecorder(RecordingModule):
    """Records, per training step, the callback's strength and draws; saves them per rank.

    Used under ``ddp_spawn``, where the parent process only sees what the ranks write to disk.
    """

    def __init__(self, out_dir: str, num_classes: int = 16, in_features: int = 32) -> None:
        super().__init__(num_classes=num_classes, in_features=in_features)
        self.out_dir = out_dir
        self.draws: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_mixup import MixupCallback

        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        params = cb.last_params
        self.draws.append(
            {
                "epoch": self.current_epoch,
                "batch_idx": batch_idx,
                "strength": cb.strength(
                    self.current_epoch, batch_idx, self.trainer.num_training_batches
                ),
                "partner": None if params is None else params.partner.clone(),
                "lam": None if params is None else params.lam.clone(),
                "y": batch[1].detach().clone(),
            }
        )
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x.flatten(1)), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_train_end(self) -> None:
        import os

        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        torch.save(
            {"draws": self.draws, "metrics": metrics, "state": state},
            os.path.join(self.out_dir, f"rank{self.global_rank}.pt"),
        )


class MaskData(Dataset):
    """Dense targets: sample ``i`` is a 2-channel image of value ``i`` with an index mask.

    The mask of sample ``i`` at flat pixel ``q`` is ``(i + q) % num_classes``, except where
    ``(i + 2q) % 7 == 0`` (a pattern that differs from sample to sample), which is
    ``ignore_index`` when one is given. A mixed pixel's value names its sources.
    """

    def __init__(
        self,
        n: int,
        spatial: Sequence[int] = (6, 6),
        num_classes: int = 5,
        ignore_index: int | None = None,
    ) -> None:
        self.n, self.spatial, self.k, self.ignore = n, tuple(spatial), num_classes, ignore_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.arange(int(torch.tensor(self.spatial).prod()))
        mask = (i + flat) % self.k
        if self.ignore is not None:
            mask[(i + 2 * flat) % 7 == 0] = self.ignore
        return torch.full((2, *self.spatial), float(i)), mask.view(self.spatial)


class MaskRecorder(pl.LightningModule):
    """A per-pixel 1×1-conv classifier that records each training step's batch and draws.

    ``out_dir`` set: the records are saved per rank at the end of training (for ``ddp_spawn``).
    """

    def __init__(
        self, num_classes: int = 5, ignore_index: int | None = None, out_dir: str | None = None
    ) -> None:
        super().__init__()
        self.num_classes, self.ignore_index, self.out_dir = num_classes, ignore_index, out_dir
        self.weight = nn.Parameter(torch.randn(num_classes, 2) * 0.1)  # a 1×1 conv, any spatial
        self.records: list[dict[str, Any]] = []
        self.originals: list[list[torch.Tensor]] = []  # filled by an ``Originals`` callback

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_mixup import MixupCallback

        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        x, y = batch
        self.records.append(
            {
                "epoch": self.current_epoch,
                "batch_idx": batch_idx,
                "x": x.detach().clone(),
                "y": y.detach().clone(),
                "params": cb.last_params,
            }
        )
        logits = torch.einsum("bc...,kc->bk...", x, self.weight)
        if y.is_floating_point():
            return nn.functional.cross_entropy(logits, y)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return nn.functional.cross_entropy(logits, y, ignore_index=ignore)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        if self.out_dir is not None:
            import os

            path = os.path.join(self.out_dir, f"rank{self.global_rank}.pt")
            torch.save({"records": self.records, "originals": self.originals}, path)


class Originals(pl.Callback):
    """Keeps a copy of each training batch as it arrives; list it before any MixupCallback."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pl_module.originals.append([t.clone() for t in batch])
