"""Out-of-distribution detection by maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

In-distribution inputs should get a higher top-1 softmax probability than inputs from elsewhere;
mixup is known to lower the confidence on everything, so this is one of the things it changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc

from lightning_mixup import _checks as C
from lightning_mixup.evaluation.calibration import (
    _batch_item,
    _FirstOutput,
    _ForwardTap,
    _gather_rows,
)

__all__ = ["OODEval", "max_softmax", "ood_auroc"]


def max_softmax(logits: Tensor) -> Tensor:
    """Maximum softmax probability of each sample: its confidence, in float32.

    Args:
        logits: ``(N, K)`` logits, or dense ``(N, K, *spatial)`` logits, classes in dimension 1.
            For dense logits the score of a sample is the mean over its pixels of the per-pixel
            maximum softmax probability.

    Returns:
        ``(N,)`` confidences in ``[1/K, 1]``, on the logits' device.

    Raises:
        TypeError: If ``logits`` is not a floating-point tensor.
        ValueError: If it has fewer than 2 dimensions or no class.

    Example:
        >>> max_softmax(torch.tensor([[0.0, 0.0], [10.0, 0.0]])).round(decimals=3)
        tensor([0.5000, 1.0000])
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"`logits` must be a floating-point (N, K) tensor, got {got}.")
    if logits.ndim < 2 or logits.shape[1] == 0:
        raise ValueError(
            f"`logits` must have shape (N, K) or (N, K, *spatial) with K >= 1, got "
            f"{tuple(logits.shape)}."
        )
    confidence = logits.detach().float().softmax(dim=1).amax(dim=1)
    return confidence.flatten(1).mean(dim=1) if confidence.ndim > 1 else confidence


def _scores(name: str, value: Any) -> Tensor:
    try:
        scores = torch.as_tensor(value).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"`{name}` must be a 1-D tensor of scores, got {type(value).__name__}."
        ) from err
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}."
        )
    if scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(f"`{name}` must hold real numbers, got dtype {scores.dtype}.")
    scores = scores.double()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"`{name}` must be finite, got NaN or infinite values.")
    return scores


def ood_auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """AUROC of a confidence score separating in-distribution (positive) from OOD samples.

    The probability that a random in-distribution sample scores higher than a random OOD sample,
    ties counting one half: 1.0 is perfect separation, 0.5 chance, 0.0 perfectly reversed
    (torchmetrics' exact ``binary_auroc``). Any real score where higher means "more
    in-distribution" works, e.g. :func:`max_softmax` confidences.

    Args:
        in_scores: ``(N,)`` scores of in-distribution samples (e.g. the test split).
        out_scores: ``(M,)`` scores of OOD samples.

    Returns:
        The AUROC, a Python float in ``[0, 1]``.

    Raises:
        ValueError: If either input is empty, not 1-D, or not finite.
        TypeError: If an input does not hold real numbers.

    Example:
        >>> ood_auroc(torch.tensor([0.9, 0.4]), torch.tensor([0.5, 0.1]))  # 3 of 4 pairs right
        0.75
    """
    positive, negative = _scores("in_scores", in_scores), _scores("out_scores", out_scores)
    preds = torch.cat([positive, negative])
    target = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).long()
    return float(binary_auroc(preds, target, thresholds=None, validate_args=False))


class OODEval(_FirstOutput):
    """At the end of ``test``, the max-softmax AUROC of the test split against each OOD set.

    Each sample's score is its :func:`max_softmax` confidence, and :func:`ood_auroc` measures how
    well it separates the test split (positives) from an OOD set (negatives). Logged per set, at
    the end of the test epoch: ``test/ood_auroc/<name>``; the values are also kept in
    :attr:`results`.

    **Where the scores come from.** The test split's confidences are read from the module's own
    forward calls during ``test_step`` (a forward hook; the first call of each test batch), so the
    test loop is not run twice; the module's ``forward`` must return logits with classes in
    dimension 1 and ``test_step`` must call it (``self(x)``). Then each OOD loader is run through
    the same forward, in eval mode, without gradients, within the precision plugin's test context,
    its batches through ``precision_plugin.convert_input`` and ``strategy.batch_to_device`` (so
    ``transfer_batch_to_device``/``on_after_batch_transfer`` apply, as in the test loop); the
    inputs are ``batch[input_key]`` (or the batch itself when it is a tensor). A
    :class:`~lightning_mixup.evaluation.TemperatureScaling` callback scales both.

    Under DDP each process scores every ``world_size``-th OOD batch, and the scores of both kinds
    are all-gathered before the AUROC, so every process logs the same value. An OOD set with no
    sample is skipped with a warning.

    Args:
        ood_loaders: OOD sets by name (the name goes into the metric key). None reads
            ``trainer.datamodule.ood_dataloaders()`` at the end of the test epoch (e.g.
            :meth:`~lightning_mixup.DigitsDataModule.ood_dataloaders`).
        input_key: Index (list/tuple batch) or key (dict batch) of the inputs in OOD batches.

    Raises:
        ValueError: If ``ood_loaders`` is empty or has a name that is not a non-empty string
            without ``/``; at ``setup`` for ``test``, when ``ood_loaders`` is None and the
            datamodule has no ``ood_dataloaders()``.
        TypeError: If ``ood_loaders`` is not a mapping, or a forward output is not a tensor.

    Example::

        dm = DigitsDataModule(classes=[0, 1, 2, 3, 4])  # digits 5-9 are unseen
        trainer = pl.Trainer(callbacks=[TemperatureScaling(), OODEval()])
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm)  # test/ood_auroc/unseen_classes, test/ood_auroc/noise
    """

    def __init__(
        self,
        ood_loaders: Mapping[str, DataLoader] | None = None,
        input_key: int | str = 0,
    ) -> None:
        if ood_loaders is not None:
            if not isinstance(ood_loaders, Mapping):
                raise TypeError(
                    "`ood_loaders` must be a mapping {name: DataLoader} or None, got "
                    f"{type(ood_loaders).__name__}."
                )
            if not ood_loaders:
                raise ValueError("`ood_loaders` must name at least one OOD set, got {}.")
            for name in ood_loaders:
                _check_name(name, "ood_loaders")
            ood_loaders = dict(ood_loaders)
        self.ood_loaders = ood_loaders
        self.input_key = C.key("input_key", input_key)
        #: ``{name: AUROC}`` of the last ``test``.
        self.results: dict[str, float] = {}
        self._trainer: pl.Trainer | None = None
        self._tap = _ForwardTap(self._on_forward)
        self._in_scores: list[Tensor] = []
        self._missed = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """For ``test``: check where the OOD sets come from; place the forward hook."""
        if stage != "test":
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
        if self.ood_loaders is None and not callable(getattr(datamodule, "ood_dataloaders", None)):
            got = type(datamodule).__name__ if datamodule is not None else "none"
            raise ValueError(
                "OODEval was given no `ood_loaders` and reads `trainer.datamodule."
                f"ood_dataloaders()`, but the datamodule ({got}) has no such method; pass "
                "`OODEval(ood_loaders={'name': loader})` or test with a datamodule that has it "
                "(e.g. DigitsDataModule)."
            )
        self._trainer = trainer
        self._tap.attach(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the forward hook."""
        self._tap.detach()
        self._trainer = None
        self._first, self._in_scores = None, []

    def _on_forward(self, output: Tensor) -> None:
        trainer = self._trainer
        if trainer is not None and trainer.testing and self._first is None:
            self._first = max_softmax(output)
        return None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the test split's confidences."""
        self._in_scores, self._missed, self.results = [], 0, {}
        self._tap.other = None

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the confidences of the batch's first forward call."""
        scores, self._first = self._first, None
        if scores is None:
            self._missed += 1
        else:
            self._in_scores.append(scores.cpu())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score every OOD set and log ``test/ood_auroc/<name>``."""
        device = pl_module.device
        local = torch.cat(self._in_scores) if self._in_scores else torch.empty(0)
        in_scores = _gather_rows(trainer, device, local)
        self._in_scores = []
        loaders = self._loaders(trainer)
        if in_scores.numel() == 0:
            hint = f" ({self._tap.why_missed('test_step')})" if self._missed else ""
            rank_zero_warn(f"OODEval: the test split gave no confidence{hint}; no AUROC is logged.")
            return
        for name, loader in loaders.items():
            out_scores = _gather_rows(trainer, device, self._score(trainer, pl_module, loader))
            if out_scores.numel() == 0:
                rank_zero_warn(f"OODEval: the OOD set {name!r} is empty; it is skipped.")
                continue
            auroc = ood_auroc(in_scores, out_scores)
            self.results[name] = auroc
            pl_module.log(f"test/ood_auroc/{name}", auroc, on_epoch=True, sync_dist=True)

    def _loaders(self, trainer: pl.Trainer) -> Mapping[str, Iterable[Any]]:
        if self.ood_loaders is not None:
            return self.ood_loaders
        loaders = trainer.datamodule.ood_dataloaders()  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
        if not isinstance(loaders, Mapping) or not loaders:
            raise ValueError(
                "OODEval: `trainer.datamodule.ood_dataloaders()` must return a non-empty mapping "
                f"{{name: DataLoader}}, got {loaders!r}."
            )
        for name in loaders:
            _check_name(name, "ood_dataloaders()")
        return dict(loaders)

    def _score(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Iterable[Any]
    ) -> Tensor:
        """Max-softmax confidences of this process's share of ``loader``'s batches."""
        world, rank = trainer.world_size, trainer.global_rank
        was_training = pl_module.training
        pl_module.eval()
        scores: list[Tensor] = []
        try:
            for i, batch in enumerate(loader):
                if i % world != rank:
                    continue
                batch = trainer.precision_plugin.convert_input(batch)
                batch = trainer.strategy.batch_to_device(batch)
                x = batch if isinstance(batch, Tensor) else _batch_item(
                    batch, self.input_key, "inputs", "OODEval", "input_key"
                )  # fmt: skip
                with torch.no_grad(), trainer.precision_plugin.test_step_context():
                    logits = pl_module(x)
                if not isinstance(logits, Tensor):
                    raise TypeError(
                        "OODEval needs the module's forward to return logits (a tensor, classes "
                        f"in dimension 1), got {type(logits).__name__}."
                    )
                scores.append(max_softmax(logits).cpu())
        finally:
            pl_module.train(was_training)
        return torch.cat(scores) if scores else torch.empty(0)


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"`{where}` names each OOD set with a non-empty string without '/', got {name!r}."
        )
