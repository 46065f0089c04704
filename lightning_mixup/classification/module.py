"""``SoftLabelClassifier``: one cross-entropy loss for class-index and probability targets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRScheduler
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from lightning_mixup import _checks as C
from lightning_mixup.callback import MixupCallback

__all__ = ["SoftLabelClassifier", "cosine_annealing", "default_optimizer"]

_ECE_BINS = 15


def default_optimizer(params: Iterable[Any]) -> Optimizer:
    """SGD with Nesterov momentum 0.9, learning rate 0.1 and weight decay 5e-4.

    The usual CIFAR ResNet recipe at batch size 128. A module-level function, so it pickles (DDP
    spawn) and LightningCLI can name it: ``optimizer: lightning_mixup.classification.module.default_optimizer``.

    Args:
        params: Parameters or parameter groups, as ``torch.optim`` optimizers accept them.

    Returns:
        The optimizer.

    Example:
        >>> default_optimizer(torch.nn.Linear(2, 2).parameters()).defaults["lr"]
        0.1
    """
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def cosine_annealing(optimizer: Optimizer, max_epochs: int | None = None) -> CosineAnnealingLR:
    """Cosine decay from the initial learning rate to 0 over ``max_epochs`` epochs.

    The modules' default ``lr_scheduler``: they call it with ``trainer.max_epochs`` and step it
    once per epoch.

    Args:
        optimizer: The optimizer whose learning rate is scheduled.
        max_epochs: Number of epochs of the decay (``T_max``). Required: the default None only lets
            it stand where a one-argument scheduler callable is typed.

    Returns:
        The scheduler.

    Raises:
        ValueError: If ``max_epochs`` is not given.

    Example:
        >>> opt = default_optimizer(torch.nn.Linear(2, 2).parameters())
        >>> cosine_annealing(opt, max_epochs=200).T_max
        200
    """
    if max_epochs is None:
        raise ValueError(
            "`max_epochs` must be given: cosine_annealing decays over a known number of epochs; "
            "call it as `cosine_annealing(optimizer, max_epochs)`."
        )
    return CosineAnnealingLR(optimizer, T_max=max_epochs)


def _last_width(
    backbone: nn.Module, kinds: type | tuple[type, ...], attribute: str, num_classes: int
) -> int | None:
    """The output width of the backbone's last module with parameters, when known before any data.

    Known when that module is one of ``kinds`` and no layer of ``kinds`` has ``num_classes``
    outputs: registration order is not call order (an output layer registered before a projection
    head), so any such layer leaves the check to the first step's logits.
    """
    last = None
    for module in backbone.modules():
        if any(True for _ in module.parameters(recurse=False)):
            last = module
    if not isinstance(last, kinds):
        return None
    widths = {getattr(m, attribute) for m in backbone.modules() if isinstance(m, kinds)}
    return None if num_classes in widths else int(getattr(last, attribute))


class _InjectedModule(pl.LightningModule):
    """The modules' optimizer/scheduler callables, ``num_classes`` check and two-item batches."""

    num_classes: int
    #: What a ``ReduceLROnPlateau`` monitors.
    _monitor = "val/nll"
    #: The messages' batch form and what to rebuild on a ``num_classes`` mismatch.
    _batch_form = "`[x, y]`: a list or tuple with the inputs at index 0 and the targets at index 1"
    _rebuild = "the module (and its backbone)"

    def _set_optimizers(self, optimizer: Any, lr_scheduler: Any) -> None:
        if not callable(optimizer):
            raise TypeError(
                f"`optimizer` must be a callable that takes the parameters and returns an "
                f"optimizer, got {optimizer!r}."
            )
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise TypeError(
                f"`lr_scheduler` must be None or a callable that takes the optimizer and returns a "
                f"scheduler, got {lr_scheduler!r}."
            )
        self.optimizer: OptimizerCallable = optimizer
        self.lr_scheduler: LRSchedulerCallable | None = lr_scheduler

    def setup(self, stage: str) -> None:
        """Check ``num_classes`` against the datamodule's."""
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
        dm_classes = getattr(datamodule, "num_classes", None) if datamodule is not None else None
        if (
            isinstance(dm_classes, int)
            and not isinstance(dm_classes, bool)
            and dm_classes != self.num_classes
        ):
            raise ValueError(
                f"The datamodule has `num_classes` = {dm_classes} but the module has `num_classes` = "
                f"{self.num_classes}; build {self._rebuild} with num_classes={dm_classes}."
            )

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Build the optimizer and the per-epoch scheduler from the injected callables.

        :func:`cosine_annealing` is called with ``trainer.max_epochs``.
        """
        built = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return built
        if self.lr_scheduler is cosine_annealing:
            max_epochs = self.trainer.max_epochs
            if max_epochs is None or max_epochs < 1:
                raise ValueError(
                    "The default `lr_scheduler` (cosine annealing) decays over "
                    f"`trainer.max_epochs`, got {max_epochs!r}; set `Trainer(max_epochs=...)`, or "
                    "pass another `lr_scheduler` (None keeps the learning rate constant)."
                )
            scheduler: LRScheduler | ReduceLROnPlateau = cosine_annealing(built, max_epochs)
        else:
            scheduler = self.lr_scheduler(built)
        config: LRSchedulerConfigType = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self._monitor
        return {"optimizer": built, "lr_scheduler": config}

    def _unpack(self, batch: Any) -> tuple[Any, Any]:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            got = type(batch).__name__
            if isinstance(batch, (list, tuple)):
                got += f" of length {len(batch)}"
            raise TypeError(f"{type(self).__name__} expects batches {self._batch_form}, got {got}.")
        return batch[0], batch[1]


class _SoftLabelModule(_InjectedModule):
    """What :class:`SoftLabelClassifier` and the segmentation module share.

    Subclasses add the loss, ``training_step``, the metrics (``val_metrics``, ``test_metrics``),
    ``_logits`` and ``_eval_step``, and call :meth:`save_hyperparameters`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        label_smoothing: float,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be a torch.nn.Module, got {type(backbone).__name__}.")
        num_classes = C.positive_integer("num_classes", num_classes)
        self._set_optimizers(optimizer, lr_scheduler)
        self.label_smoothing = label_smoothing  # validated by the property setter
        self.backbone = backbone
        self.num_classes = num_classes
        self._callback_smooths = False
        self._warned_double_smoothing = False

    # ------------------------------------------------------------------ label smoothing
    @property
    def label_smoothing(self) -> float:
        """ε of the training loss's label smoothing, in ``[0, 1]`` (see the class docstring)."""
        return self._label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        self._label_smoothing = C.number("label_smoothing", value, 0.0, 1.0)

    @property
    def train_label_smoothing(self) -> float:
        """ε the training loss actually uses: 0 when a ``MixupCallback`` already smooths targets."""
        return 0.0 if self._callback_smooths else self.label_smoothing

    def _settle_label_smoothing(self) -> None:
        """At fit: the callback's smoothing wins over the module's; warn once when both are set."""
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
        smoothing = [cb.label_smoothing for cb in callbacks if isinstance(cb, MixupCallback)]
        self._callback_smooths = any(eps > 0 for eps in smoothing)
        if (
            self._callback_smooths
            and self.label_smoothing > 0
            and not self._warned_double_smoothing
        ):
            self._warned_double_smoothing = True
            rank_zero_warn(
                f"Label smoothing is set twice: {type(self).__name__}(label_smoothing="
                f"{self.label_smoothing:g}) and MixupCallback(label_smoothing={max(smoothing):g}). "
                "The callback's smoothing applies and the module's is ignored for training, so targets "
                "are smoothed once; set one of them to 0 to silence this warning."
            )

    # ------------------------------------------------------------------ shared hooks
    def setup(self, stage: str) -> None:
        """Check ``num_classes`` against the datamodule and the backbone; settle smoothing at fit."""
        super().setup(stage)
        width = self._output_width()
        if width is not None and width[0] != self.num_classes:
            raise ValueError(
                f"The backbone's last layer outputs {width[0]} {width[1]} but "
                f"`num_classes` = {self.num_classes}; build the backbone with "
                f"num_classes={self.num_classes}."
            )
        if stage == "fit":
            self._settle_label_smoothing()

    def _output_width(self) -> tuple[int, str] | None:
        """``(width, what it counts)`` of the backbone's last layer when known before any data."""
        return None

    # ------------------------------------------------------------------ subclass parts
    #: The ``val/`` and ``test/`` metrics by name, logged as ``<stage>/<name>``.
    val_metrics: MetricCollection
    test_metrics: MetricCollection

    def _logits(self, x: Tensor) -> Tensor:
        """The backbone's float32 logits for ``x``, their shape checked against ``num_classes``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_logits()`.")

    def _eval_step(self, batch: Any, stage: str, metrics: MetricCollection) -> None:
        """Update ``metrics`` with ``batch`` and log them under ``stage``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_eval_step()`.")

    def _log_train_loss(self, loss: Tensor, batch_size: int) -> None:
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch_size,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the backbone's logits for inputs ``x``."""
        return self.backbone(x)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Update the ``val/`` metrics (the NLL unsmoothed)."""
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Update the ``test/`` metrics (the NLL unsmoothed)."""
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Return float32 probabilities (classes in dimension 1) for ``x``, ``[x]`` or ``[x, y]``."""
        if isinstance(batch, (list, tuple)) and len(batch) == 1:
            batch = batch[0]
        x = batch if isinstance(batch, Tensor) else self._unpack(batch)[0]
        return self._logits(x).softmax(dim=1)


class SoftLabelClassifier(_SoftLabelModule):
    """Classifier trained with one loss, ``F.cross_entropy``, on index or probability targets.

    Targets may be ``(B,)`` integer class indices or ``(B, num_classes)`` float probability rows,
    such as the mixed targets ``MixupCallback`` writes into training batches (mixup, Zhang et al.,
    ICLR 2018; CutMix, Yun et al., ICCV 2019). Both go through the same ``F.cross_entropy`` call,
    so a one-hot row gives exactly the loss of its index. Logits are cast to float32 first.

    Label smoothing is applied exactly once. ``label_smoothing`` smooths the training loss, unless
    the Trainer has a ``MixupCallback`` with ``label_smoothing > 0``: the callback has then already
    smoothed the targets, so the module's value is ignored for training (with one warning when
    both are set). Validation and test losses are never smoothed: ``val/nll`` and ``test/nll`` are
    the true negative log-likelihood.

    Logged once per epoch: ``train/loss``; ``train/acc_dominant``, the accuracy of
    ``argmax(logits)`` against the dominant label ``argmax(target)`` (the label itself for index
    targets; the first one on ties); and ``val/acc``, ``val/nll``, ``val/ece`` (15-bin L1 expected
    calibration error), the same under ``test/``. Batches are ``[x, y]`` lists or ``(x, y)`` tuples.

    Args:
        backbone: Network mapping inputs to ``(B, num_classes)`` logits (see
            ``lightning_mixup.classification.models``).
        num_classes: Number of classes ``K``; also read by ``MixupCallback`` when it is not given one.
        optimizer: Callable that builds the optimizer from the parameters (LightningCLI's
            dependency-injection convention); defaults to :func:`default_optimizer`.
        lr_scheduler: Callable that builds a scheduler from the optimizer, stepped once per epoch
            (a ``ReduceLROnPlateau`` monitors ``val/nll``); None keeps the learning rate constant.
            The default, :func:`cosine_annealing`, decays over ``trainer.max_epochs``.
        label_smoothing: ε in ``[0, 1]`` for the training loss: the target becomes
            ``(1 - ε)·y + ε/K``.

    Raises:
        ValueError: If ``num_classes`` or ``label_smoothing`` is out of range; at ``setup``, if the
            datamodule's ``num_classes`` differs; during a step, if the backbone's output width or
            the targets' width is not ``num_classes``.
        TypeError: If ``backbone`` is not an ``nn.Module`` or a callable argument is not callable.

    Example:
        >>> from lightning_mixup.classification.models import SmallCNN
        >>> model = SoftLabelClassifier(SmallCNN(num_classes=10), num_classes=10)
        >>> trainer = pl.Trainer(max_epochs=30, callbacks=[MixupCallback(alpha=0.2)],
        ...                      logger=False, enable_checkpointing=False)
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = cosine_annealing,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(backbone, num_classes, optimizer, lr_scheduler, label_smoothing)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])

        self.train_acc_dominant = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_metrics = self._eval_metrics(self.num_classes)
        self.test_metrics = self._eval_metrics(self.num_classes)

    @staticmethod
    def _eval_metrics(num_classes: int) -> MetricCollection:
        # A plain container (no compute groups): each metric is updated and logged on its own.
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "nll": MeanMetric(),
                "ece": MulticlassCalibrationError(num_classes, n_bins=_ECE_BINS, norm="l1"),
            },
            compute_groups=False,
        )

    # ------------------------------------------------------------------ Lightning hooks
    def _output_width(self) -> tuple[int, str] | None:
        width = _last_width(self.backbone, nn.Linear, "out_features", self.num_classes)
        return None if width is None else (width, "values per sample")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy on index or (mixed) probability targets, with the training smoothing."""
        x, target = self._unpack(batch)
        logits = self._logits(x)
        loss = self.loss(logits, target, label_smoothing=self.train_label_smoothing)
        self.train_acc_dominant.update(logits.detach(), self._dominant(target))
        self._log_train_loss(loss, x.shape[0])
        self.log("train/acc_dominant", self.train_acc_dominant, on_step=False, on_epoch=True)
        return loss

    # ------------------------------------------------------------------ the loss
    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        label_smoothing: float = 0.0,
        reduction: Literal["mean", "none"] = "mean",
    ) -> Tensor:
        """Cross-entropy of ``logits`` against index or probability targets, in float32.

        Args:
            logits: ``(B, num_classes)`` logits of any floating dtype.
            target: ``(B,)`` integer class indices or ``(B, num_classes)`` float probability rows.
            label_smoothing: ε in ``[0, 1]``; the target becomes ``(1 - ε)·y + ε/K`` for both kinds.
            reduction: ``"mean"`` over the batch, or ``"none"`` for one value per sample.

        Returns:
            The loss: a scalar, or a ``(B,)`` tensor with ``reduction="none"``.

        Raises:
            ValueError: If the targets' shape does not match the logits or ``num_classes``.
            TypeError: If 1-D targets are not integers or 2-D targets not floating point.
        """
        return F.cross_entropy(
            logits.float(),
            self._check_target(target, logits.shape[0]),
            label_smoothing=label_smoothing,
            reduction=reduction,
        )

    # ------------------------------------------------------------------ helpers
    def _eval_step(self, batch: Any, stage: str, metrics: MetricCollection) -> None:
        x, target = self._unpack(batch)
        logits = self._logits(x)
        nll = self.loss(logits, target, reduction="none")
        probs = logits.softmax(dim=1)
        labels = self._dominant(target)
        metrics["acc"].update(probs, labels)
        metrics["nll"].update(nll)
        metrics["ece"].update(probs, labels)
        for name, metric in metrics.items():
            self.log(
                f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc"
            )

    def _logits(self, x: Tensor) -> Tensor:
        logits = self(x)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The backbone returned logits of shape {tuple(logits.shape)}, but the module has "
                f"`num_classes` = {self.num_classes} and expects (batch, {self.num_classes}); build the "
                f"backbone with num_classes={self.num_classes}."
            )
        return logits.float()

    def _check_target(self, target: Tensor, batch_size: int) -> Tensor:
        if target.ndim == 1:
            if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
                raise TypeError(
                    f"1-D targets must be integer class indices, got dtype {target.dtype}; pass "
                    "probabilities as a (batch, num_classes) tensor instead."
                )
            target = target.long()
        elif target.ndim == 2:
            if not target.is_floating_point():
                raise TypeError(
                    f"2-D targets must be floating point probability rows, got dtype {target.dtype}."
                )
            if target.shape[1] != self.num_classes:
                raise ValueError(
                    f"2-D targets must have `num_classes` = {self.num_classes} columns, got shape "
                    f"{tuple(target.shape)}."
                )
            target = target.float()
        else:
            raise ValueError(
                "Targets must be (batch,) class indices or (batch, num_classes) probabilities, got "
                f"shape {tuple(target.shape)}."
            )
        if target.shape[0] != batch_size:
            raise ValueError(
                f"The targets hold {target.shape[0]} samples but the logits {batch_size}."
            )
        return target

    @staticmethod
    def _dominant(target: Tensor) -> Tensor:
        return target.argmax(dim=1) if target.ndim == 2 else target
