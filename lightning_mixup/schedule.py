"""When a callback mixes and how strongly: a ramp in epochs or in optimizer steps.

The strength ``s`` in ``[0, 1]`` is 0 before the ramp starts, rises to 1 over the ramp's length
(linearly or along half a cosine; a length of 0 jumps straight to 1) and is 0 again from the stop
on. In epochs, progress is fractional (``epoch + batch_idx / batches_per_epoch``, whole epochs when
the epoch's length is unknown); in steps it is the optimizer step (``trainer.global_step``), which
suits streams whose epoch never ends and ``max_steps`` training. Both count from 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lightning_mixup import _checks as C
from lightning_mixup import functional as F

__all__ = ["Schedule"]

Unit = Literal["epochs", "steps"]


@dataclass(frozen=True)
class Schedule:
    """A ramp ``[start, start + length]`` that stops at ``stop``, in epochs or optimizer steps.

    Build it with :meth:`from_arguments`, which checks the arguments a user writes.

    Example:
        >>> ramp = Schedule.from_arguments(ramp_start_epoch=1, ramp_epochs=2)
        >>> ramp.strength(epoch=2, batch_idx=0, batches_per_epoch=10)
        0.5
    """

    unit: Unit
    start: int
    length: int
    stop: int | None
    shape: str = "linear"

    @classmethod
    def from_arguments(
        cls,
        ramp_start_epoch: int = 0,
        ramp_epochs: int = 0,
        stop_epoch: int | None = None,
        ramp_start_step: int | None = None,
        ramp_steps: int | None = None,
        stop_step: int | None = None,
        ramp_shape: str = "linear",
    ) -> Schedule:
        """The schedule for :class:`~lightning_mixup.MixupCallback`'s arguments.

        Raises:
            ValueError: On a negative or non-integer value, a stop not after the start, an unknown
                shape, or epoch and step arguments given together.
        """
        C.choice("ramp_shape", ramp_shape, F.RAMP_SHAPES)
        names = ("ramp_start_step", "ramp_steps", "stop_step")
        values = (ramp_start_step, ramp_steps, stop_step)
        given = [f"`{k}`={v!r}" for k, v in zip(names, values) if v is not None]
        unit: Unit = "steps"
        if given and (ramp_start_epoch, ramp_epochs, stop_epoch) != (0, 0, None):
            raise ValueError(
                "The schedule is in epochs or in steps, not both: got `ramp_start_epoch`="
                f"{ramp_start_epoch!r}, `ramp_epochs`={ramp_epochs!r}, `stop_epoch`="
                f"{stop_epoch!r} with {', '.join(given)}."
            )
        if not given:
            names = ("ramp_start_epoch", "ramp_epochs", "stop_epoch")
            values, unit = (ramp_start_epoch, ramp_epochs, stop_epoch), "epochs"
        start, length, stop = values
        start = C.integer(names[0], start or 0, 0)
        length = C.integer(names[1], length or 0, 0)
        if stop is not None and C.integer(names[2], stop, 0) <= start:
            raise ValueError(f"`{names[2]}` must be after `{names[0]}` = {start}, got {stop!r}.")
        return cls(unit, start, length, stop, ramp_shape)

    @property
    def moves(self) -> bool:
        """Whether the strength changes at all during training (else it is 1 throughout)."""
        return self.start > 0 or self.length > 0 or self.stop is not None

    def strength(
        self, epoch: int, batch_idx: int = 0, batches_per_epoch: float = math.inf, step: int = 0
    ) -> float:
        """The strength at ``epoch``/``batch_idx`` (in epochs) or at optimizer ``step``."""
        if self.unit == "steps":
            progress: float = step
        else:
            frac = batch_idx / batches_per_epoch if 0 < batches_per_epoch < math.inf else 0.0
            progress = epoch + frac
        return F.ramp_strength(progress, self.start, self.length, self.shape, self.stop)

    def overlaps(self, other: Schedule) -> bool:
        """Whether both may mix at the same time (always, as far as can be told, across units)."""
        if self.unit != other.unit:
            return True
        stops = [math.inf if s.stop is None else s.stop for s in (self, other)]
        return self.start < stops[1] and other.start < stops[0]

    def __str__(self) -> str:
        stop = "inf" if self.stop is None else self.stop
        return f"{self.unit} [{self.start}, {stop})"
