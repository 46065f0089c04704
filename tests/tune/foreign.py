"""A module and datamodule this package does not ship, for ``compare`` on a user's own config.

Named by ``class_path`` in ``foreign.yaml``: three Gaussian blobs in 8 dimensions, a two-layer
network with its own cross-entropy criterion (MixupCallback mixes that loss, ``targets='auto'``),
and test metrics under names of its own (``test/error``, ``test/loss``, ``test/margin``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Blobs(pl.LightningDataModule):
    """``n`` points per split of three blobs (``seed`` draws them), batches ``[x, y]``."""

    def __init__(
        self, n: int = 96, batch_size: int = 16, spread: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__()
        self.n, self.batch_size, self.spread, self.seed = n, batch_size, spread, seed

    def setup(self, stage: str) -> None:
        """Draw the three splits from the datamodule's own generator."""
        g = torch.Generator().manual_seed(self.seed)
        centres = 3 * torch.randn(3, 8, generator=g)
        self.splits = {}
        for split in ("train", "val", "test"):
            y = torch.randint(0, 3, (self.n,), generator=g)
            x = centres[y] + self.spread * torch.randn(self.n, 8, generator=g)
            self.splits[split] = TensorDataset(x, y)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=split == "train")

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test")


class BlobNet(pl.LightningModule):
    """A two-layer network trained with its own ``criterion``; logs ``val/error`` and test metrics."""

    def __init__(self, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The criterion on the (mixed) batch."""
        x, y = batch
        return self.criterion(self(x), y)

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self(x)
        top2 = logits.softmax(1).topk(2, dim=1).values
        self.log(f"{stage}/error", (logits.argmax(1) != y).float().mean())
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, y))
        self.log(f"{stage}/margin", (top2[:, 0] - top2[:, 1]).mean())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation metrics."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Test metrics."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD."""
        return torch.optim.SGD(self.parameters(), lr=self.lr)
