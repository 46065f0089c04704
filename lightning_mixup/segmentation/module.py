"""``SoftLabelSegmenter``: one per-pixel cross-entropy for index masks and soft masks."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_mixup import _checks as C
from lightning_mixup.classification.module import (
    _last_width,
    _SoftLabelModule,
    cosine_annealing,
    default_optimizer,
)

__all__ = ["SoftLabelSegmenter"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class SoftLabelSegmenter(_SoftLabelModule):
    """Semantic segmenter trained with one per-pixel ``F.cross_entropy``, on index or soft masks.

    Inputs are ``(B, C, *spatial)`` (one, two or three spatial dimensions; ``(B, C, H, W)`` for
    images) and the backbone returns ``(B, num_classes, *spatial)`` logits. Targets take either
    form (``MixupCallback`` writes both into training batches):

    * an integer class-index mask ``(B, *spatial)``; pixels equal to ``ignore_index`` are
      unlabelled;
    * a float soft mask ``(B, num_classes, *spatial)`` whose per-pixel rows sum to 1 on labelled
      pixels and are all zeros on unlabelled ones (how the callback carries ignored pixels through
      a blend).

    **The loss and the ignore rule.** Both forms go through the same ``F.cross_entropy`` call
    (logits cast to float32, ``reduction="none"``, ``ignore_index`` for index masks), and the same
    reduction: the sum over *labelled* pixels divided by their number (at least 1). A pixel is
    labelled when its index is not ``ignore_index``, or when its soft row sums to more than 0. So
    unlabelled pixels contribute nothing, the loss is the mean over labelled pixels, a one-hot
    soft mask with zero rows at the ignored pixels gives exactly the loss of its index mask, and a
    batch without labelled pixels gives 0 instead of NaN. With ``ignore_index=None`` no label
    value is reserved, except PyTorch's default ``-100``, which ``F.cross_entropy`` and therefore
    this module still skip; all-zero soft rows are always unlabelled.

    Label smoothing is applied exactly once (the callback's wins), and never to validation and test
    losses, as in :class:`~lightning_mixup.classification.SoftLabelClassifier`.

    Logged once per epoch: ``train/loss``; ``val/miou`` (mean intersection over union over the
    classes present in targets or predictions), ``val/pixel_acc`` (accuracy over labelled pixels)
    and ``val/nll`` (mean negative log-likelihood over labelled pixels), the same under ``test/``.
    The metrics compare ``argmax(logits)`` with the index mask, or with ``argmax`` of the soft mask
    (the first class on ties); unlabelled pixels are left out. Batches are ``[x, y]`` lists or
    ``(x, y)`` tuples.

    Args:
        backbone: Network mapping inputs to ``(B, num_classes, *spatial)`` logits of the same
            spatial size (see :class:`~lightning_mixup.segmentation.SmallFCN`).
        num_classes: Number of classes ``K`` (background included); ``MixupCallback`` reads it.
        optimizer: Callable that builds the optimizer from the parameters (LightningCLI's
            dependency-injection convention); defaults to
            :func:`~lightning_mixup.classification.module.default_optimizer`.
        lr_scheduler: Callable that builds a scheduler from the optimizer, stepped once per epoch
            (a ``ReduceLROnPlateau`` monitors ``val/nll``); None keeps the learning rate constant.
            The default, :func:`~lightning_mixup.classification.module.cosine_annealing`, decays
            over ``trainer.max_epochs``.
        label_smoothing: ε in ``[0, 1]`` for the training loss: each labelled pixel's target
            becomes ``(1 - ε)·y + ε/K``.
        ignore_index: Mask value of unlabelled pixels (e.g. 255, as in Pascal VOC), outside
            ``[0, num_classes)``; None reserves none. ``MixupCallback`` reads it.

    Raises:
        ValueError: If an argument is out of range; at ``setup``, if the datamodule's
            ``num_classes`` differs or the backbone's last convolution does not output
            ``num_classes`` channels; during a step, if the logits or the targets have the wrong
            shape (the message shows the shapes).
        TypeError: If ``backbone`` is not an ``nn.Module``, a callable argument is not callable,
            or the targets' dtype fits neither form.

    Example:
        >>> from lightning_mixup.segmentation.models import SmallFCN
        >>> model = SoftLabelSegmenter(SmallFCN(num_classes=11), num_classes=11, ignore_index=255)
        >>> model.loss(torch.zeros(2, 11, 4, 4), torch.full((2, 4, 4), 255)).item()
        0.0
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = cosine_annealing,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, optimizer, lr_scheduler, label_smoothing)
        self.ignore_index = C.ignore_index(ignore_index, self.num_classes)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        # With `ignore_index=None`, F.cross_entropy still skips index-mask pixels of its own
        # default, -100; all-zero soft-mask rows are mapped to it for the metrics.
        self._ignore = C.TORCH_IGNORE_INDEX if ignore_index is None else ignore_index
        self.val_metrics = self._eval_metrics()
        self.test_metrics = self._eval_metrics()

    def _eval_metrics(self) -> MetricCollection:
        k, ignore = self.num_classes, self._ignore
        # A plain container (no compute groups): each metric is updated and logged on its own.
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(k, average="macro", ignore_index=ignore),
                "pixel_acc": MulticlassAccuracy(k, average="micro", ignore_index=ignore),
                "nll": MeanMetric(),
            },
            compute_groups=False,
        )

    # ------------------------------------------------------------------ Lightning hooks
    def _output_width(self) -> tuple[int, str] | None:
        width = _last_width(self.backbone, _CONVS, "out_channels", self.num_classes)
        return None if width is None else (width, "channels")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Per-pixel cross-entropy on an index or (mixed) soft mask, with the training smoothing."""
        x, target = self._unpack(batch)
        loss = self.loss(self._logits(x), target, label_smoothing=self.train_label_smoothing)
        self._log_train_loss(loss, x.shape[0])
        return loss

    # ------------------------------------------------------------------ the loss
    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        label_smoothing: float = 0.0,
        reduction: Literal["mean", "none"] = "mean",
    ) -> Tensor:
        """Per-pixel cross-entropy of ``logits`` against an index or soft mask, in float32.

        Args:
            logits: ``(B, num_classes, *spatial)`` logits of any floating dtype.
            target: ``(B, *spatial)`` integer index mask or ``(B, num_classes, *spatial)`` float
                soft mask (see the class docstring for unlabelled pixels).
            label_smoothing: ε in ``[0, 1]``; each labelled pixel's target becomes
                ``(1 - ε)·y + ε/K``, for both forms.
            reduction: ``"mean"`` over labelled pixels (0 when there are none), or ``"none"`` for
                the ``(B, *spatial)`` per-pixel losses, 0 at unlabelled pixels.

        Returns:
            The loss: a scalar, or a ``(B, *spatial)`` tensor with ``reduction="none"``.

        Raises:
            ValueError: If the logits or the mask have the wrong shape, or ``reduction`` is unknown.
            TypeError: If the mask's dtype fits neither form.
        """
        reduction = C.choice("reduction", reduction, ("mean", "none"))
        per_pixel, labelled = self._pixel_loss(self._check_logits(logits), target, label_smoothing)
        if reduction == "none":
            return per_pixel
        return per_pixel.sum() / labelled.sum().clamp(min=1)

    def _pixel_loss(
        self, logits: Tensor, target: Tensor, label_smoothing: float
    ) -> tuple[Tensor, Tensor]:
        """Per-pixel losses (0 where unlabelled) and the labelled-pixel mask, both ``(B, *spatial)``."""
        target, labelled = self._check_target(target, logits)
        per_pixel = F.cross_entropy(
            logits.float(),
            target,
            # index masks only: for probability targets torch accepts only its default
            ignore_index=C.TORCH_IGNORE_INDEX if target.is_floating_point() else self._ignore,
            label_smoothing=label_smoothing,
            reduction="none",
        )
        # Smoothing gives an all-zero soft row ε/K everywhere: such pixels are put back to 0.
        return torch.where(labelled, per_pixel, 0.0), labelled

    # ------------------------------------------------------------------ helpers
    def _eval_step(self, batch: Any, stage: str, metrics: MetricCollection) -> None:
        x, target = self._unpack(batch)
        logits = self._logits(x)
        per_pixel, labelled = self._pixel_loss(logits, target, 0.0)
        count = labelled.sum()
        metrics["nll"].update(per_pixel.sum() / count.clamp(min=1), weight=count)
        preds = logits.argmax(dim=1)
        labels = self._labels(target)
        metrics["miou"].update(preds, labels)
        metrics["pixel_acc"].update(preds, labels)
        for name, metric in metrics.items():
            self.log(
                f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "miou"
            )

    def _labels(self, target: Tensor) -> Tensor:
        """Index labels for the metrics: the mask itself, or a soft mask's argmax (zero rows ignored)."""
        if not target.is_floating_point():
            return target.long()
        labelled = target.sum(dim=1) > 0
        return torch.where(labelled, target.argmax(dim=1), self._ignore)

    def _logits(self, x: Tensor) -> Tensor:
        return self._check_logits(self(x)).float()

    def _check_logits(self, logits: Tensor) -> Tensor:
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The backbone returned logits of shape {tuple(logits.shape)}, but the module has "
                f"`num_classes` = {self.num_classes} and expects (batch, {self.num_classes}, "
                f"*spatial); build the backbone with num_classes={self.num_classes}."
            )
        return logits

    def _check_target(self, target: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The target in the dtype ``F.cross_entropy`` needs and its labelled-pixel mask."""
        batch, spatial = logits.shape[0], tuple(logits.shape[2:])
        index_shape, shape = (batch, *spatial), tuple(target.shape)
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(
                f"Targets must be an integer class-index mask {index_shape} or a floating point soft "
                f"mask {(batch, self.num_classes, *spatial)}, got dtype {target.dtype} and shape "
                f"{shape}."
            )
        if not target.is_floating_point():
            if target.ndim != len(index_shape):
                raise ValueError(
                    f"An integer index mask must have shape (batch, *spatial) = {index_shape}, got "
                    f"{shape}; remove a channel dimension with `mask.squeeze(1)`."
                )
            self._check_sizes(shape, index_shape, "index mask", logits)
            return target.long(), target != self._ignore
        if target.ndim == len(index_shape):
            raise TypeError(
                f"A floating point target of shape {shape} fits neither form: an index "
                f"mask {index_shape} must be an integer tensor (use `mask.long()`), a soft mask must "
                f"have shape {(batch, self.num_classes, *spatial)}."
            )
        if target.ndim != logits.ndim:
            raise ValueError(
                f"A soft mask must have shape (batch, num_classes, *spatial) = "
                f"{(batch, self.num_classes, *spatial)}, got {shape}."
            )
        if target.shape[1] != self.num_classes:
            raise ValueError(
                f"A soft mask must have `num_classes` = {self.num_classes} channels, got shape "
                f"{shape}."
            )
        self._check_sizes((target.shape[0], *target.shape[2:]), index_shape, "soft mask", logits)
        target = target.float()
        return target, target.sum(dim=1) > 0

    @staticmethod
    def _check_sizes(
        got: tuple[int, ...], want: tuple[int, ...], what: str, logits: Tensor
    ) -> None:
        if got[0] != want[0]:
            raise ValueError(
                f"The {what} holds {got[0]} samples but the logits {want[0]} (logits of shape "
                f"{tuple(logits.shape)})."
            )
        if got[1:] != want[1:]:
            raise ValueError(
                f"The {what}'s spatial size {got[1:]} differs from the logits' {want[1:]} (logits "
                f"of shape {tuple(logits.shape)}); the backbone must return logits at the mask's "
                "size."
            )
