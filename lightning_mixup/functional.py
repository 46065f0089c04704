"""Pure tensor maths for MixUp and CutMix: no Lightning import, no global RNG.

Every random function takes an explicit :class:`numpy.random.Generator`. The few random numbers
a batch needs (partners, λ, boxes) are drawn on the CPU — with NumPy, whose one call per draw
costs a microsecond where the same draws from ``torch`` ops cost about a hundred — and then
moved to the batch's device as tensors, so a run repeats itself exactly whatever the device.
The mix itself is torch ops on the batch's device: one code path on every device.

Conventions used throughout:

* **λ is the weight of the sample itself.** A mixed sample is ``λ·x_i + (1-λ)·x_j`` and its
  target ``λ·y_i + (1-λ)·y_j``, where ``j = partner[i]``. For CutMix, λ is the fraction of the
  sample's own pixels that are kept (after the box is clipped to the input).
* **Pairing.** ``partner`` is a random perfect matching drawn from the generator
  (:func:`sample_partners`). With an odd batch size one sample is its own partner and is left
  unchanged; a batch of one is never mixed.
* **Memory.** Functions whose name ends in ``_`` write into their argument. Callers write only
  into tensors that own their memory (:func:`owns_memory`); anything else is copied first.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_mixup import _checks as C

__all__ = [
    "RAMP_SHAPES",
    "all_finite",
    "check_indices",
    "cutmix_boxes",
    "mix_",
    "mix_pairs_",
    "mix_targets",
    "owns_memory",
    "ramp_strength",
    "sample_beta",
    "sample_partners",
    "soft_targets",
    "target_form",
    "to_device",
]

#: The shapes a ramp can take: straight up, or along half a cosine.
RAMP_SHAPES = ("linear", "cosine")


def soft_targets(
    target: Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
    check_range: bool = True,
    ignore_index: int | None = None,
) -> Tensor:
    """Turn class indices into (optionally smoothed) probability rows; pass probabilities through.

    An index mask ``(B, *spatial)`` becomes ``(B, num_classes, *spatial)``, the class dimension
    second, as ``F.cross_entropy`` expects it.

    Args:
        target: Integer class indices, ``(B,)`` or an index mask ``(B, *spatial)``, with values in
            ``[0, num_classes)`` (or equal to ``ignore_index``); or floating probabilities
            ``(B, num_classes, ...)`` (soft or multi-hot rows, soft masks), which are returned
            converted to ``dtype`` and otherwise unchanged (label smoothing applies to class
            indices only).
        num_classes: Number of classes ``K``.
        label_smoothing: ε in ``[0, 1]``: the true class gets ``1 - ε + ε/K``, every other ``ε/K``.
        dtype: Floating dtype of the result (float32 by default, whatever the input precision).
        check_range: Raise a ``ValueError`` for class indices outside ``[0, num_classes)``. The
            check reads a value back from the device; with False an accelerator's own bounds
            check in ``scatter_`` still stops the run on a bad index.
        ignore_index: Class index that marks unlabelled entries (e.g. 255 on object borders); their
            rows are all zeros, so they carry no class at all. None: every index is a class.

    Returns:
        A ``(B, num_classes, ...)`` tensor on ``target``'s device.

    Raises:
        ValueError: If the shape, the class range or ``num_classes`` is wrong.
        TypeError: If 1-D targets are not integers, or targets are neither integer nor floating.

    Example:
        >>> soft_targets(torch.tensor([0, 2]), 3, label_smoothing=0.3)
        tensor([[0.8000, 0.1000, 0.1000],
                [0.1000, 0.1000, 0.8000]])
    """
    C.positive_integer("num_classes", num_classes)
    C.number("label_smoothing", label_smoothing, 0.0, 1.0)
    if target.is_floating_point() and target.ndim >= 2:
        if target.shape[1] != num_classes:
            raise ValueError(
                f"Probability targets (B, num_classes, ...) must have `num_classes` = {num_classes} "
                f"columns, got shape {tuple(target.shape)}."
            )
        return target.to(dtype)
    if target.ndim == 0:
        raise ValueError(
            "Targets must be class indices of shape (B,) or soft targets of shape "
            f"(B, num_classes), got shape {tuple(target.shape)}."
        )
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"{'1-D targets' if target.ndim == 1 else 'Index masks'} must be integer class "
            f"indices, got dtype {target.dtype}; use `.long()` on the labels, or pass "
            "(B, num_classes) soft targets."
        )
    if check_range:
        check_indices(target, num_classes, ignore_index)
    index = target.long()
    ignored = None if ignore_index is None else index == ignore_index
    if ignored is not None:
        index = index.masked_fill(ignored, 0)
    off = label_smoothing / num_classes
    shape = (target.shape[0], num_classes, *target.shape[1:])
    out = torch.full(shape, off, dtype=dtype, device=target.device)
    out.scatter_(1, index.unsqueeze(1), 1.0 - label_smoothing + off)
    return out if ignored is None else out.masked_fill_(ignored.unsqueeze(1), 0.0)


def check_indices(target: Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """Raise ``ValueError`` unless every index lies in ``[0, num_classes)`` or is ``ignore_index``.

    Reads one value back from ``target``'s device.
    """
    if not target.numel():
        return
    values = target if ignore_index is None else target.masked_fill(target == ignore_index, 0)
    low, high = torch.aminmax(values)
    if 0 <= int(low) <= int(high) < num_classes:
        return
    bad = values[(values < 0) | (values >= num_classes)].unique()
    excepted = "" if ignore_index is None else f" (`ignore_index` = {ignore_index} excepted)"
    unset = ignore_index is None and target.ndim > 1
    raise ValueError(
        f"Class indices must lie in [0, num_classes) = [0, {num_classes}){excepted}, got values "
        f"{bad[:5].tolist()}; check `num_classes` and the dataset's labels"
        + ("; if they mark unlabelled pixels, set `ignore_index`." if unset else ".")
    )


def target_form(input_shape: Sequence[int], target: Tensor) -> str:
    """Say what ``target`` holds for inputs of ``input_shape``; raise when it fits no form.

    The form follows from the dtype and the number of dimensions, given inputs of shape
    ``(B, C, *spatial)`` with 1 to 3 spatial dimensions for the dense forms:

    * ``"labels"``: ``(B,)`` integer class indices;
    * ``"soft"``: ``(B, K)`` floating soft or multi-hot rows;
    * ``"index_mask"``: ``(B, *spatial)`` integer class indices, one per pixel (frame, voxel);
    * ``"soft_mask"``: ``(B, K, *spatial)`` floating per-pixel probabilities.

    Raises:
        TypeError: If the dtype fits no form (bool, complex, or a float tensor shaped like an
            index mask).
        ValueError: If the shape fits no form, or a mask's spatial size differs from the inputs'.

    Example:
        >>> target_form((4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long))
        'index_mask'
    """
    shape, spatial = tuple(target.shape), tuple(input_shape[2:])
    dense = 1 <= len(spatial) <= 3
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"Targets of dtype {target.dtype} fit no target form: class indices and index masks "
            "are integer tensors, soft targets and soft masks floating point ones."
        )
    if not target.is_floating_point():
        if target.ndim == 1:
            return "labels"
        if dense and target.ndim == len(input_shape) - 1:
            if shape[1:] != spatial:
                raise ValueError(
                    f"The index mask's spatial size {shape[1:]} differs from the inputs' "
                    f"{spatial}: inputs of shape {tuple(input_shape)} need masks of shape "
                    f"(B, *{spatial})."
                )
            return "index_mask"
        raise ValueError(
            f"Integer targets of shape {shape} fit neither class indices (B,) nor an index mask "
            f"(B, *spatial) for inputs of shape {tuple(input_shape)} (B, C, *spatial, with 1 to 3 "
            "spatial dimensions); pass soft targets as floating point (B, num_classes) rows."
        )
    if target.ndim == 1:
        raise TypeError(
            f"1-D targets must be integer class indices, got dtype {target.dtype}; "
            "use `.long()` on the labels, or pass (B, num_classes) soft targets."
        )
    if target.ndim == 2:
        return "soft"
    if dense and target.ndim == len(input_shape):
        if shape[2:] != spatial:
            raise ValueError(
                f"The soft mask's spatial size {shape[2:]} differs from the inputs' {spatial}: "
                f"inputs of shape {tuple(input_shape)} need soft masks of shape "
                f"(B, num_classes, *{spatial})."
            )
        return "soft_mask"
    if dense and target.ndim == len(input_shape) - 1:
        raise TypeError(
            f"A mask of shape {shape} must hold integer class indices, got dtype {target.dtype}; "
            "use `.long()` on it, or pass a soft mask of shape (B, num_classes, *spatial)."
        )
    raise ValueError(
        f"Floating point targets of shape {shape} fit neither soft targets (B, num_classes) nor a "
        f"soft mask (B, num_classes, *spatial) for inputs of shape {tuple(input_shape)}."
    )


def sample_beta(alpha: float, n: int, generator: np.random.Generator) -> Tensor:
    """Draw ``n`` samples of λ ~ Beta(α, α) from ``generator`` (float64, on the CPU).

    Args:
        alpha: Concentration α ≥ 0; 0 returns ones (no mixing).
        n: Number of samples.
        generator: The generator that supplies every random number.

    Returns:
        A float64 tensor of shape ``(n,)`` with values in ``[0, 1]``.

    Example:
        >>> lam = sample_beta(1.0, 4, np.random.default_rng(0))
        >>> bool(((lam >= 0) & (lam <= 1)).all())
        True
    """
    return torch.from_numpy(_beta(C.number("alpha", alpha, 0.0), n, generator))


def _beta(alpha: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.beta(alpha, alpha, n) if alpha > 0 else np.ones(n)


def sample_partners(batch_size: int, generator: np.random.Generator) -> Tensor:
    """Draw a random perfect matching of the batch: ``partner[i]`` is the sample ``i`` mixes with.

    The batch is shuffled and samples at shuffled positions ``2k`` and ``2k+1`` become partners,
    so each sample's partner is uniformly random among the others and the pairing is symmetric
    (``partner[partner[i]] == i``). With an odd batch size one uniformly chosen sample is its
    own partner.

    Example:
        >>> p = sample_partners(5, np.random.default_rng(0))
        >>> bool((p[p] == torch.arange(5)).all())
        True
    """
    return torch.from_numpy(_partners(batch_size, generator))


def _partners(n: int, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(n)
    swapped = order.copy()  # an odd batch's last shuffled sample keeps itself
    even = n - n % 2
    swapped[0:even:2], swapped[1:even:2] = order[1:even:2], order[0:even:2]
    partner = np.empty_like(order)
    partner[order] = swapped
    return partner


def cutmix_boxes(
    lam: Tensor | np.ndarray, spatial: Sequence[int], generator: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample one box per λ for CutMix and return it with the λ implied by the kept area.

    Each box covers a fraction ``1 - λ`` of the input before clipping: every side is the
    input's side times ``(1 - λ) ** (1 / d)`` for ``d`` spatial dimensions, centred on a uniformly
    random position; the box is then clipped to the input, so the returned λ (the kept
    fraction) is the exact share of the sample's own pixels.

    Args:
        lam: ``(n,)`` requested λ values in ``[0, 1]``.
        spatial: Spatial sizes of the input, e.g. ``(H, W)``; 1 to 3 dimensions.
        generator: The generator that supplies every random number.

    Returns:
        ``(lo, hi, kept)``: ``lo`` and ``hi`` are ``(n, d)`` int64 corners (``hi`` exclusive)
        and ``kept`` the ``(n,)`` float64 kept-area fraction.
    """
    lam = np.clip(np.asarray(lam, dtype=np.float64), 0.0, 1.0)
    lo, hi, kept = _boxes(lam, spatial, generator)
    return torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy(kept)


def _boxes(
    lam: np.ndarray, spatial: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes, halves, total = _grid(tuple(spatial))
    # λ lies in [0, 1] here (Beta draws; cutmix_boxes clips what users pass), so 1 - λ does too.
    half = np.rint((1.0 - lam)[:, None] ** (1.0 / len(sizes)) * halves)
    # A centre drawn uniformly from the integer positions 0..size-1 of every dimension.
    centre = np.floor(rng.random((len(lam), len(sizes))) * sizes)
    lo = np.maximum(centre - half, 0.0)
    hi = np.minimum(centre + half, sizes)
    kept = 1.0 - (hi - lo).prod(axis=1) / total
    return lo.astype(np.int64), hi.astype(np.int64), kept


@functools.lru_cache(maxsize=32)
def _grid(spatial: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """The sizes of a CutMix grid as floats, their halves and the number of cells (checked)."""
    if not 1 <= len(spatial) <= 3:
        raise ValueError(
            f"CutMix needs inputs of shape (B, C, *spatial) with 1 to 3 spatial dimensions, "
            f"got {len(spatial)} spatial dimensions."
        )
    sizes = np.array(spatial, dtype=np.float64)
    halves = sizes / 2.0
    sizes.flags.writeable = halves.flags.writeable = False
    return sizes, halves, math.prod(spatial)


def mix_(
    x: Tensor, partner: Tensor, weight: Tensor | float, buffer: Tensor | None = None
) -> Tensor:
    """Mix a batch in place: ``x[i] ← (1 - w_i)·x[i] + w_i·x[partner[i]]``.

    ``w`` is the partner's share, ``1 - λ``; ``torch.lerp`` is exact at ``w = 0`` and ``w = 1``,
    so CutMix pixels are copied bit for bit from one of the two samples.

    Args:
        x: ``(B, ...)`` floating batch, modified in place.
        partner: ``(B,)`` partner indices on ``x.device``.
        weight: Partner share: a Python float, or a tensor of shape ``(B, 1, ...)`` broadcastable
            to ``x`` (one value per sample, or a per-pixel CutMix mask).
        buffer: Optional preallocated tensor shaped like ``x``, so a training loop allocates no
            full batch per step.

    Returns:
        ``x``, mixed.
    """
    if isinstance(weight, Tensor) and weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    if buffer is None:
        partners = x.index_select(0, partner)
    else:
        partners = torch.index_select(x, 0, partner, out=buffer)
    return x.lerp_(partners, weight)


def mix_pairs_(
    x: Tensor,
    partner: Tensor,
    lam: Tensor,
    boxes: tuple[Tensor, Tensor, Tensor] | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """Mix a batch in place one pair of partners at a time; the same result as :func:`mix_`.

    For each pair ``(a, b)`` of a symmetric pairing, ``a``'s new value is set aside (a blend into
    ``scratch``, or the partner's box pixels), ``b`` is updated in place from the unchanged ``a``,
    then ``a`` is written: about one copy of the batch instead of the gather's two and a half, at
    one Python step per pair, so :meth:`~lightning_mixup.policies.MixUp.apply` uses it for large
    samples on the CPU only.

    Args:
        x: ``(B, ...)`` floating batch, ``(B, C, *spatial)`` when ``boxes`` are given; mixed in
            place.
        partner: ``(B,)`` symmetric partner indices (CPU).
        lam: ``(B,)`` share each sample keeps of itself (CPU).
        boxes: Optional ``(cut, lo, hi)`` (CPU): where ``cut[i]``, sample ``i`` takes its
            partner's pixels inside ``[lo[i], hi[i])`` instead of a blend.
        scratch: Optional tensor shaped like one sample, reused for blends.

    Returns:
        ``x``, mixed.

    Raises:
        ValueError: If ``partner`` is not a symmetric pairing.
    """
    index = torch.arange(len(partner))
    if not torch.equal(partner.index_select(0, partner), index):
        raise ValueError("`partner` must be a symmetric pairing: partner[partner[i]] == i.")
    first = (partner > index).nonzero().flatten().tolist()
    share = (1.0 - lam).tolist()
    cut = [False] * len(share) if boxes is None else boxes[0].tolist()
    regions: list[tuple[slice, ...]] = []
    if boxes is not None:
        lo, hi = boxes[1].tolist(), boxes[2].tolist()
        regions = [(slice(None), *map(slice, start, end)) for start, end in zip(lo, hi)]
    partners = partner.tolist()
    for a in first:
        b = partners[a]
        xa, xb = x[a], x[b]
        saved: Tensor | None
        if cut[a]:  # a's new value differs from a only inside its box: keep the partner's box
            saved = xb[regions[a]].clone()
        elif share[a] > 0:
            saved = torch.lerp(xa, xb, share[a], out=scratch)
        else:
            saved = None
        if cut[b]:
            xb[regions[b]] = xa[regions[b]]
        elif share[b] > 0:
            xb.lerp_(xa, share[b])
        if cut[a] and saved is not None:  # (saved is set for every cut)
            xa[regions[a]] = saved
        elif saved is not None:
            xa.copy_(saved)
    return x


def owns_memory(t: Tensor) -> bool:
    """Whether ``t`` provably owns all the memory it sees, so writing into it harms nobody.

    True for a tensor that is not a view and whose storage holds exactly its elements, as the
    default collate, ``pin_memory`` and a transfer to another device make them. False for a view
    (a slice of a dataset kept as one tensor, on any device) and for a tensor whose storage is
    larger than itself: writing into those would change data that lives on after the batch.

    Example:
        >>> stored = torch.zeros(4, 3)
        >>> owns_memory(stored.clone()), owns_memory(stored[:2])
        (True, False)
    """
    return bool(
        t._base is None
        and t.storage_offset() == 0
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    )


def all_finite(x: Tensor) -> Tensor:
    """A 0-d bool tensor on ``x``'s device: True when ``x`` holds no NaN and no ±Inf.

    One sum screens the batch; a non-finite sum (a NaN, an Inf, or an overflow of large finite
    values) leaves the decision to the smallest and largest elements. On an accelerator both are
    combined on the device, so the host never waits for the answer.
    """
    if x.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=x.device)
    screened = torch.isfinite(x.sum(dtype=torch.float32 if x.itemsize < 4 else x.dtype))
    if x.is_cpu and bool(screened):
        return screened
    return screened | (torch.isfinite(x.amax()) & torch.isfinite(x.amin()))


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move a small CPU tensor to ``device`` without making the host wait for the device.

    On CUDA the tensor is staged in pinned memory, so the copy is asynchronous; PyTorch's pinned
    allocator keeps that memory until the copy has run.
    """
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def mix_targets(target: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """Mix probability targets with the same partners: ``λ_i·y_i + (1 - λ_i)·y[partner[i]]``.

    Args:
        target: ``(B, K)`` float targets.
        partner: ``(B,)`` partner indices.
        lam: ``(B,)`` weights of each sample itself.
    """
    lam = to_device(lam.to(target.dtype), target.device)
    return torch.lerp(target.index_select(0, partner), target, lam[:, None])


def ramp_strength(
    progress: float,
    ramp_start_epoch: float = 0,
    ramp_epochs: float = 0,
    ramp_shape: str = "linear",
    stop_epoch: int | None = None,
) -> float:
    """Schedule strength ``s`` in ``[0, 1]`` at a fractional epoch ``progress`` (0-based).

    ``s`` is 0 before ``ramp_start_epoch``, rises to 1 over ``ramp_epochs`` epochs (linearly or
    along half a cosine; ``ramp_epochs == 0`` jumps straight to 1) and is 0 again from epoch
    ``stop_epoch`` on (compared with the whole epoch number).

    Example:
        >>> ramp_strength(1.5, ramp_start_epoch=1, ramp_epochs=2)
        0.25
    """
    C.choice("ramp_shape", ramp_shape, RAMP_SHAPES)
    if stop_epoch is not None and math.floor(progress) >= stop_epoch:
        return 0.0
    t = progress - ramp_start_epoch
    if t < 0:
        return 0.0
    if ramp_epochs == 0:
        return 1.0
    r = min(t / ramp_epochs, 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * r) if ramp_shape == "cosine" else r
