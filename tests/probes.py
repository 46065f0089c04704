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
