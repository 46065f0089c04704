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
                "at": None if params is None else params.at,
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


class BlockNet(pl.LightningModule):
    """A small CNN with named blocks that records what each block put out and what came next.

    ``raw[name]`` holds each call's output before any later hook (the callback's is registered
    later, at each step), ``seen[name]`` what the next module received, i.e. the mixed output.
    ``block2`` halves the spatial size, so its grid differs from the inputs'. With
    ``second_pass`` the training step runs the network twice (like a teacher pass).
    """

    def __init__(self, num_classes: int = 64, second_pass: bool = False) -> None:
        super().__init__()
        self.num_classes, self.second_pass = num_classes, second_pass
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.ReLU())
        self.tap = nn.Identity()
        self.head = nn.Linear(4, num_classes)
        self.raw: dict[str, list[torch.Tensor]] = {"block1": [], "block2": []}
        self.seen: dict[str, list[torch.Tensor]] = {"block1": [], "block2": []}
        self.records: list[dict[str, Any]] = []
        self.val_hooks: list[int] = []
        for name, block, after in (
            ("block1", self.block1, self.block2),
            ("block2", self.block2, self.tap),
        ):
            block.register_forward_hook(
                lambda m, a, out, name=name: self.raw[name].append(out.detach().clone())
            )
            after.register_forward_pre_hook(
                lambda m, a, name=name: self.seen[name].append(a[0].detach().clone())
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tap(self.block2(self.block1(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_mixup import MixupCallback

        x, y = batch
        logits = self(x)
        if self.second_pass:
            with torch.no_grad():
                self(x)
        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        self.records.append(
            {"x": x.detach().clone(), "y": y.detach().clone(), "params": cb.last_params}
        )
        return nn.functional.cross_entropy(logits.float(), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_hooks.append(len(self.block1._forward_hooks) + len(self.block2._forward_hooks))
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TokenClassifier(pl.LightningModule):
    """Embedding → masked mean-pool → linear, on dict batches ``{ids, mask, label}``."""

    def __init__(self, vocab: int = 20, num_classes: int = 3, marks: str = "tokens") -> None:
        super().__init__()
        self.num_classes, self.marks = num_classes, marks
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, num_classes)
        self.records: list[dict[str, Any]] = []
        self.embed.register_forward_hook(
            lambda m, a, out: self.records.append({"raw": out.detach().clone()})
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_mixup import MixupCallback

        h = self.embed(batch["ids"])
        real = batch["mask"].bool() if self.marks == "tokens" else ~batch["mask"].bool()
        pooled = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        cb = next(c for c in self.trainer.callbacks if isinstance(c, MixupCallback))
        self.records[-1].update(
            {
                "mixed": h.detach().clone(),
                "mask": batch["mask"].clone(),
                "y": batch["label"].clone(),
                "params": cb.last_params,
            }
        )
        return nn.functional.cross_entropy(self.head(pooled), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TokenData(Dataset):
    """Token sequences of length 6 padded after ``2 + i % 4`` real tokens; mask 1 on real ones."""

    def __init__(self, n: int = 16, marks: str = "tokens") -> None:
        self.n, self.marks = n, marks

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        length = 2 + i % 4
        ids = torch.zeros(6, dtype=torch.long)
        ids[:length] = torch.arange(1, length + 1) + i % 7
        real = torch.arange(6) < length
        mask = real.long() if self.marks == "tokens" else ~real  # HF style, or PyTorch padding
        return {"ids": ids, "mask": mask, "label": i % 3}


class DrawLog(pl.Callback):
    """Records ``MixupCallback.last_params`` and the mixed targets of every training batch.

    For runs in other processes (the CLI, launched per node): name it in the config or on the
    command line (``--trainer.callbacks+=tests.probes.DrawLog --trainer.callbacks.out_dir=DIR``);
    at the end of training each rank saves its records to ``DIR/rank<global rank>.pt``.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.draws: list[dict[str, Any]] = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        from lightning_mixup import MixupCallback

        cb = next(c for c in trainer.callbacks if isinstance(c, MixupCallback))
        params = cb.last_params
        self.draws.append(
            {
                "epoch": trainer.current_epoch,
                "batch_idx": batch_idx,
                "partner": None if params is None else params.partner.clone(),
                "lam": None if params is None else params.lam.clone(),
                "cut": None if params is None else params.cut.clone(),
                "y": batch[1].detach().clone(),  # the targets as mixed for this step
            }
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import os

        record = {
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "draws": self.draws,
        }
        torch.save(record, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


class CriterionModule(pl.LightningModule):
    """A linear classifier whose training loss is ``self.criterion(logits, y)``; records each step.

    Each training step records its inputs, targets, logits, loss and the type of
    ``self.criterion`` it saw; each validation step the type it saw.
    """

    def __init__(
        self,
        criterion: nn.Module | None = None,
        num_classes: int = 32,
        in_features: int = 32,
        input_key: Any = 0,
        target_key: Any = 1,
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.out_dir = num_classes, out_dir
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.input_key, self.target_key = input_key, target_key
        self.layer = nn.Linear(in_features, num_classes)
        self.records: list[dict[str, Any]] = []
        self.val_criteria: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1).to(self.layer.weight.dtype)).float()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_mixup import MixupCallback

        x, y = batch[self.input_key], batch[self.target_key]
        logits = self(x)
        loss = self.criterion(logits, y)
        cb = next((c for c in self.trainer.callbacks if isinstance(c, MixupCallback)), None)
        self.records.append(
            {
                "params": None if cb is None else cb.last_params,
                "x": x.detach().clone(),
                "y": y.detach().clone(),
                "logits": logits.detach().clone(),
                "loss": loss.detach().clone(),
                "criterion": type(self.criterion).__name__,
            }
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_criteria.append(type(self.criterion).__name__)

    def on_train_end(self) -> None:
        if self.out_dir is not None:  # under ddp_spawn the parent reads what each rank saved
            import os

            path = os.path.join(self.out_dir, f"rank{self.global_rank}.pt")
            torch.save({"records": self.records}, path)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)
