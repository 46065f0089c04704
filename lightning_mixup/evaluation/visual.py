"""Pictures of a run: grids of mixed training images and reliability diagrams.

Everything here draws with matplotlib's object API (``matplotlib.figure.Figure`` on an Agg
canvas), so importing or calling it never changes the process's pyplot backend. matplotlib is
an optional dependency (``pip install "lightning-mixup[plots]"``); it is imported when a picture
is drawn, with a clear error when it is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.functional.classification import binary_calibration_error

from lightning_mixup import _checks as C
from lightning_mixup import functional as LF
from lightning_mixup._batch import resolve_keys
from lightning_mixup._boxes import is_detection_targets
from lightning_mixup.callback import MixupCallback

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CalibrationBins",
    "MixedGridLogger",
    "calibration_bins",
    "format_soft_label",
    "log_mixed_grid",
    "normalisation_from",
    "plot_reliability",
    "reliability_diagram",
    "save_mixed_grid",
]

_PANEL_INCHES = 1.6
_DPI = 100


def _figure(width: float, height: float) -> Figure:
    """A matplotlib ``Figure`` on its own Agg canvas (pyplot and its global backend untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "Drawing pictures needs matplotlib; install it with "
            '`pip install "lightning-mixup[plots]"`.'
        ) from err
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def normalisation_from(trainer: pl.Trainer) -> tuple[Any, Any]:
    """``(mean, std)`` of ``trainer.datamodule`` when it exposes both (else ``(None, None)``).

    The library's datamodules expose them in [0, 1] pixel units (digits' after ``setup``).
    """
    datamodule = getattr(trainer, "datamodule", None)
    mean = getattr(datamodule, "mean", None)
    std = getattr(datamodule, "std", None)
    if mean is None or std is None:
        return None, None
    return mean, std


# ---------------------------------------------------------------------------- mixed-image grids
def format_soft_label(
    target: Tensor,
    class_names: Sequence[str] | None = None,
    top_k: int = 2,
    min_weight: float = 0.005,
) -> str:
    """Title of one mixed sample: its largest soft-label weights, e.g. ``"3:0.62 7:0.38"``.

    Args:
        target: A ``(num_classes,)`` probability row, or a 0-d integer class index (weight 1).
        class_names: Names to print instead of class indices.
        top_k: At most this many classes are shown, the heaviest first (ties: lower index first).
        min_weight: Weights below this are left out (the heaviest class is always shown).

    Returns:
        ``"<class>:<weight>"`` pairs with two decimals, separated by spaces.

    Raises:
        ValueError: If ``target`` is neither a 0-d index nor a 1-D row, or ``top_k`` < 1.

    Example:
        >>> format_soft_label(torch.tensor([0.0, 0.0, 0.0, 0.62, 0.0, 0.0, 0.0, 0.38]))
        '3:0.62 7:0.38'
    """
    C.positive_integer("top_k", top_k)
    target = target.detach().cpu()
    if target.ndim == 0 and not target.is_floating_point():
        index = int(target)
        return f"{class_names[index] if class_names else index}:1.00"
    if target.ndim != 1:
        raise ValueError(
            "`target` must be a (num_classes,) probability row or a 0-d class index, got shape "
            f"{tuple(target.shape)}."
        )
    weights = target.float()
    # Stable sort on -weight keeps lower class indices first among equal weights.
    order = torch.sort(-weights, stable=True).indices[:top_k].tolist()
    shown = [i for n, i in enumerate(order) if n == 0 or float(weights[i]) >= min_weight]
    return " ".join(
        f"{class_names[i] if class_names else i}:{float(weights[i]):.2f}" for i in shown
    )


def _displayable(images: Tensor, mean: Tensor | None, std: Tensor | None) -> np.ndarray:
    """``(B, C, H, W)`` tensor → ``(B, H, W)`` or ``(B, H, W, 3)`` floats in [0, 1] for imshow."""
    x = images.detach().to("cpu", torch.float32)
    if mean is not None and std is not None:
        x = x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    else:  # unknown normalisation: stretch each image to [0, 1]
        flat = x.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1, 1)
        high = flat.max(dim=1).values.view(-1, 1, 1, 1)
        x = (x - low) / (high - low).clamp_min(1e-12)
    x = x.clamp(0, 1)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def _draw_boxes(ax: Any, target: Any, class_names: Sequence[str] | None) -> None:
    """Draw a detection target's boxes, labelled ``class:weight``, fainter for a small weight.

    A box covers pixels ``x1 ≤ x < x2``, and ``imshow`` centres pixel ``c`` on ``c``: the
    rectangle starts half a pixel before ``x1``.
    """
    from matplotlib.patches import Rectangle

    boxes = target["boxes"].detach().to("cpu", torch.float64)
    labels = target["labels"].detach().cpu().tolist()
    weights = target.get("weights")
    weights = [1.0] * len(labels) if weights is None else weights.detach().cpu().tolist()
    for (x1, y1, x2, y2), label, weight in zip(boxes.tolist(), labels, weights):
        shade = 0.3 + 0.7 * min(max(weight, 0.0), 1.0)
        ax.add_patch(
            Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="tab:red",
                      linewidth=1.0, alpha=shade)
        )  # fmt: skip
        name = class_names[label] if class_names else label
        ax.text(x1 - 0.5, y1 - 0.5, f"{name}:{weight:.2f}", fontsize=6, color="tab:red",
                alpha=shade, va="bottom")  # fmt: skip
    ax.set_title(f"{len(labels)} boxes", fontsize=8)


def _grid_figure(
    images: Tensor,
    targets: Tensor | Sequence[Mapping[str, Tensor]],
    mean: float | Sequence[float] | Tensor | None,
    std: float | Sequence[float] | Tensor | None,
    max_images: int,
    class_names: Sequence[str] | None,
) -> Figure:
    C.positive_integer("max_images", max_images)
    shape: tuple[int, ...] | str
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"`images` must be a (B, C, H, W) tensor with 1 or 3 channels, got {shape}."
        )
    boxes = is_detection_targets(targets)
    if not boxes and (not isinstance(targets, Tensor) or targets.ndim not in (1, 2)):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            "`targets` must be (B,) class indices, (B, num_classes) probabilities or B "
            f"detection target dicts, got {shape}."
        )
    if len(targets) != images.shape[0] or images.shape[0] == 0:
        raise ValueError(
            f"`images` and `targets` must hold the same, non-zero number of samples, got "
            f"{images.shape[0]} and {len(targets)}."
        )
    m, s = C.mean_std(mean, std)
    if m is not None and s is not None and max(m.numel(), s.numel()) not in (1, images.shape[1]):
        raise ValueError(
            f"`mean`/`std` must have 1 or C = {images.shape[1]} entries, got "
            f"{max(m.numel(), s.numel())}."
        )
    n = min(max_images, images.shape[0])
    pictures = _displayable(images[:n], m, s)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = _figure(cols * _PANEL_INCHES, rows * (_PANEL_INCHES + 0.2))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        gray = pictures.ndim == 3
        ax.imshow(pictures[i], cmap="gray" if gray else None, vmin=0, vmax=1)
        if isinstance(targets, Tensor):  # checked above: class targets are a tensor, boxes not
            ax.set_title(format_soft_label(targets[i], class_names), fontsize=8)
        else:
            _draw_boxes(ax, targets[i], class_names)
    fig.tight_layout(pad=0.3)
    return fig


def save_mixed_grid(
    images: Tensor,
    targets: Tensor | Sequence[Mapping[str, Tensor]],
    path: str | Path,
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    max_images: int = 16,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a PNG grid of (mixed) images, each titled with its top soft-label weights.

    The first ``min(max_images, B)`` samples are laid out on a ``ceil(sqrt(n))``-column grid
    (1.6 inches, 160 pixels, per panel). Images are un-normalised with ``mean``/``std`` (in [0, 1]
    pixel units, per channel or one number) and clipped to [0, 1]; without them, each image is
    stretched to its own min..max. Titles come from :func:`format_soft_label`.

    Args:
        images: ``(B, C, H, W)`` floats with C = 1 (shown in grey) or 3, on any device.
        targets: ``(B, num_classes)`` probability rows (e.g. a mixed batch), ``(B,)`` indices, or
            ``B`` detection target dicts (``"boxes"`` xyxy pixels, ``"labels"``, optional
            ``"weights"``), drawn as labelled rectangles.
        path: Where to write the PNG; parent folders are created.
        mean: Per-channel mean the images were normalised with, or None.
        std: Per-channel std the images were normalised with, or None.
        max_images: At most this many panels.
        class_names: Names to print instead of class indices.

    Returns:
        The path written.

    Raises:
        ValueError: If the shapes do not fit, ``max_images`` < 1, or ``mean``/``std`` are bad.
        ImportError: If matplotlib is not installed.

    Example:
        >>> save_mixed_grid(torch.rand(4, 1, 8, 8), torch.eye(10)[:4], "grid.png").is_file()
        True
    """
    fig = _grid_figure(images, targets, mean, std, max_images, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def log_mixed_grid(
    trainer: pl.Trainer,
    images: Tensor,
    targets: Tensor | Sequence[Mapping[str, Tensor]],
    tag: str = "mixup/grid",
    max_images: int = 16,
    class_names: Sequence[str] | None = None,
    *,
    folder: str | Path | None = None,
) -> Path | None:
    """Send a grid of mixed training images to TensorBoard, or save it as a PNG; rank 0 only.

    Called from a callback hook with the batch it just mixed. With a ``TensorBoardLogger`` among
    ``trainer.loggers``, the grid goes to
    ``logger.experiment.add_image(tag, ..., global_step=trainer.global_step)``; otherwise it is
    written to ``<folder>/mixed_grid_epoch{N}.png``, ``N`` being the 0-based
    ``trainer.current_epoch``. Images are un-normalised with ``trainer.datamodule.mean``/``.std``
    when the datamodule has them.

    ``folder=None`` reads Lightning's ``trainer.log_dir`` (``trainer.default_root_dir`` when the
    first logger has no folder). Under DDP that is a broadcast from rank 0, so then call this
    function on every process alike (as in the example), or pass ``folder``.

    Args:
        trainer: The running Trainer (its rank, epoch, step, loggers and datamodule are read).
        images: ``(B, C, H, W)`` mixed inputs, C = 1 or 3, on any device.
        targets: ``(B, num_classes)`` mixed targets, ``(B,)`` indices, or ``B`` detection target
            dicts (boxes drawn as labelled rectangles).
        tag: TensorBoard tag of the image.
        max_images: At most this many panels.
        class_names: Names to print instead of class indices.
        folder: Folder of the PNG; None: the run's log folder, as above.

    Returns:
        The PNG path when one was written; None on TensorBoard or on ranks other than 0.

    Raises:
        ValueError: As :func:`save_mixed_grid`.
        ImportError: If matplotlib is not installed.

    Example::

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            ...  # mix the batch in place
            if batch_idx == 0 and trainer.current_epoch % every == 0:
                log_mixed_grid(trainer, batch[0], batch[1])
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if board is None and folder is None:
        folder = trainer.log_dir or trainer.default_root_dir  # every process: a DDP broadcast
    if not trainer.is_global_zero:
        return None
    mean, std = normalisation_from(trainer)
    fig = _grid_figure(images, targets, mean, std, max_images, class_names)
    if board is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = fig.canvas
        assert isinstance(canvas, FigureCanvasAgg)  # _figure draws every figure on Agg
        canvas.draw()
        pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        board.experiment.add_image(tag, pixels, global_step=trainer.global_step, dataformats="HWC")
        return None
    path = Path(folder or trainer.default_root_dir) / f"mixed_grid_epoch{trainer.current_epoch}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


class MixedGridLogger(pl.Callback):
    """Every ``every_n_epochs`` epochs, log a grid of the first mixed training batch (rank 0).

    It draws what the network is fed: the inputs and soft targets of the first batch a
    :class:`~lightning_mixup.MixupCallback` mixed in the epoch, read after the training step,
    titled with their soft-label weights, through :func:`log_mixed_grid` (TensorBoard, else
    ``mixed_grid_epoch{N}.png`` in ``trainer.log_dir``). Epochs are 0-based: grids are drawn in
    epochs 0, N, 2N...
    Needs matplotlib (``pip install "lightning-mixup[plots]"``) and image batches
    ``(B, C, H, W)`` with 1 or 3 channels; other inputs warn once and are not drawn.

    Args:
        every_n_epochs: Draw in every this many epochs.
        max_images: At most this many panels.
        tag: TensorBoard tag of the image.

    Raises:
        ValueError: If an argument is out of range, or at ``setup`` when the Trainer has no
            ``MixupCallback``.
        ImportError: At ``setup`` (rank 0), if matplotlib is not installed.

    Example:
        >>> from lightning_mixup import MixupCallback
        >>> callbacks = [MixupCallback(alpha=1.0), MixedGridLogger(every_n_epochs=5)]
    """

    def __init__(self, every_n_epochs: int = 1, max_images: int = 16, tag: str = "mixup/grid"):
        self.every_n_epochs = C.positive_integer("every_n_epochs", every_n_epochs)
        self.max_images = C.positive_integer("max_images", max_images)
        self.tag = tag
        self._mixer: MixupCallback | None = None
        self._folder: str | None = None
        self._drawn_epoch: int | None = None
        self._enabled = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the ``MixupCallback`` and the log folder; check that matplotlib can draw."""
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
        mixers = [cb for cb in callbacks if isinstance(cb, MixupCallback)]
        if not mixers:
            raise ValueError(
                "MixedGridLogger draws batches mixed by a MixupCallback, but the Trainer has "
                "none; add `MixupCallback(...)` to `callbacks`."
            )
        self._mixer, self._drawn_epoch, self._enabled = mixers[0], None, True
        # Here, where every process runs: under DDP `trainer.log_dir` is a broadcast, and whether
        # a batch was mixed (so drawn) differs between processes.
        self._folder = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero:
            _figure(1.0, 1.0)  # raises the install hint when matplotlib is missing

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Draw the batch when it is the epoch's first mixed one in a drawing epoch."""
        mixer, epoch = self._mixer, trainer.current_epoch
        if (
            not self._enabled
            or mixer is None
            or mixer.last_params is None  # this batch was not mixed
            or getattr(mixer.last_params, "at", "input") != "input"  # mixed inside the network
            or epoch % self.every_n_epochs
            or self._drawn_epoch == epoch
        ):
            return
        params = mixer.last_params
        if isinstance(params, dict):  # several training loaders: the first mixed one
            part = next(iter(params))
            batch, params = batch[part], params[part]
        input_key, target_key = resolve_keys(batch, mixer.input_key, mixer.target_key)
        images, targets = batch[input_key], batch[target_key]
        if mixer.keep_clean:  # the clean half, then the mixed half: draw the mixed one
            images, targets = images[len(images) // 2 :], targets[len(targets) // 2 :]
        if isinstance(images, list) and len({tuple(x.shape) for x in images}) == 1:
            images = torch.stack(images)  # detection images as a list of one size
        if (  # targets="loss" keeps the labels: show the weights its loss gives them
            isinstance(targets, Tensor) and targets.ndim == 1 and not targets.is_floating_point()
        ):
            classes = mixer._targets.num_classes or int(targets.max()) + 1
            rows = LF.soft_targets(targets, classes, check_range=False)
            targets = LF.mix_targets(rows, params.partner.to(rows.device), params.lam)
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            self._enabled = False
            shape = (
                tuple(images.shape)
                if isinstance(images, Tensor)
                else f"a list of images of {len({tuple(x.shape) for x in images})} sizes"
            )
            rank_zero_warn(
                "MixedGridLogger draws image batches (B, C, H, W) with 1 or 3 channels; these "
                f"inputs have shape {shape}, so no grid is drawn."
            )
            return
        self._drawn_epoch = epoch
        log_mixed_grid(trainer, images, targets, self.tag, self.max_images, folder=self._folder)


# ---------------------------------------------------------------------------- reliability diagrams
@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width confidence bins of a classifier's top-1 predictions, binned as torchmetrics does.

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges from 0 to 1 (``torch.linspace`` in float32, as
            torchmetrics makes them); bin ``b`` is ``[edges[b], edges[b+1])``, the last one closed
            (a confidence of exactly 1 falls in the last bin).
        accuracy: ``(n_bins,)`` fraction correct per bin (0 for an empty bin).
        confidence: ``(n_bins,)`` mean confidence per bin (0 for an empty bin).
        count: ``(n_bins,)`` number of predictions per bin.
        ece: Expected calibration error (L1) as torchmetrics computes it, equal to
            ``MulticlassCalibrationError(num_classes, n_bins, norm="l1")`` on the probabilities the
            confidences came from. It is ``Σ_b (count_b / N)·|accuracy_b − confidence_b|`` over
            these bins, except that torchmetrics counts confidences of exactly 1 in a bin of their
            own (Lightning-AI/torchmetrics#3510), so ``ece`` can be slightly higher than that sum
            when the last bin mixes confidences of 1 with lower ones.
    """

    edges: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    count: np.ndarray
    ece: float


def calibration_bins(confidences: Any, correct: Any, n_bins: int = 15) -> CalibrationBins:
    """Bin top-1 confidences into ``n_bins`` equal-width bins and compute the L1 ECE.

    The ECE is torchmetrics' ``binary_calibration_error(confidences, correct, n_bins,
    norm="l1")`` on the float32 confidences: on top-1 confidences and hits this is the multiclass
    top-label ECE, so it equals the ``*/ece`` that :class:`~lightning_mixup.SoftLabelClassifier`
    logs for the same predictions. torchmetrics has no public per-bin API, so the bins are
    ``torch.histogram`` counts and sums over torchmetrics' edges (see :class:`CalibrationBins`).

    Args:
        confidences: ``(N,)`` max-softmax confidences in [0, 1] (tensor, array or list).
        correct: ``(N,)`` booleans (or 0/1): whether each top-1 prediction was right.
        n_bins: Number of bins.

    Returns:
        The bins and the ECE.

    Raises:
        ValueError: If the inputs are empty or differ in length, a confidence is outside [0, 1],
            ``correct`` holds something other than booleans or 0/1, or ``n_bins`` < 1.

    Example:
        >>> bins = calibration_bins([0.95, 0.65, 0.81, 0.85], [1, 0, 1, 0], n_bins=10)
        >>> bins.count.tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 1.0]
        >>> round(bins.ece, 4)
        0.34
    """
    C.positive_integer("n_bins", n_bins)
    conf, hit = (_flat_tensor(v) for v in (confidences, correct))
    if conf.numel() == 0 or conf.numel() != hit.numel():
        raise ValueError(
            f"`confidences` and `correct` must be non-empty and of the same length, got "
            f"{conf.numel()} and {hit.numel()}."
        )
    conf = conf.float()  # MulticlassCalibrationError keeps float32 confidences, whatever the input
    if not bool(((conf >= 0) & (conf <= 1)).all()):
        raise ValueError("`confidences` must lie in [0, 1] (max-softmax probabilities).")
    if not bool(((hit == 0) | (hit == 1)).all()):
        raise ValueError(
            "`correct` must hold booleans or 0/1 (whether each top-1 prediction was right), got "
            f"values {sorted({float(v) for v in hit.unique()[:5]})}."
        )
    ece = float(binary_calibration_error(conf, hit.long(), n_bins, norm="l1"))
    # float32 edges and confidences, compared exactly in float64 (the sums are kept in float64)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype).double()
    x = conf.double()
    count = torch.histogram(x, edges).hist
    safe = count.clamp(min=1)
    accuracy = torch.histogram(x, edges, weight=hit.double()).hist / safe
    confidence = torch.histogram(x, edges, weight=x).hist / safe
    return CalibrationBins(edges.numpy(), accuracy.numpy(), confidence.numpy(), count.numpy(), ece)


def _flat_tensor(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().cpu().flatten()
    return torch.as_tensor(np.asarray(values)).flatten()


def plot_reliability(
    ax: Axes, confidences: Any, correct: Any, n_bins: int = 15, title: str | None = None
) -> float:
    """Draw a reliability diagram on ``ax``: accuracy bars per confidence bin and the diagonal.

    Bars are the accuracy of each non-empty bin; the red outline is the gap to the bin's mean
    confidence; the dashed diagonal is perfect calibration. The title is ``title`` (if given)
    followed by the ECE.

    Args:
        ax: A matplotlib ``Axes``.
        confidences: ``(N,)`` max-softmax confidences in [0, 1].
        correct: ``(N,)`` booleans: whether each top-1 prediction was right.
        n_bins: Number of equal-width bins.
        title: Text before ``"ECE = …"`` in the title.

    Returns:
        The ECE (as :func:`calibration_bins`).

    Raises:
        ValueError: As :func:`calibration_bins`.
    """
    bins = calibration_bins(confidences, correct, n_bins)
    width = 1.0 / n_bins
    left = bins.edges[:-1]
    filled = bins.count > 0
    ax.bar(left[filled], bins.accuracy[filled], width=width, align="edge", color="tab:blue",
           edgecolor="black", linewidth=0.5, label="accuracy")  # fmt: skip
    gap = bins.confidence[filled] - bins.accuracy[filled]
    ax.bar(left[filled], gap, width=width, align="edge", bottom=bins.accuracy[filled],
           color="none", edgecolor="tab:red", linewidth=0.8, hatch="//",
           label="gap to confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy")
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}ECE = {bins.ece:.3f} (n = {int(bins.count.sum())})", fontsize=9)
    return bins.ece


def reliability_diagram(
    confidences: Any, correct: Any, n_bins: int = 15, path: str | Path = "reliability.png"
) -> float:
    """Save a reliability diagram (accuracy vs confidence, ``n_bins`` bins, ECE in the title).

    Args:
        confidences: ``(N,)`` max-softmax confidences in [0, 1] (tensor, array or list).
        correct: ``(N,)`` booleans: whether each top-1 prediction was right.
        n_bins: Number of equal-width bins.
        path: Where to write the PNG; parent folders are created.

    Returns:
        The ECE shown in the title.

    Raises:
        ValueError: As :func:`calibration_bins`.
        ImportError: If matplotlib is not installed.

    Example:
        >>> ece = reliability_diagram([0.9, 0.6, 0.8], [1, 0, 1], 15, "r.png")
    """
    fig = _figure(4.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ece = plot_reliability(ax, confidences, correct, n_bins)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return ece
