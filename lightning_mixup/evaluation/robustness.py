"""Adversarial and calibration evaluation: FGSM, PGD and the ``AdversarialEval`` test callback.

**The ε convention.** Datamodules hand the model *normalised* inputs ``(pixel - mean) / std``,
but an attack budget is meant in pixels. When ``mean`` and ``std`` are given (per channel, in
[0, 1] pixel units, as the datamodules expose them), an attack works in pixel space: it
un-normalises the inputs, perturbs the pixels by at most ε per pixel (L∞), clamps them to the
pixel range (``[lower, upper]``, by default ``[0, 1]``) and normalises again. So ε = 8/255 means
8 grey levels of an 8-bit image, whatever the normalisation. Without ``mean``/``std`` the raw
inputs are attacked: ε is in their units and ``lower``/``upper`` (None = no bound) clamp them.

FGSM's step is ``ε·sign(∇ₓ loss)``. Normalisation divides by a positive ``std``, so the sign of
the gradient is the same in pixel and normalised space; what changes is the size of the step
(ε pixels are ε/std normalised units) and where the clamp applies.

The attacks take gradients with respect to the inputs only (parameters' ``.grad`` are left
alone), and they work inside ``torch.no_grad`` and ``torch.inference_mode`` (Lightning's test loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import BinaryCalibrationError
from torchmetrics.utilities.data import dim_zero_cat

from lightning_mixup import _checks as C
from lightning_mixup._seed import torch_generator
from lightning_mixup.evaluation.calibration import _batch_item
from lightning_mixup.evaluation.visual import normalisation_from, reliability_diagram

__all__ = ["AdversarialEval", "fgsm", "pgd"]

Stats = float | Sequence[float] | Tensor | None


# ---------------------------------------------------------------------------- argument checks
def _bounds(lower: Any, upper: Any) -> tuple[float | None, float | None]:
    low, high = C.optional_number("lower", lower), C.optional_number("upper", upper)
    if low is not None and high is not None and low >= high:
        raise ValueError(f"`lower` must be below `upper`, got lower={lower!r}, upper={upper!r}.")
    return low, high


# ---------------------------------------------------------------------------- the attack space
class _Space:
    """Maps model inputs to the space the attack works in (pixels, or the raw inputs) and back."""

    def __init__(
        self, x: Tensor, mean: Stats, std: Stats, lower: float | None, upper: float | None
    ) -> None:
        m, s = C.mean_std(mean, std)  # both None, or both tensors
        self.stats: tuple[Tensor, Tensor] | None = None
        if m is not None and s is not None:
            channels = max(m.numel(), s.numel())
            if channels > 1 and (x.ndim < 2 or x.shape[1] != channels):
                raise ValueError(
                    f"`mean`/`std` have {channels} entries but the inputs have shape "
                    f"{tuple(x.shape)}; they must match the channel dimension (dim 1)."
                )
            view = (1, -1, *([1] * (x.ndim - 2))) if channels > 1 else ()
            m, s = (t.to(x.device, torch.float32).reshape(view) for t in (m, s))
            self.stats = m, s
            lower = 0.0 if lower is None else lower
            upper = 1.0 if upper is None else upper
        self.lower, self.upper = _bounds(lower, upper)

    def to_attack(self, x: Tensor) -> Tensor:
        x = x.detach().float()
        if self.stats is None:
            return x
        mean, std = self.stats
        return x * std + mean

    def to_input(self, p: Tensor) -> Tensor:
        if self.stats is None:
            return p
        mean, std = self.stats
        return (p - mean) / std

    def clamp(self, p: Tensor) -> Tensor:
        if self.lower is None and self.upper is None:
            return p
        return p.clamp(self.lower, self.upper)


def _check_inputs(model: Any, x: Any, y: Any, eps: Any, normalised: bool) -> float:
    if not callable(model):
        raise TypeError(f"`model` must be a callable module, got {type(model).__name__}.")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"`x` must be a floating-point (B, ...) tensor, got {got}.")
    if not isinstance(y, Tensor) or y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"`y` must be ({x.shape[0]},) class indices or ({x.shape[0]}, num_classes) "
            f"probabilities, got {shape}."
        )
    return C.number("eps", eps, 0.0, hint=" (in [0, 1] pixel units)" if normalised else "")


def _usable(t: Tensor) -> Tensor:
    """A tensor autograd accepts: inference-mode tensors (Lightning's test loop) are copied."""
    return t.clone() if t.is_inference() else t


def _input_gradient(
    model: nn.Module | Any, p: Tensor, y: Tensor, space: _Space, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Gradient of the summed cross-entropy w.r.t. float32 ``p``, and the logits."""
    p = p.detach().requires_grad_(True)
    logits = model(space.to_input(p).to(dtype))
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, p)
    return grad, logits.detach()


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    lower: float | None = None,
    upper: float | None = None,
    *,
    mean: Stats = None,
    std: Stats = None,
) -> Tensor:
    """Fast gradient sign method: one L∞ step of size ε up the loss gradient.

    Implements Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples"
    (ICLR 2015): ``x_adv = clamp(x + ε·sign(∇ₓ CE(model(x), y)))``. With ``mean``/``std`` the step
    and the clamp are in pixel space (see the module docstring): ε = 8/255 moves each pixel by 8
    grey levels; the result is normalised again, ready for ``model``.

    Args:
        model: Maps inputs to ``(B, num_classes)`` logits; used as given (call ``eval()`` first).
        x: ``(B, ...)`` floating inputs, normalised with ``mean``/``std`` when they are given.
        y: ``(B,)`` class indices or ``(B, num_classes)`` probabilities.
        eps: Step size ε ≥ 0, in pixel units with ``mean``/``std``, else in input units.
        lower: Lowest value after the step (pixel space: default 0; raw inputs: None = no bound).
        upper: Highest value after the step (pixel space: default 1; raw inputs: None = no bound).
        mean: Per-channel (dim 1) mean, or one number, the inputs were normalised with.
        std: Per-channel std, or one number; must be given with ``mean``.

    Returns:
        The adversarial inputs, detached, in the same space, dtype and device as ``x``.

    Raises:
        ValueError: If ``eps`` is negative, ``y`` does not fit ``x``, ``lower >= upper``, or
            ``mean``/``std`` are incomplete, not positive, or do not match the channels.
        TypeError: If ``x`` is not a floating-point tensor or ``model`` is not callable.

    Example:
        >>> model = nn.Linear(4, 2).eval()
        >>> x_adv = fgsm(model, torch.zeros(3, 4), torch.tensor([0, 1, 0]), eps=0.1)
        >>> (x_adv.abs() - 0.1).abs().max() < 1e-6
        tensor(True)
    """
    eps = _check_inputs(model, x, y, eps, mean is not None)
    # Outside inference mode, so that the mean/std tensors and copies of the inputs can enter
    # autograd even when called from Lightning's test loop.
    with torch.inference_mode(False), torch.enable_grad():
        space = _Space(x, mean, std, lower, upper)
        x, y = _usable(x), _usable(y)
        p = space.to_attack(x)
        grad, _ = _input_gradient(model, p, y, space, x.dtype)
        adv = space.clamp(p + eps * grad.sign())
        return space.to_input(adv).to(x.dtype).detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    lower: float | None = None,
    upper: float | None = None,
    generator: torch.Generator | None = None,
    *,
    mean: Stats = None,
    std: Stats = None,
) -> Tensor:
    """Projected gradient descent (L∞): ``steps`` signed-gradient steps kept in the ε-ball.

    Implements Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks"
    (ICLR 2018). Start: ``x`` plus uniform noise in ``[-ε, ε]`` drawn from ``generator`` (no
    random start when ``generator`` is None). Each step: ``p ← p + step_size·sign(∇ loss)``, then
    projection onto ``[x - ε, x + ε]`` and the clamp to ``[lower, upper]``. Space, units and
    bounds are those of :func:`fgsm`; with one step, ``step_size = ε`` and no random start, PGD
    *is* FGSM.

    Args:
        model: Maps inputs to ``(B, num_classes)`` logits; used as given (call ``eval()`` first).
        x: ``(B, ...)`` floating inputs, normalised with ``mean``/``std`` when they are given.
        y: ``(B,)`` class indices or ``(B, num_classes)`` probabilities.
        eps: Radius ε ≥ 0 of the L∞ ball, in pixel units with ``mean``/``std``.
        steps: Number of gradient steps (≥ 1).
        step_size: Size of each step; None uses ``2.5·ε / steps`` (Madry et al.).
        lower: Lowest value (pixel space: default 0; raw inputs: None = no bound).
        upper: Highest value (pixel space: default 1; raw inputs: None = no bound).
        generator: Source of the random start (never the global RNG); None starts at ``x``.
        mean: Per-channel (dim 1) mean, or one number, the inputs were normalised with.
        std: Per-channel std, or one number; must be given with ``mean``.

    Returns:
        The adversarial inputs, detached, in the same space, dtype and device as ``x``.

    Raises:
        ValueError: As :func:`fgsm`; also if ``steps`` < 1 or ``step_size`` is not positive.
        TypeError: As :func:`fgsm`; also if ``generator`` is not a ``torch.Generator``.

    Example:
        >>> model = nn.Linear(4, 2).eval()
        >>> g = torch.Generator().manual_seed(0)
        >>> x_adv = pgd(model, torch.zeros(3, 4), torch.tensor([0, 1, 0]), 0.1, 5, generator=g)
        >>> bool(x_adv.abs().max() <= 0.1 + 1e-6)
        True
    """
    eps = _check_inputs(model, x, y, eps, mean is not None)
    steps = C.integer("steps", steps, 1)
    step_size = C.optional_number("step_size", step_size, 0.0, open_low=True)
    if step_size is None:
        step_size = 2.5 * eps / steps
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` must be a torch.Generator or None, got {type(generator).__name__}."
        )
    with torch.inference_mode(False), torch.enable_grad():
        space = _Space(x, mean, std, lower, upper)
        x, y = _usable(x), _usable(y)
        origin = space.to_attack(x)
        low, high = origin - eps, origin + eps
        p = origin
        if generator is not None and eps > 0:
            noise = torch.rand(origin.shape, generator=generator, device=generator.device)
            p = space.clamp(origin + (2 * noise.to(origin.device) - 1) * eps)
        for _ in range(steps):
            grad, _ = _input_gradient(model, p, y, space, x.dtype)
            p = space.clamp(torch.minimum(torch.maximum(p + step_size * grad.sign(), low), high))
        return space.to_input(p).to(x.dtype).detach()


# ---------------------------------------------------------------------------- the callback
def _hits(logits: Tensor, y: Tensor) -> Tensor:
    labels = y.argmax(dim=1) if y.ndim == 2 else y
    return (logits.argmax(dim=1) == labels).float()


class AdversarialEval(pl.Callback):
    """During ``test``, measure FGSM/PGD accuracy and calibration extras on every test batch.

    Adversarial examples: FGSM (Goodfellow et al., ICLR 2015) and, with ``pgd_steps`` > 0, PGD
    (Madry et al., ICLR 2018), L∞, untargeted, against the cross-entropy of the batch's labels.
    ε is in [0, 1] **pixel units** (see :mod:`lightning_mixup.evaluation.robustness`), with
    ``mean``/``std`` by default ``trainer.datamodule.mean``/``.std`` (every datamodule of this
    library has them). If neither is available the inputs are taken to be unnormalised: ε is then
    in input units, clamped to ``[lower, upper]`` (None = unbounded), and a warning says so once.

    Logged per epoch (weighted by batch size, synced across processes):

    - ``test/fgsm_acc@<ε>`` for each ε (``f"{ε:g}"``, e.g. ``test/fgsm_acc@0.05``);
    - ``test/pgd_acc@<ε>`` when ``pgd_steps`` > 0;
    - ``test/conf_gap``: mean max-softmax confidence minus accuracy on clean inputs (positive =
      over-confident, negative = under-confident).

    At the end of ``test`` the clean confidences and hits of every process are gathered into
    :attr:`confidences` and :attr:`correct`, and rank 0 writes ``reliability_diagram.png``
    (:func:`~lightning_mixup.evaluation.visual.reliability_diagram`, ``n_bins`` bins) to
    ``trainer.log_dir`` (``trainer.default_root_dir`` when the first logger has no folder).

    The model is attacked in eval mode; its weights, buffers and ``.grad`` are untouched. The FGSM
    gradient is computed once per batch and reused for every ε.

    Args:
        epsilons: Attack radii ε ≥ 0 (pixel units; see above). 0 gives the clean accuracy.
        pgd_steps: PGD steps per ε; 0 runs FGSM only.
        pgd_step_size: PGD step size; None uses ``2.5·ε / pgd_steps``.
        mean: Per-channel mean (pixel units) the inputs were normalised with; None reads the
            datamodule's.
        std: Per-channel std; None reads the datamodule's. Give both or neither.
        lower: Lowest pixel value (default 0 in pixel space; None = unbounded for raw inputs).
        upper: Highest pixel value (default 1 in pixel space; None = unbounded for raw inputs).
        seed: Seed of PGD's random starts; batch ``i`` on rank ``r`` uses a generator derived from
            ``(seed, r, dataloader_idx, i)``, never the global RNG.
        n_bins: Bins of the reliability diagram.
        save_diagram: Write the reliability diagram PNG at the end of ``test``.
        input_key: Index (list/tuple batch) or key (dict batch) of the inputs.
        target_key: Index or key of the targets (class indices or probability rows).

    Raises:
        ValueError: On an out-of-range argument (the message names it and the value received).

    Example:
        >>> from lightning_mixup import DigitsDataModule, SmallCNN, SoftLabelClassifier
        >>> model = SoftLabelClassifier(SmallCNN(num_classes=10, in_channels=1), num_classes=10)
        >>> trainer = pl.Trainer(callbacks=[AdversarialEval(epsilons=[2 / 255, 8 / 255])],
        ...                      logger=False, enable_progress_bar=False)
        >>> (results,) = trainer.test(model, datamodule=DigitsDataModule(), verbose=False)
        >>> sorted(results)  # doctest: +NORMALIZE_WHITESPACE
        ['test/acc', 'test/conf_gap', 'test/ece', 'test/fgsm_acc@0.00784314',
         'test/fgsm_acc@0.0313725', 'test/nll']

    From YAML::

        trainer:
          callbacks:
            - class_path: lightning_mixup.evaluation.robustness.AdversarialEval
              init_args: {epsilons: [0.02, 0.05, 0.1], pgd_steps: 10}
    """

    def __init__(
        self,
        epsilons: Sequence[float] = (0.02, 0.05, 0.1),
        pgd_steps: int = 0,
        pgd_step_size: float | None = None,
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        lower: float | None = None,
        upper: float | None = None,
        seed: int = 0,
        n_bins: int = 15,
        save_diagram: bool = True,
        input_key: int | str = 0,
        target_key: int | str = 1,
    ) -> None:
        if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence) or not epsilons:
            raise ValueError(f"`epsilons` must be a non-empty list of numbers, got {epsilons!r}.")
        hint = " (each ε, in [0, 1] pixel units)"
        self.epsilons = [C.number("epsilons", e, 0.0, hint=hint) for e in epsilons]
        names = [f"{e:g}" for e in self.epsilons]
        if len(set(names)) != len(names):
            raise ValueError(f"`epsilons` must be distinct, got {list(epsilons)!r}.")
        self.pgd_steps = C.integer("pgd_steps", pgd_steps, 0)
        self.pgd_step_size = C.optional_number("pgd_step_size", pgd_step_size, 0.0, open_low=True)
        C.mean_std(mean, std)
        self.mean, self.std = mean, std
        self.lower, self.upper = _bounds(lower, upper)
        self.seed = C.integer("seed", seed)
        self.n_bins = C.integer("n_bins", n_bins, 1)
        self.save_diagram = bool(save_diagram)
        self.input_key = C.key("input_key", input_key)
        self.target_key = C.key("target_key", target_key)
        #: Clean max-softmax confidences of the last ``test`` (all processes), on the CPU.
        self.confidences: Tensor = torch.empty(0)
        #: Whether each clean top-1 prediction of the last ``test`` was right (1.0/0.0).
        self.correct: Tensor = torch.empty(0)
        #: Path of the last reliability diagram written (rank 0), else None.
        self.diagram_path: Path | None = None
        self._stats: tuple[Stats, Stats] = (None, None)
        # Clean (top-1 confidence, hit) pairs. On those, the binary calibration error is the
        # multiclass top-label one, and its `cat` list states are synced by torchmetrics.
        # `validate_args=False`: the values are built here, valid by construction.
        self._calibration = BinaryCalibrationError(n_bins=self.n_bins, validate_args=False)
        self._warned_raw = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check that matplotlib is there when the diagram will be drawn."""
        if stage == "test" and self.save_diagram:
            try:
                import matplotlib  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "AdversarialEval(save_diagram=True) draws a reliability diagram with "
                    'matplotlib; install it (`pip install "lightning-mixup[plots]"`) or pass '
                    "`save_diagram=False`."
                ) from err

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve ``mean``/``std`` and clear the calibration states."""
        self._calibration.reset()
        # An empty first entry, so that every process has a state to send even if it sees no
        # batch: torchmetrics 1.0 (and later ones with torch < 2.1) sends nothing for an empty
        # list state, and the other processes would wait for it.
        device = pl_module.device
        empty_hits = torch.empty(0, dtype=torch.long, device=device)
        self._calibration.update(torch.empty(0, device=device), empty_hits)
        if self.mean is not None:
            self._stats = (self.mean, self.std)
            return
        self._stats = normalisation_from(trainer)
        if self._stats[0] is None and not self._warned_raw:
            self._warned_raw = True
            rank_zero_warn(
                "AdversarialEval: no `mean`/`std` given and the datamodule exposes none, so the "
                "test inputs are attacked as unnormalised: ε is in input units and only "
                "`lower`/`upper` bound them. Pass `mean` and `std` to measure ε in pixels."
            )
        else:
            C.mean_std(*self._stats)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Attack the batch at every ε; log adversarial accuracy and the confidence gap."""
        x, y = self._unpack(batch)
        mean, std = self._stats
        lower, upper = self.lower, self.upper
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                x, y = _usable(x), _usable(y)
                space = _Space(x, mean, std, lower, upper)
                p = space.to_attack(x)
                grad, logits = _input_gradient(pl_module, p, y, space, x.dtype)
                with torch.no_grad():
                    probs = logits.float().softmax(dim=1)
                    conf, hit = probs.max(dim=1).values, _hits(logits, y)
                    fgsm_acc = []
                    for eps in self.epsilons:
                        adv = space.to_input(space.clamp(p + eps * grad.sign())).to(x.dtype)
                        fgsm_acc.append(_hits(pl_module(adv), y).mean())
                pgd_acc = []
                if self.pgd_steps > 0:
                    generator = torch_generator(
                        self.seed, trainer.global_rank, dataloader_idx, batch_idx, "pgd"
                    )
                    for eps in self.epsilons:
                        adv = pgd(
                            pl_module, x, y, eps, self.pgd_steps, self.pgd_step_size,
                            lower, upper, generator, mean=mean, std=std,
                        )  # fmt: skip
                        with torch.no_grad():
                            pgd_acc.append(_hits(pl_module(adv), y).mean())
        finally:
            pl_module.train(was_training)
        log = partial(
            pl_module.log, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0]
        )
        for eps, acc in zip(self.epsilons, fgsm_acc):
            log(f"test/fgsm_acc@{eps:g}", acc)
        for eps, acc in zip(self.epsilons, pgd_acc):
            log(f"test/pgd_acc@{eps:g}", acc)
        log("test/conf_gap", (conf - hit).mean())
        self._calibration.update(conf.detach(), hit.detach().long())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather confidences from all processes; rank 0 writes the reliability diagram."""
        # torchmetrics' sync: an all-gather of every process's states (a no-op in one process),
        # undone when the block ends; the states are then cleared.
        with self._calibration.sync_context():
            self.confidences = dim_zero_cat(self._calibration.confidences).float().cpu()
            self.correct = dim_zero_cat(self._calibration.accuracies).float().cpu()
        self._calibration.reset()
        self.diagram_path = None
        if self.save_diagram and self.confidences.numel() > 0:  # the same on every process
            folder = trainer.log_dir or trainer.default_root_dir  # under DDP a broadcast: all read
            if trainer.is_global_zero:
                path = Path(folder) / "reliability_diagram.png"
                reliability_diagram(self.confidences, self.correct, self.n_bins, path)
                self.diagram_path = path

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        x = _batch_item(batch, self.input_key, "inputs", "AdversarialEval", "input_key")
        y = _batch_item(batch, self.target_key, "targets", "AdversarialEval", "target_key")
        return x, y
