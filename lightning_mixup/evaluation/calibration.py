"""Temperature scaling (Guo et al., ICML 2017): one scalar T, fitted on the validation logits.

Dividing the logits by T > 0 changes no prediction (``argmax`` is the same for every T) and no
weight; it only makes the confidences honest: T > 1 softens an over-confident model, T < 1
sharpens an under-confident one. :func:`fit_temperature` is the pure function;
:class:`TemperatureScaling` the callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchmetrics.functional.classification import multiclass_calibration_error
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_mixup import _checks as C
from lightning_mixup._targets import _find_attribute

__all__ = ["TemperatureScaling", "fit_temperature"]

_ECE_BINS = 15
# T is kept in [1/100, 100]: when every validation sample is right the NLL keeps falling as
# T → 0 (and as T → ∞ when every one is wrong), and an unbounded search would reach 0 or ∞.
_MAX_LOG_T = math.log(100.0)
_MIN_T, _MAX_T = 0.01, 100.0


# ---------------------------------------------------------------------------- the pure function
def _rows(logits: Any, target: Any, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Check logits and targets; return the labelled rows (one per pixel for dense inputs).

    Returns ``(n, K)`` logits and ``(n,)`` int64 class indices or ``(n, K)`` probability rows.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(
            f"`logits` must be a floating-point (N, K) or (N, K, *spatial) tensor, got {got}."
        )
    shape = tuple(logits.shape)
    if logits.ndim < 2:
        raise ValueError(
            f"`logits` must have shape (N, K) or (N, K, *spatial), classes in dimension 1, got "
            f"{shape}."
        )
    if logits.numel() == 0:
        raise ValueError(f"`logits` must not be empty, got shape {shape}.")
    if not isinstance(target, Tensor) or target.dtype == torch.bool or target.is_complex():
        got = f"dtype {target.dtype}" if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(
            f"`target` must be an integer tensor of class indices or a floating-point tensor of "
            f"probability rows, got {got}."
        )
    k = logits.shape[1]
    index_shape = (logits.shape[0], *logits.shape[2:])
    flat_logits = logits.detach().movedim(1, -1).reshape(-1, k)
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"`target` holds probability rows, so it must have the logits' shape "
                f"{shape} (classes in dimension 1), got {tuple(target.shape)}."
            )
        flat_target = target.detach().movedim(1, -1).reshape(-1, k)
        labelled = flat_target.sum(dim=1) > 0
    else:
        if target.shape != index_shape:
            raise ValueError(
                f"`target` holds class indices, so it must have shape (N, *spatial) = "
                f"{index_shape} for logits of shape {shape}, got {tuple(target.shape)}."
            )
        flat_target = target.detach().reshape(-1).long()
        labelled = flat_target != C.TORCH_IGNORE_INDEX
        if ignore_index is not None:
            labelled &= flat_target != ignore_index
        bad = labelled & ((flat_target < 0) | (flat_target >= k))
        if bool(bad.any()):
            value = int(flat_target[bad][0])
            raise ValueError(
                f"`target` holds the class index {value}, outside [0, {k}) for {k} classes; pass "
                "`ignore_index` if it marks unlabelled samples."
            )
    return flat_logits[labelled], flat_target[labelled]


def _fit(logits: Tensor, target: Tensor, max_iter: int) -> float:
    """LBFGS on log T from T = 1, on float64 CPU rows; T kept in [1/100, 100]."""
    with torch.inference_mode(False), torch.enable_grad():
        # Copies made outside inference mode, so that autograd may save them for backward.
        logits = logits.detach().to("cpu", torch.float64).clone()
        target = target.detach().cpu().clone()
        if target.is_floating_point():
            target = target.to(torch.float64)
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            # Outside the bounds the clamp's gradient is 0, so LBFGS stops at the bound, which
            # is the constrained optimum: the NLL is convex in 1/T.
            loss = F.cross_entropy(logits / log_t.clamp(-_MAX_LOG_T, _MAX_LOG_T).exp(), target)
            loss.backward()
            return loss

        optimizer.step(closure)
        temperature = float(log_t.detach().clamp(-_MAX_LOG_T, _MAX_LOG_T).exp())
        return min(max(temperature, _MIN_T), _MAX_T)


def fit_temperature(
    logits: Tensor, target: Tensor, ignore_index: int | None = None, max_iter: int = 50
) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    ``log T`` is optimised with ``torch.optim.LBFGS`` (strong-Wolfe line search, at most
    ``max_iter`` iterations) from T = 1, in float64 on the CPU, so the result is deterministic.
    T is kept in ``[0.01, 100]``: when every sample is classified right the NLL keeps falling as
    T → 0, and the bound stops it there. Dense ``(N, K, H, W)`` logits are ``N·H·W`` rows.
    Unlabelled rows are left out: index targets equal to ``ignore_index`` or to PyTorch's ``-100``,
    and probability rows that are all zeros.

    Args:
        logits: ``(N, K)`` or ``(N, K, *spatial)`` logits, classes in dimension 1, any float dtype
            and device.
        target: ``(N,)``/``(N, *spatial)`` integer class indices, or probability rows of the
            logits' shape (classes in dimension 1).
        ignore_index: Index-target value of unlabelled samples (besides ``-100``); None: none.
        max_iter: Most LBFGS iterations.

    Returns:
        T, a Python float.

    Raises:
        ValueError: If the logits are empty, not finite, or do not fit the targets' shape, a class
            index is outside ``[0, K)``, no sample is labelled, or ``max_iter`` < 1.
        TypeError: If the logits are not floating point or the targets neither integer nor float.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(20000, 5, generator=g) * 2
        >>> y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
        >>> round(fit_temperature(z * 3, y), 1)  # logits 3 times too sharp
        3.0
    """
    ignore_index = C.optional_integer("ignore_index", ignore_index)
    max_iter = C.positive_integer("max_iter", max_iter)
    rows, target_rows = _rows(logits, target, ignore_index)
    if rows.shape[0] == 0:
        raise ValueError(
            "`target` labels no sample: every index equals `ignore_index`/-100 or every "
            "probability row is all zeros."
        )
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("`logits` must be finite, got NaN or infinite values.")
    return _fit(rows, target_rows, max_iter)


def _scaled_metrics(logits: Tensor, target: Tensor, temperature: float) -> tuple[float, float]:
    """NLL (float64) and 15-bin L1 ECE (torchmetrics, float32 probabilities) at ``temperature``."""
    logits = logits.to(torch.float64)
    soft = target.is_floating_point()
    nll = float(F.cross_entropy(logits / temperature, target.to(torch.float64) if soft else target))
    probs = (logits / temperature).softmax(dim=1).float()
    labels = target.argmax(dim=1) if soft else target
    ece = multiclass_calibration_error(
        probs, labels, logits.shape[1], n_bins=_ECE_BINS, norm="l1", validate_args=False
    )
    return nll, float(ece)


# ---------------------------------------------------------------------------- forward hooks
class _ForwardTap:
    """Calls ``on_output`` with a module's floating-point outputs of 2+ dimensions.

    What it returns (None: nothing) replaces the output. A call that wraps another call of the
    same module is skipped: under DDP, Lightning's "forward redirection" calls the module around
    ``validation_step``/``test_step``, and only the step's own ``self(x)`` holds the logits.
    """

    def __init__(self, on_output: Callable[[Tensor], Tensor | None], prepend: bool = False):
        self._on_output = on_output
        self._prepend = prepend
        self._stack: list[bool] = []  # per open call: whether a nested call happened in it
        self._redirected: list[bool] = []  # per open call: whether it is a forward redirection
        self._handles: list[RemovableHandle] = []
        self.other: str | None = None  # what the last forward returned instead of logits

    def attach(self, module: nn.Module) -> None:
        self.detach()
        self._handles = [
            module.register_forward_pre_hook(self._pre, prepend=self._prepend),
            module.register_forward_hook(self._post, prepend=self._prepend, always_call=True),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack, self._redirected = [], []

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._stack:
            self._stack[-1] = True
        self._stack.append(False)
        # Lightning redirects a step by patching the instance's forward with a plain function.
        forward = getattr(module.forward, "__func__", None)
        self._redirected.append(forward is not type(module).forward)

    def _post(self, module: nn.Module, args: Any, output: Any) -> Tensor | None:
        wrapper = self._stack.pop() if self._stack else False
        redirected = self._redirected.pop() if self._redirected else False
        if wrapper:
            return None
        if not isinstance(output, Tensor) or not output.is_floating_point() or output.ndim < 2:
            if not redirected:  # the output of the step, not of forward
                self.other = (
                    f"a {output.dtype} tensor of shape {tuple(output.shape)}"
                    if isinstance(output, Tensor)
                    else type(output).__name__
                )
            return None
        return self._on_output(output)

    def why_missed(self, step: str) -> str:
        """Why ``step`` gave no logits: what the module's forward returned, or that it was not called."""
        if self.other is not None:
            return (
                f"the module's forward returned {self.other}, not logits (a floating-point (B, K) "
                "or (B, K, *spatial) tensor)"
            )
        return f"{step} never called the module's forward, `self(x)`"

    def __getstate__(self) -> dict[str, Any]:  # hook handles do not travel to spawned processes
        return {**self.__dict__, "_handles": [], "_stack": [], "_redirected": []}


class _FirstOutput(pl.Callback):
    """Keeps in ``_first`` what its forward hook takes of a batch's first call; cleared per batch."""

    _first: Tensor | None = None

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Forget any forward output seen before this batch's step."""
        self._first = None

    on_test_batch_start = on_validation_batch_start


def _gather_rows(trainer: pl.Trainer, device: torch.device, rows: Tensor) -> Tensor:
    """All processes' ``(n_r, *rest)`` rows in rank order, on the CPU (``n_r`` may differ)."""
    if trainer.world_size == 1:
        return rows.cpu()
    return torch.cat([part.cpu() for part in gather_all_tensors(rows.to(device))])


def _batch_item(batch: Any, key: int | str, what: str, owner: str, arg: str) -> Tensor:
    try:
        value = batch[key]
    except (KeyError, IndexError, TypeError) as err:
        raise TypeError(
            f"{owner} reads the {what} at `batch[{key!r}]`, which this {type(batch).__name__} "
            f"batch does not have; set `{arg}`."
        ) from err
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{owner} needs the {what} at `batch[{key!r}]` to be a tensor, got "
            f"{type(value).__name__}; set `{arg}`."
        )
    return value


# ---------------------------------------------------------------------------- the callback
class TemperatureScaling(_FirstOutput):
    """Fit one temperature T on every validation epoch; divide test and predict logits by it.

    Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the
    logits are divided by the T that minimises the validation NLL (see :func:`fit_temperature`).
    The model's weights are never touched: no parameter is added, ``requires_grad`` is left alone.

    **The documented hook.** The module's ``forward`` must return logits with the classes in
    dimension 1, ``(B, K)`` or dense ``(B, K, *spatial)``
    (:class:`~lightning_mixup.SoftLabelClassifier`, :class:`~lightning_mixup.SoftLabelSegmenter`),
    and its evaluation steps must call it (``self(x)``). A forward hook on the module pairs the
    first forward call of each validation batch with ``batch[target_key]`` (``(B,)``/
    ``(B, *spatial)`` class indices or probability rows of the logits' shape; list, tuple or dict
    batches). Unlabelled samples are left out: ``ignore_index`` (read as
    :class:`~lightning_mixup.MixupCallback` reads it: from ``pl_module``, its ``hparams`` or
    ``trainer.datamodule``), PyTorch's ``-100``, all-zero probability rows.

    **When T is fitted.** At the end of every validation epoch (``fit``'s validation loop and
    ``trainer.validate``; never the sanity check), over all validation dataloaders. Under DDP the
    rows are all-gathered, T is fitted on rank 0 and broadcast, so every process holds the same T.
    The validation logits are kept in CPU memory until the epoch ends (one row per labelled pixel
    for segmentation: use ``limit_val_batches`` to subsample a large dense validation set).

    **When T applies.** Only during ``test`` and ``predict``: the hook returns ``forward(x) / T``,
    so ``test_step``, ``predict_step`` and every other callback that calls the module in those
    loops (e.g. :class:`~lightning_mixup.evaluation.OODEval`, ``AdversarialEval``) see scaled
    logits. Training and validation see raw logits (the module's own ``val/*`` metrics too).

    Logged at the end of every validation epoch (the same value on every process):

    - ``val/temperature``: T;
    - ``val/nll_raw``, ``val/ece_raw``: NLL and 15-bin L1 ECE of the raw logits on the rows T was
      fitted on (for ``SoftLabelClassifier`` they equal its ``val/nll`` and ``val/ece``);
    - ``val/nll_ts``, ``val/ece_ts``: the same after dividing by T.

    The ECE is torchmetrics' ``multiclass_calibration_error(n_bins=15, norm="l1")`` on the
    probabilities against the labels (``argmax`` of probability rows).

    **Checkpoints.** T is the callback's state (``state_dict``: ``temperature`` and ``fitted``),
    refitted before ``ModelCheckpoint`` saves, so each checkpoint holds the T of its own weights,
    and ``trainer.test(ckpt_path=...)`` or a resumed fit restores it (not with
    ``save_weights_only=True``). Under ``ddp_spawn`` the parent process's callback keeps its old T,
    as every callback state does; the checkpoints and the logged ``val/temperature`` carry the
    fitted one.

    Until a validation epoch has run (or a checkpoint restored T), T = 1: one warning says so
    when a fit ends without a validation epoch, or the validation set gives no labelled row.
    When the fitted T lands on a bound of ``[0.01, 100]`` (typically every validation sample is
    classified right), the split does not identify T: that epoch keeps T = 1, with one warning.

    Args:
        target_key: Index (list/tuple batch) or key (dict batch) of the targets.
        max_iter: Most LBFGS iterations of each fit.

    Raises:
        ValueError: If an argument is out of range; during validation, if the forward output and
            the targets do not fit (the message shows the shapes).
        TypeError: During validation, if the batch has no tensor at ``target_key``.

    Example::

        scaling = TemperatureScaling()
        trainer = pl.Trainer(max_epochs=5, callbacks=[scaling])
        trainer.fit(model, datamodule=dm)  # logs val/temperature, val/nll_ts, val/ece_ts
        trainer.test(model, datamodule=dm, ckpt_path="best")  # scaled by the best weights' T

    From YAML::

        trainer:
          callbacks:
            - class_path: lightning_mixup.evaluation.TemperatureScaling
    """

    def __init__(self, target_key: int | str = 1, max_iter: int = 50) -> None:
        self.target_key = C.key("target_key", target_key)
        self.max_iter = C.positive_integer("max_iter", max_iter)
        #: The temperature: 1.0 until fitted or restored from a checkpoint.
        self.temperature: float = 1.0
        #: Whether :attr:`temperature` was fitted (here or in the run a checkpoint came from).
        self.fitted: bool = False
        self._trainer: pl.Trainer | None = None
        self._tap = _ForwardTap(self._on_forward, prepend=True)
        self._logits: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._missed = 0
        self._warned = self._warned_bound = False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"temperature": T, "fitted": bool}``."""
        return {"temperature": self.temperature, "fitted": self.fitted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore T (and whether it was fitted) from a checkpoint."""
        temperature = state_dict.get("temperature", 1.0)
        self.temperature = C.number("temperature", temperature, 0.0, open_low=True)
        self.fitted = bool(state_dict.get("fitted", True))

    # ------------------------------------------------------------------ hook placement
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Place the forward hook on the module (first among its hooks)."""
        self._trainer = trainer
        self._tap.attach(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the forward hook and drop the cached logits."""
        self._tap.detach()
        self._trainer = None
        self._reset()

    def _on_forward(self, output: Tensor) -> Tensor | None:
        trainer = self._trainer
        if trainer is None:
            return None
        if trainer.validating:  # fit's validation loop or trainer.validate; not sanity checking
            if self._first is None:
                self._first = output.detach()
            return None
        if (trainer.testing or trainer.predicting) and self.temperature != 1.0:
            return output / self.temperature
        return None

    # ------------------------------------------------------------------ validation
    def _reset(self) -> None:
        self._first = None
        self._logits, self._targets, self._missed = [], [], 0
        self._tap.other = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting this epoch's logits."""
        self._reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Pair the batch's first forward output with its targets; keep the labelled rows."""
        if trainer.sanity_checking:
            return
        logits, self._first = self._first, None
        if logits is None:
            self._missed += 1
            return
        target = _batch_item(batch, self.target_key, "targets", "TemperatureScaling", "target_key")
        ignore_index = _find_attribute(trainer, pl_module, "ignore_index", low=None)
        try:
            rows, target_rows = _rows(logits, target, ignore_index)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"TemperatureScaling pairs the module's forward output (shape "
                f"{tuple(logits.shape)}, classes in dimension 1) with the targets at "
                f"`batch[{self.target_key!r}]` (shape {tuple(target.shape)}, dtype "
                f"{target.dtype}), but they do not fit: {err} (TemperatureScaling reads "
                "`ignore_index` from the module, its hparams or the datamodule.)"
            ) from err
        if target_rows.is_floating_point():
            target_rows = target_rows.float()
        self._logits.append(rows.float().cpu())
        self._targets.append(target_rows.cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the rows from every process, fit T (rank 0, broadcast) and log it."""
        if trainer.sanity_checking:
            self._reset()
            return
        logits, target = self._gathered(trainer, pl_module)
        hint = f" ({self._tap.why_missed('validation_step')})" if self._missed else ""
        self._reset()
        if logits.shape[0] == 0:
            self._warn(f"the validation set gave no labelled sample{hint}.")
            return
        stats: list[float] = []  # filled on rank 0, then broadcast to every process
        if trainer.is_global_zero:
            temperature = _fit(logits, target, self.max_iter)
            at_bound = not _MIN_T * 1.001 < temperature < _MAX_T / 1.001
            temperature = 1.0 if at_bound else temperature
            stats = [temperature, *_scaled_metrics(logits, target, 1.0)]
            stats += [*_scaled_metrics(logits, target, temperature), float(at_bound)]
        stats = trainer.strategy.broadcast(stats, src=0)
        self.temperature, self.fitted = float(stats[0]), True
        if stats[-1] and not self._warned_bound:
            self._warned_bound = True
            rank_zero_warn(
                "TemperatureScaling: the validation NLL has no minimum at a finite temperature "
                "(typically every validation sample is classified right, and the NLL keeps "
                "falling as T -> 0): the split does not identify T, so T = 1 (no scaling) is kept "
                "for such epochs. A larger or harder validation split fixes this."
            )
        names = ("temperature", "nll_raw", "ece_raw", "nll_ts", "ece_ts")
        for name, value in zip(names, stats):  # not the last entry, the bound flag
            pl_module.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True)

    def _gathered(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[Tensor, Tensor]:
        """This epoch's rows from every process: ``(n, K)`` logits and index or probability rows."""
        widths = sorted({t.shape[1] for t in self._logits})
        if len(widths) > 1:
            raise ValueError(
                "TemperatureScaling: the module's forward output changed its number of "
                f"classes (dimension 1) between validation batches: {widths}."
            )
        k = widths[0] if widths else 0
        logits = torch.cat(self._logits) if self._logits else torch.empty(0, 0)
        soft = any(t.is_floating_point() for t in self._targets)
        targets = [_as_probabilities(t, k) if soft else t for t in self._targets]
        target = torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
        if trainer.world_size > 1:
            device = pl_module.device
            info = torch.tensor([logits.shape[0], k, int(soft)], device=device)
            every = trainer.strategy.all_gather(info).reshape(-1, 3).cpu()
            ks = {int(row[1]) for row in every if row[0] > 0}
            if len(ks) > 1:
                raise ValueError(
                    "TemperatureScaling: the processes' forward outputs have different numbers of "
                    f"classes (dimension 1): {sorted(ks)}."
                )
            if not ks:  # no process holds a labelled row (the caller warns, T stays)
                return logits.new_empty(0, 0), target
            k = ks.pop()
            soft = bool(every[:, 2].any())
            logits = logits.reshape(-1, k)
            target = _as_probabilities(target, k) if soft else target
            logits = _gather_rows(trainer, device, logits)
            target = _gather_rows(trainer, device, target)
        return logits, target

    # ------------------------------------------------------------------ T = 1 warnings
    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            rank_zero_warn(f"TemperatureScaling: {why} T stays {self.temperature:g}.")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn once when the fit ran no validation epoch and no T was ever fitted."""
        if not self.fitted:
            self._warn(
                "the fit ran no validation epoch (no val_dataloader, limit_val_batches=0 or "
                "check_val_every_n_epoch > max_epochs), so no temperature was fitted."
            )

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn once when testing or predicting with a T that was never fitted."""
        if not self.fitted:
            self._warn(
                f"{'predict' if trainer.predicting else 'test'} runs with no fitted temperature "
                "(no validation epoch ran and no checkpoint restored one; pass `ckpt_path` to use "
                "a fitted T), so logits are not scaled."
            )

    on_predict_start = on_test_start


def _as_probabilities(target: Tensor, k: int) -> Tensor:
    """Index rows as one-hot float32 rows (probability rows pass through)."""
    if target.is_floating_point():
        return target.reshape(-1, k)
    return F.one_hot(target, k).float() if k > 0 else torch.empty(target.shape[0], 0)
