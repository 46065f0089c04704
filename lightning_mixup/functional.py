"""Pure tensor maths for MixUp and CutMix: no Lightning import, no global RNG.

Every random function takes an explicit :class:`numpy.random.Generator`. The few random numbers
a batch needs (partners, λ, boxes) are drawn on the CPU — with NumPy, whose one call per draw
costs a microsecond where the same draws from ``torch`` ops cost about a hundred — and then
moved to the batch's device as tensors, so a run repeats itself exactly whatever the device.

Conventions used throughout:

* **λ is the weight of the sample itself.** A mixed sample is ``λ·x_i + (1-λ)·x_j`` and its
  target ``λ·y_i + (1-λ)·y_j``, where ``j = partner[i]``. For CutMix, λ is the fraction of the
  sample's own pixels that are kept (after the box is clipped to the input).
* **Pairing.** ``partner`` is a random perfect matching drawn from the generator: the batch is
  shuffled and consecutive samples of the shuffled order swap partners, so every sample's partner
  is uniformly random among the other samples and ``partner[partner[i]] == i``. With an odd batch
  size one uniformly chosen sample is its own partner and is left unchanged; a batch of one is
  never mixed.

Two implementations, one result. On the CPU, :meth:`~lightning_mixup.policies.MixUp.apply` mixes
contiguous float32/float64 batches with a small compiled kernel (``lightning_mixup/_kernel.c``,
built by ``pip install`` when a C compiler is present) that reads and writes each pair of samples
once, like a copy. Everywhere else (GPUs, bf16/fp16, strided tensors, an install without a
compiler) torch ops give the same mix (:func:`mix_`, :func:`mix_targets`); blends agree to
rounding and CutMix pixels bit for bit. :data:`HAS_KERNEL` says whether the kernel was built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_mixup import _checks as C

try:
    from lightning_mixup import _kernel
except ImportError:  # installed without a C compiler: torch ops do the same work
    _kernel = None
if os.environ.get("LIGHTNING_MIXUP_KERNEL", "1") == "0":  # run the torch-ops path on purpose
    _kernel = None

__all__ = [
    "HAS_KERNEL",
    "cutmix_boxes",
    "cutmix_weights",
    "mix_",
    "mix_targets",
    "ramp_strength",
    "sample_beta",
    "sample_partners",
    "soft_targets",
    "to_device",
]


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def soft_targets(
    target: Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
    dtype: torch.dtype = torch.float32,
    check_range: bool = True,
) -> Tensor:
    """Turn class indices into (optionally smoothed) probability rows; pass 2-D targets through.

    Args:
        target: ``(B,)`` integer class indices in ``[0, num_classes)``, or ``(B, num_classes)``
            floating soft / multi-hot targets, which are returned converted to ``dtype`` and
            otherwise unchanged (label smoothing applies to class indices only).
        num_classes: Number of classes ``K``.
        label_smoothing: ε in ``[0, 1]``: the true class gets ``1 - ε + ε/K``, every other ``ε/K``.
        dtype: Floating dtype of the result (float32 by default, whatever the input precision).
        check_range: Raise a ``ValueError`` for class indices outside ``[0, num_classes)``. The
            check reads a value back from the device; with False an accelerator's own bounds
            check in ``scatter_`` still stops the run on a bad index.

    Returns:
        A ``(B, num_classes)`` tensor on ``target``'s device.

    Raises:
        ValueError: If the shape, the class range or ``num_classes`` is wrong.
        TypeError: If 1-D targets are not integers, or 2-D targets are not floating point.

    Example:
        >>> soft_targets(torch.tensor([0, 2]), 3, label_smoothing=0.3)
        tensor([[0.8000, 0.1000, 0.1000],
                [0.1000, 0.1000, 0.8000]])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
    C.number("label_smoothing", label_smoothing, 0.0, 1.0)
    if target.ndim == 2:
        if not target.is_floating_point():
            raise TypeError(
                "2-D targets must be floating point soft or multi-hot rows, got dtype "
                f"{target.dtype}; pass class indices as a 1-D integer tensor instead."
            )
        if target.shape[1] != num_classes:
            raise ValueError(
                f"2-D targets must have `num_classes` = {num_classes} columns, got shape "
                f"{tuple(target.shape)}."
            )
        return target.to(dtype)
    if target.ndim != 1:
        raise ValueError(
            "Targets must be class indices of shape (B,) or soft targets of shape "
            f"(B, num_classes), got shape {tuple(target.shape)}."
        )
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"1-D targets must be integer class indices, got dtype {target.dtype}; "
            "use `.long()` on the labels, or pass (B, num_classes) soft targets."
        )
    on_cpu = target.device.type == "cpu"
    labels = target.numpy() if on_cpu else target
    if check_range and target.numel() and not 0 <= labels.min() <= labels.max() < num_classes:
        bad = target[(target < 0) | (target >= num_classes)]
        raise ValueError(
            f"Class indices must lie in [0, num_classes) = [0, {num_classes}), got values "
            f"{bad[:5].tolist()}; check `num_classes` and the dataset's labels."
        )
    off = label_smoothing / num_classes
    if on_cpu and dtype in _NUMPY_FLOATS:
        # NumPy's small-array calls cost a fraction of torch's; same values.
        rows = np.full((target.shape[0], num_classes), off, dtype=_NUMPY_FLOATS[dtype])
        rows[np.arange(target.shape[0]), labels] = 1.0 - label_smoothing + off
        return torch.from_numpy(rows)
    out = torch.full((target.shape[0], num_classes), off, dtype=dtype, device=target.device)
    out.scatter_(1, target.long().unsqueeze(1), 1.0 - label_smoothing + off)
    return out


def sample_beta(alpha: float, n: int, generator: np.random.Generator) -> Tensor:
    """Draw ``n`` samples of λ ~ Beta(α, α) from ``generator`` (float64, on the CPU).

    ``alpha == 0`` returns ones (no mixing); a very small α gives λ at (or next to) 0 or 1.

    Args:
        alpha: Concentration α ≥ 0.
        n: Number of samples.
        generator: The generator that supplies every random number.

    Returns:
        A float64 tensor of shape ``(n,)`` with values in ``[0, 1]``.

    Example:
        >>> lam = sample_beta(1.0, 4, np.random.default_rng(0))
        >>> bool(((lam >= 0) & (lam <= 1)).all())
        True
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"`alpha` must be a number >= 0, got {alpha!r}.")
    return torch.from_numpy(_beta(float(alpha), n, generator))


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
    partner = np.arange(n)  # an odd batch's last shuffled sample keeps itself
    even = n - n % 2
    partner[order[0:even:2]] = order[1:even:2]
    partner[order[1:even:2]] = order[0:even:2]
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
    lo, hi, kept = _boxes(np.asarray(lam, dtype=np.float64), spatial, generator)
    return torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy(kept)


def _boxes(
    lam: np.ndarray, spatial: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.array([int(s) for s in spatial], dtype=np.float64)
    if not 1 <= len(sizes) <= 3:
        raise ValueError(
            f"CutMix needs inputs of shape (B, C, *spatial) with 1 to 3 spatial dimensions, "
            f"got {len(sizes)} spatial dimensions."
        )
    ratio = np.clip(1.0 - lam, 0.0, 1.0) ** (1.0 / len(sizes))
    half = np.round(ratio[:, None] * sizes / 2.0)
    # A centre drawn uniformly from the integer positions 0..size-1 of every dimension.
    centre = np.floor(rng.random((len(lam), len(sizes))) * sizes)
    lo = np.maximum(centre - half, 0.0)
    hi = np.minimum(centre + half, sizes)
    kept = 1.0 - (hi - lo).prod(axis=1) / sizes.prod()
    return lo.astype(np.int64), hi.astype(np.int64), kept


def _box(lam: float, spatial: Sequence[int], rng: np.random.Generator) -> tuple[list, list, float]:
    """:func:`_boxes` for one λ with Python numbers: the same draws, a fraction of the calls."""
    sizes = [int(s) for s in spatial]
    if not 1 <= len(sizes) <= 3:
        _boxes(np.array([lam]), sizes, rng)  # raises the shared error
    ratio = min(max(1.0 - lam, 0.0), 1.0) ** (1.0 / len(sizes))
    lo, hi = [], []
    for size, u in zip(sizes, rng.random(len(sizes)).tolist()):
        half, centre = round(ratio * size / 2.0), math.floor(u * size)
        lo.append(max(centre - half, 0))
        hi.append(min(centre + half, size))
    return lo, hi, 1.0 - math.prod(b - a for a, b in zip(lo, hi)) / math.prod(sizes)


def cutmix_weights(lo: Tensor, hi: Tensor, spatial: Sequence[int]) -> Tensor:
    """Partner-weight masks for CutMix: 1 inside each box, 0 outside.

    Args:
        lo: ``(n, d)`` lower corners (inclusive) on the target device.
        hi: ``(n, d)`` upper corners (exclusive) on the target device.
        spatial: Spatial sizes ``(S_1, ..., S_d)``.

    Returns:
        A boolean tensor of shape ``(n, 1, *spatial)`` that broadcasts over channels.
    """
    n, d = lo.shape
    mask = torch.ones((n, *spatial), dtype=torch.bool, device=lo.device)
    for k, size in enumerate(spatial):
        pos = torch.arange(size, device=lo.device)
        inside = (pos >= lo[:, k : k + 1]) & (pos < hi[:, k : k + 1])
        shape = [n] + [1] * d
        shape[k + 1] = size
        mask &= inside.view(shape)
    return mask.unsqueeze(1)


# On the CPU, samples at least this large are mixed pair by pair (see `mix_`).
PAIRWISE_MIN_SAMPLE_BYTES = 128 << 10


def mix_(
    x: Tensor, partner: Tensor, weight: Tensor | float, buffer: Tensor | None = None
) -> Tensor:
    """Mix a batch in place: ``x[i] ← (1 - w_i)·x[i] + w_i·x[partner[i]]``.

    ``w`` is the partner's share, ``1 - λ``. ``torch.lerp`` computes the blend, and it is exact
    at ``w = 0`` and ``w = 1``, so CutMix pixels are copied bit for bit from one of the two samples.

    Two ways, one result: small samples (or any on an accelerator) gather all partners into
    ``buffer`` and blend in one pass. Large samples on the CPU with a symmetric pairing
    (``partner[partner[i]] == i``, as :func:`sample_partners` draws) are mixed one pair at a time,
    both members at once through one sample-sized scratch slice of ``buffer`` that stays in
    cache, so the batch is read and written about once, like a copy.

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
    if (
        buffer is not None
        and x.device.type == "cpu"
        and len(x) > 1
        and x[0].nbytes >= PAIRWISE_MIN_SAMPLE_BYTES
    ):
        first = (partner > torch.arange(len(partner))).nonzero().flatten()
        second = partner[first]
        if torch.equal(partner[second], first):
            return _mix_pairs_(x, first, second, weight, buffer)
    if buffer is None:
        partners = x.index_select(0, partner)
    else:
        partners = torch.index_select(x, 0, partner, out=buffer)
    return x.lerp_(partners, weight)


def _mix_pairs_(
    x: Tensor, first: Tensor, second: Tensor, weight: Tensor | float, buffer: Tensor
) -> Tensor:
    """Mix each pair ``(first[k], second[k])`` of ``x`` in place through ``buffer[0]``."""
    scratch = buffer[0]
    per_sample = isinstance(weight, Tensor)
    for a, b in zip(first.tolist(), second.tolist()):
        xa, xb = x[a], x[b]
        wa, wb = (weight[a], weight[b]) if per_sample else (weight, weight)
        torch.lerp(xa, xb, wa, out=scratch)
        xb.lerp_(xa, wb)
        xa.copy_(scratch)
    return x


#: True when the compiled pairwise kernel (``lightning_mixup._kernel``) was built at install time
#: and not switched off with the environment variable ``LIGHTNING_MIXUP_KERNEL=0``; without it CPU
#: batches are mixed with torch ops, which give the same result more slowly.
HAS_KERNEL = _kernel is not None
_KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernel_ready(t: Tensor) -> bool:
    """Whether the kernel can work on ``t`` in place: a contiguous float32/float64 CPU tensor."""
    return _kernel is not None and t.is_cpu and t.dtype in _KERNEL_DTYPES and t.is_contiguous()


def _fits(t: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    return t.is_cpu and t.dtype == dtype and t.shape == shape and t.is_contiguous()


def _misfit(arrays: dict[str, tuple[Tensor, torch.dtype, tuple[int, ...]]]) -> ValueError:
    """The error for the first of ``arrays`` that is not a contiguous CPU tensor as described."""
    for name, (t, dtype, shape) in arrays.items():
        if not _fits(t, dtype, shape):
            return ValueError(
                f"`{name}` must be a contiguous CPU tensor of dtype {dtype} and shape {shape}, "
                f"got dtype {t.dtype}, shape {tuple(t.shape)} on {t.device}."
            )
    raise AssertionError("every array fits")  # pragma: no cover - callers check first


def _kernel_mix_(
    x: Tensor,
    partner: Tensor,
    lam: Tensor,
    cut: Tensor | None = None,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    target: Tensor | None = None,
) -> bool:
    """Mix a CPU batch (and its targets) in place in one pass of the compiled kernel.

    The result is :func:`mix_`'s and :func:`mix_targets`'s for a symmetric pairing: sample ``i``
    keeps ``lam[i]`` of itself and takes ``1 - lam[i]`` of ``partner[i]``, or, where ``cut[i]``,
    takes its partner's pixels inside its box ``[lo[i], hi[i])`` and keeps its own outside it.
    Each pair is read and written once, so the call costs about one copy of the batch.

    Args:
        x: ``(B, ...)`` contiguous float32/float64 CPU batch (``(B, C, *spatial)`` with 1-3
            spatial dimensions when boxes are given), mixed in place.
        partner: ``(B,)`` int64 partner indices; must satisfy ``partner[partner[i]] == i``.
        lam: ``(B,)`` float64 share each sample keeps of itself.
        cut: Optional ``(B,)`` bool, True where the sample gets a box; needs ``lo`` and ``hi``.
        lo: ``(B, d)`` int64 inclusive box corners.
        hi: ``(B, d)`` int64 exclusive box corners.
        target: Optional ``(B, K)`` contiguous float32/float64 CPU targets, blended in place with
            the same partners and ``lam``.

    All of ``partner``, ``lam``, ``cut``, ``lo`` and ``hi`` are contiguous CPU tensors, as
    :meth:`~lightning_mixup.policies.MixUp.sample` makes them.

    Returns:
        True when mixed; False, with nothing changed, when ``partner`` is not a symmetric
        pairing of the batch (the caller falls back to :func:`mix_`).

    Raises:
        ValueError: If a tensor has the wrong shape, dtype, device or layout, or a box of a
            paired sample leaves its sample.
    """
    n = x.shape[0]
    if not (_kernel_ready(x) and x.ndim and (target is None or _kernel_ready(target))):
        raise ValueError(
            "The kernel mixes contiguous float32/float64 CPU tensors; got inputs of dtype "
            f"{x.dtype} on {x.device}"
            + ("" if target is None else f" and targets of dtype {target.dtype} on {target.device}")
            + "."
        )
    vector = (n,)
    if not (_fits(partner, torch.int64, vector) and _fits(lam, torch.float64, vector)):
        raise _misfit(
            {"partner": (partner, torch.int64, vector), "lam": (lam, torch.float64, vector)}
        )
    rows = (0, 0, 1)
    if target is not None:
        if target.ndim != 2 or target.shape[0] != n:
            raise ValueError(f"`target` must have shape ({n}, K), got {tuple(target.shape)}.")
        rows = (target.data_ptr(), target.dtype == torch.float64, max(target.shape[1], 1))
    head = (x.data_ptr(), x.dtype == torch.float64, n)
    if cut is None:
        return _kernel.mix_pairs(
            *head, 1, 1, 1, x.numel() // n if n else 1,
            partner.data_ptr(), lam.data_ptr(), 0, 0, 0, 1, *rows,
        )  # fmt: skip
    spatial = tuple(x.shape[2:])
    d = len(spatial)
    if not 1 <= d <= 3:
        raise ValueError(
            "Boxes need inputs (B, C, *spatial) with 1-3 spatial dimensions, got inputs of "
            f"shape {tuple(x.shape)}."
        )
    corners = (n, d)
    if not (
        _fits(cut, torch.bool, vector)
        and _fits(lo, torch.int64, corners)
        and _fits(hi, torch.int64, corners)
    ):
        raise _misfit(
            {
                "cut": (cut, torch.bool, vector),
                "lo": (lo, torch.int64, corners),
                "hi": (hi, torch.int64, corners),
            }
        )
    return _kernel.mix_pairs(
        *head, x.shape[1], *(1,) * (3 - d), *spatial,
        partner.data_ptr(), lam.data_ptr(), cut.data_ptr(), lo.data_ptr(), hi.data_ptr(), d, *rows,
    )  # fmt: skip


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
    lam = to_device(lam.to(target.dtype), target.device).unsqueeze(1)
    return torch.lerp(target.index_select(0, partner), target, lam)


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
    if stop_epoch is not None and math.floor(progress) >= stop_epoch:
        return 0.0
    t = progress - ramp_start_epoch
    if t < 0:
        return 0.0
    if ramp_epochs == 0:
        return 1.0
    r = min(t / ramp_epochs, 1.0)
    if ramp_shape == "cosine":
        return 0.5 - 0.5 * math.cos(math.pi * r)
    if ramp_shape == "linear":
        return r
    raise ValueError(f"`ramp_shape` must be 'linear' or 'cosine', got {ramp_shape!r}.")
