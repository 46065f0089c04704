"""Non-finite batches (left unmixed, so NaN/Inf stays in its own samples) and the epoch's log."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_mixup import functional as F
from lightning_mixup.policies import MixParams


class Guard:
    """Screens batches for NaN/Inf, warns once, and keeps and logs each epoch's statistics.

    Args:
        skip_nonfinite: Screen the batches (one reduction each); False counts and warns nothing.
    """

    def __init__(self, skip_nonfinite: bool) -> None:
        self.skip_nonfinite = skip_nonfinite
        self._warned = False
        self.new_epoch()

    def new_epoch(self) -> None:
        """Start counting an epoch: batches seen, summed strength and λ, non-finite batches."""
        self.batches, self.strength, self.lam = 0, 0.0, 0.0
        self.nonfinite: int | Tensor = 0  # a device tensor on accelerators: never read per batch

    def finite(self, x: Tensor, y: Tensor, form: str, on_host: bool) -> bool | Tensor | None:
        """Whether the batch may be mixed (counted when it may not); None when not screening.

        On the host (``on_host``) the answer is a bool, read at once; otherwise a 0-d bool tensor
        on ``x``'s device that is never read per batch. Soft targets and soft masks can hold
        NaN/Inf too.
        """
        if not self.skip_nonfinite:
            return None
        checks = [F.all_finite(x)] if x.is_floating_point() else []
        if form.startswith("soft"):
            checks.append(F.all_finite(y).to(x.device))
        if on_host:
            ok = all(bool(check) for check in checks)
            self.nonfinite += not ok
            return ok
        finite = torch.ones((), dtype=torch.bool, device=x.device)
        for check in checks:
            finite = finite & check
        self.nonfinite += ~finite
        return finite

    def add(self, strength: float, params: MixParams | None) -> None:
        """Count a batch mixed with ``params`` (None: not mixed) at ``strength``."""
        self.batches += 1
        self.strength += strength
        self.lam += 1.0 if params is None else float(params.lam.mean())

    def correct(self, requested: MixParams, final: MixParams) -> None:
        """Count a counted batch at its final λ (a hidden layer's CutMix areas), not the requested."""
        self.lam += float(final.lam.mean()) - float(requested.lam.mean())

    def warn(self, where: str) -> None:
        """Warn, once, that the inputs or targets in ``where`` are not finite."""
        if not self._warned:
            self._warned = True
            rank_zero_warn(
                f"MixupCallback: training inputs or targets in {where} contain NaN or Inf; such "
                "batches are left unmixed so the bad values do not spread to other samples. "
                "`mixup/nonfinite_batches` counts them per epoch."
            )

    def log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        """Log the epoch's mean strength and λ and, when screening, its non-finite batches."""
        n = max(self.batches, 1)
        log = partial(pl_module.log, on_step=False, on_epoch=True, sync_dist=True)
        log(f"{prefix}/strength", self.strength / n)
        log(f"{prefix}/lambda_mean", self.lam / n)
        if self.skip_nonfinite:
            count = torch.as_tensor(self.nonfinite, dtype=torch.float32, device=pl_module.device)
            total = float(trainer.strategy.reduce(count, reduce_op="sum"))
            if total:
                self.warn(f"epoch {trainer.current_epoch}")
            pl_module.log(f"{prefix}/nonfinite_batches", total, on_step=False, on_epoch=True)
