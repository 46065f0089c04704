"""A training batch's targets as the policy mixes them: soft rows, or an index mask kept as indices.

An index mask stays an index mask, which CutMix can paste, until smoothing or a blend needs rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_mixup import _checks as C
from lightning_mixup import functional as F
from lightning_mixup.policies import MixParams


class Targets:
    """Turns a batch's targets into what is mixed, with the classes resolved at ``setup``.

    Args:
        num_classes: Number of classes, or None to find it at ``setup``.
        label_smoothing: ε applied once, to class-index targets.
        ignore_index: Index of unlabelled pixels, or None to look for one at ``setup``.
    """

    def __init__(
        self, num_classes: int | None, label_smoothing: float, ignore_index: int | None
    ) -> None:
        self.given = num_classes, ignore_index
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.label_smoothing = label_smoothing
        self.as_given = False  # True with targets="loss": the targets stay as they are
        self.checked = False  # class indices range-checked in this fit (always on the CPU)
        self._warned_soft_smoothing = False

    def setup(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        stage: str,
        as_given: bool = False,
        criterion: object = None,
    ) -> None:
        """Resolve ``num_classes`` and ``ignore_index`` when fitting; check the next indices.

        A missing ``num_classes`` raises at the first batch that needs it. With ``as_given``
        (``targets="loss"``) the ``criterion``'s ``ignore_index`` counts when nothing else names one.
        """
        self.as_given = as_given
        if stage == "fit":
            num_classes, ignore_index = self.given
            found = num_classes or _find_attribute(trainer, pl_module, "num_classes", low=1)
            self.num_classes = found
            if ignore_index is None:
                ignore_index = _find_attribute(trainer, pl_module, "ignore_index", low=None)
            if ignore_index is None and as_given:
                of_criterion = getattr(criterion, "ignore_index", None)
                ignore_index = of_criterion if C.is_integer(of_criterion) else None
            self.ignore_index = ignore_index
        self.checked = False

    def prepare(self, form: str, target: Tensor, on_host: bool) -> Tensor:
        """The targets before mixing: soft rows, or an index mask as it is unless smoothed.

        With ``on_host`` (the CPU) class indices are range-checked at every batch; on an
        accelerator on the first batch of a fit only, so the host does not wait for the device
        (``scatter_``'s own bounds check still stops a bad index).
        """
        check_range = on_host or not self.checked
        if self.as_given:  # targets="loss": as they are, class indices range-checked
            if check_range and not target.is_floating_point() and self.num_classes is not None:
                F.check_indices(target, self.num_classes, self.ignore_index)
            self.checked = True
            return target
        if self.num_classes is None:
            raise ValueError(_NOT_FOUND)
        if form == "index_mask":  # stays an index mask unless smoothing or a blend needs rows
            if check_range:
                F.check_indices(target, self.num_classes, self.ignore_index)
            y = self.soft(target, False) if self.label_smoothing > 0 else target
        else:
            y = self.soft(target, check_range)
        self.checked = True
        return y

    def rows(
        self, form: str, target: Tensor, y: Tensor, params: MixParams
    ) -> tuple[Tensor, Tensor | None]:
        """An index mask as soft rows when a blend needs them, and its unlabelled pixels."""
        if self.as_given or form != "index_mask" or params.identity or not params.blends:
            return y, None
        if not y.is_floating_point():
            y = self.soft(target, False)
        unlabelled = None if self.ignore_index is None else target == self.ignore_index
        return y, unlabelled

    def soft(self, target: Tensor, check_range: bool) -> Tensor:
        """``target`` as float32 probability rows; warns once that float targets stay unsmoothed."""
        if (
            target.is_floating_point()
            and self.label_smoothing > 0
            and not self._warned_soft_smoothing
        ):
            self._warned_soft_smoothing = True
            rank_zero_warn(
                "MixupCallback: `label_smoothing` applies to class-index targets only; these "
                "floating point targets are mixed as given, without smoothing."
            )
        if self.num_classes is None:
            raise ValueError(_NOT_FOUND)
        return F.soft_targets(
            target,
            self.num_classes,
            self.label_smoothing,
            check_range=check_range,
            ignore_index=self.ignore_index,
        )


def _find_attribute(
    trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, low: int | None
) -> int | None:
    """The first integer ``name`` (``>= low``) of the module, its hparams or datamodule, or None."""
    hparams = getattr(pl_module, "hparams", {})
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
    candidates = (
        getattr(pl_module, name, None),
        hparams.get(name) if isinstance(hparams, Mapping) else None,
        getattr(datamodule, name, None) if datamodule is not None else None,
    )
    for value in candidates:
        if C.is_integer(value) and (low is None or value >= low):
            return value
    return None


#: Why a batch of class targets cannot be mixed into soft rows without ``num_classes``.
_NOT_FOUND = (
    "MixupCallback could not find `num_classes`: it looked at `pl_module.num_classes`, "
    "`pl_module.hparams.num_classes` and `trainer.datamodule.num_classes`. Pass "
    "`MixupCallback(num_classes=...)` or set one of those attributes."
)
