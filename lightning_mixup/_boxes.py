"""Detection targets under MixUp and CutMix: boxes, labels and per-box weights.

Targets follow torchvision's detection convention: a list of ``B`` dicts, one per image, with
``"boxes"`` (``(N, 4)`` float ``xyxy`` pixels) and ``"labels"`` (``(N,)`` int64). Images are a
``(B, C, H, W)`` tensor or a list of ``B`` ``(C, H, W)`` tensors, possibly of different sizes.
Everything a mix needs comes from a :class:`~lightning_mixup.policies.MixParams` (λ is the share
of the sample itself, ``j = partner[i]``); nothing here draws a random number. The rules (which
boxes MixUp and CutMix keep, their ``"weights"``, the other per-box entries carried along or
refused, images of different sizes) are those of the detection guide, ``docs/detection.md``.

Example:
    >>> import numpy as np
    >>> from lightning_mixup.policies import CutMix
    >>> images = torch.rand(2, 3, 32, 32)
    >>> targets = [{"boxes": torch.tensor([[2.0, 2.0, 10.0, 10.0]]), "labels": torch.tensor([1])},
    ...            {"boxes": torch.tensor([[20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([2])}]
    >>> params = CutMix(1.0).sample(detection_shape(images), np.random.default_rng(0))
    >>> images, targets = mix_detection(images, targets, params)
    >>> sorted(targets[0])
    ['boxes', 'labels', 'weights']
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as nnf

from lightning_mixup import _checks as C
from lightning_mixup.policies import MixParams, mix_features

__all__ = [
    "GEOMETRIC_KEYS",
    "MIN_VISIBLE",
    "check_detection_batch",
    "check_detection_targets",
    "detection_shape",
    "image_sizes",
    "is_detection_targets",
    "mix_detection",
    "mix_detection_images",
    "mix_detection_targets",
]

#: Default ``min_visible``: the share of a box's area that CutMix must leave visible to keep it.
MIN_VISIBLE = 0.5
#: Per-box entries holding pixels or coordinates, which a mix would have to move: refused.
GEOMETRIC_KEYS = ("masks", "keypoints")
BOXES, LABELS, WEIGHTS = "boxes", "labels", "weights"

Images = Tensor | Sequence[Tensor]
Size = tuple[int, int]
#: A CutMix region in pixels, ``(x1, y1, x2, y2)``.
Region = tuple[int, int, int, int]


# ---------------------------------------------------------------------------- recognising, checking
def is_detection_targets(target: Any) -> bool:
    """Whether ``target`` has the form (not checked contents) of detection targets: dicts in a list.

    Example:
        >>> is_detection_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
        True
        >>> is_detection_targets(torch.zeros(4, dtype=torch.long))
        False
    """
    return (
        isinstance(target, (list, tuple))
        and len(target) > 0
        and all(isinstance(t, Mapping) for t in target)
    )


def check_detection_targets(targets: Any, batch_size: int | None = None) -> None:
    """Check the form of detection targets (not the box values): raise a clear error if wrong.

    Args:
        targets: A list of dicts, one per image.
        batch_size: The number of images, when known.

    Raises:
        TypeError: If ``targets`` is not a list/tuple of dicts, or an entry is not a tensor of
            the right dtype.
        ValueError: If the number of targets differs from ``batch_size``, ``"boxes"`` or
            ``"labels"`` is missing or misshapen (or the boxes are torchvision ``BoundingBoxes``
            in another format than XYXY), the targets disagree on their keys, or an entry cannot
            be carried through a mix.
    """
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, Mapping) for t in targets):
        raise TypeError(
            "Detection targets must be a list with one dict per image (torchvision's form: "
            f'`{{"boxes": (N, 4) float, "labels": (N,) int64}}`), got {_describe(targets)}.'
        )
    if batch_size is not None and len(targets) != batch_size:
        raise ValueError(
            f"Detection targets must hold one dict per image: {batch_size} images, got "
            f"{len(targets)} targets."
        )
    keys = set(targets[0]) if targets else set()
    for i, target in enumerate(targets):
        if set(target) != keys:
            raise ValueError(
                f"Every detection target must hold the same keys, so that a mix can join them: "
                f"targets[0] has {sorted(map(str, keys))} but targets[{i}] has "
                f"{sorted(map(str, target))}."
            )
        _check_target(target, i)
    for key in keys - {BOXES, LABELS, WEIGHTS}:
        first = targets[0][key]
        for i, target in enumerate(targets):
            value = target[key]
            if value.shape[1:] != first.shape[1:] or value.dtype != first.dtype:
                raise ValueError(
                    f"targets[i][{key!r}] must have the same dtype and shape past the first "
                    f"dimension in every target, so that a mix can join them: targets[0] has "
                    f"{first.dtype} {tuple(first.shape)}, targets[{i}] {value.dtype} "
                    f"{tuple(value.shape)}."
                )


def _check_target(target: Mapping, i: int) -> None:
    for key in (BOXES, LABELS):
        if key not in target:
            raise ValueError(
                f'Every detection target needs "boxes" and "labels"; targets[{i}] has no '
                f"{key!r} (its keys: {sorted(map(str, target))})."
            )
    boxes, labels = target[BOXES], target[LABELS]
    if not isinstance(boxes, Tensor) or not boxes.is_floating_point():
        raise TypeError(
            f'targets[{i}]["boxes"] must be a floating point tensor of (N, 4) xyxy pixel '
            f"boxes, got {_describe(boxes)}; use `.float()`."
        )
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f'targets[{i}]["boxes"] must have shape (N, 4), got {tuple(boxes.shape)}; an image '
            "without boxes has `torch.zeros(0, 4)`."
        )
    # torchvision's BoundingBoxes say how they are written; a mix reads xyxy.
    written = getattr(boxes, "format", "XYXY")
    written = str(getattr(written, "name", written))
    if written.upper() != "XYXY":
        raise ValueError(
            f'targets[{i}]["boxes"] are {written} boxes, but a mix reads them as (x1, y1, x2, y2) '
            "pixels; convert them with `torchvision.ops.box_convert(boxes, in_fmt, 'xyxy')` or "
            "`torchvision.transforms.v2.ConvertBoundingBoxFormat('XYXY')`."
        )
    n = boxes.shape[0]
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
        raise TypeError(
            f'targets[{i}]["labels"] must be an int64 tensor of class indices, got '
            f"{_describe(labels)}; use `.long()`."
        )
    if tuple(labels.shape) != (n,):
        raise ValueError(
            f'targets[{i}]["labels"] must have shape (N,) = ({n},), one label per box, got '
            f"{tuple(labels.shape)}."
        )
    weights = target.get(WEIGHTS)
    if weights is not None and (
        not isinstance(weights, Tensor)
        or not weights.is_floating_point()
        or tuple(weights.shape) != (n,)
    ):
        raise ValueError(
            f'targets[{i}]["weights"] must be a floating point tensor of shape (N,) = ({n},), '
            f"one weight per box, got {_describe(weights)}."
        )
    for key, value in target.items():
        if key in (BOXES, LABELS, WEIGHTS):
            continue
        if key in GEOMETRIC_KEYS:
            raise ValueError(
                f"targets[{i}][{key!r}] holds pixels or coordinates that a mix would have to "
                f"move or cut, which is not supported; remove {key!r} from the training targets."
            )
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != n:
            raise ValueError(
                f"targets[{i}][{key!r}] cannot be carried through a mix: entries besides "
                f'"boxes", "labels" and "weights" must be per-box tensors whose first dimension '
                f"is the number of boxes ({n}), got {_describe(value)}; remove {key!r} from the "
                "training targets."
            )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)) and value:
        return f"a {type(value).__name__} of {type(value[0]).__name__}"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def image_sizes(images: Images) -> list[Size]:
    """The ``(H, W)`` of every image of a ``(B, C, H, W)`` tensor or a list of ``(C, H, W)``.

    Raises:
        TypeError: If ``images`` is neither, or an image is not a floating point tensor.
        ValueError: If the images are not 2-D with channels, or disagree on the channels.
    """
    if isinstance(images, Tensor):
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                "Detection images must be a floating point (B, C, H, W) tensor or a list of "
                f"(C, H, W) tensors, got {_describe(images)}."
            )
        return [(images.shape[2], images.shape[3])] * images.shape[0]
    if not isinstance(images, (list, tuple)) or not all(isinstance(x, Tensor) for x in images):
        raise TypeError(
            "Detection images must be a floating point (B, C, H, W) tensor or a list of "
            f"(C, H, W) tensors, got {_describe(images)}."
        )
    for i, x in enumerate(images):
        if x.ndim != 3 or not x.is_floating_point():
            raise ValueError(
                f"Every image in a list must be a floating point (C, H, W) tensor, got "
                f"{_describe(x)} at position {i}."
            )
        if x.shape[0] != images[0].shape[0]:
            raise ValueError(
                f"Every image in a list must have the same number of channels: image 0 has "
                f"{images[0].shape[0]}, image {i} has {x.shape[0]}."
            )
    return [tuple(x.shape[1:]) for x in images]


def detection_shape(images: Images) -> tuple[int, int, int, int]:
    """The shape to draw a batch's parameters for: ``(B, C, H, W)``, smallest ``H`` and ``W``.

    For a list of images of different sizes that is their common top-left overlap.

    Example:
        >>> detection_shape([torch.zeros(3, 40, 30), torch.zeros(3, 20, 50)])
        (2, 3, 20, 30)
    """
    sizes = image_sizes(images)
    if not sizes:
        raise ValueError("A detection batch needs at least one image, got none.")
    channels = images.shape[1] if isinstance(images, Tensor) else images[0].shape[0]
    return (len(sizes), channels, min(h for h, _ in sizes), min(w for _, w in sizes))


def check_detection_batch(images: Images, targets: Any, check_values: bool = True) -> list[Size]:
    """Check images and their detection targets; return every image's ``(H, W)``.

    Args:
        images: ``(B, C, H, W)`` floating tensor or a list of ``B`` ``(C, H, W)`` ones.
        targets: ``B`` dicts (see :func:`check_detection_targets`).
        check_values: Also check every box: finite, ``x1 < x2``, ``y1 < y2``, inside its image
            (``0 ≤ x1``, ``x2 ≤ W``, ``0 ≤ y1``, ``y2 ≤ H``). This reads one value back from the
            boxes' device.

    Raises:
        TypeError: See :func:`check_detection_targets` and :func:`image_sizes`.
        ValueError: As there, and for an invalid box (the message names the image and the box).
    """
    sizes = image_sizes(images)
    check_detection_targets(targets, len(sizes))
    if check_values:
        boxes = [target[BOXES] for target in targets]
        if sum(len(b) for b in boxes):
            # float32 or wider, so that neither a box nor an image size is rounded.
            dtype = functools.reduce(torch.promote_types, [b.dtype for b in boxes], torch.float32)
            every = torch.cat([b.to(boxes[0].device, dtype) for b in boxes])
            limits = torch.tensor(
                [[w, h] for (h, w), b in zip(sizes, boxes) for _ in range(len(b))],
                dtype=every.dtype,
            ).to(every.device)
            if not bool(_valid(every, limits).all()):
                _raise_invalid([b.to(dtype) for b in boxes], sizes)
    return sizes


def _valid(boxes: Tensor, limits: Tensor) -> Tensor:
    """Per box: finite, ``x1 < x2``, ``y1 < y2``, inside ``[0, W] × [0, H]`` (``limits``)."""
    low, high = boxes[:, :2], boxes[:, 2:]
    return ((low >= 0) & (low < high) & (high <= limits)).all(1) & torch.isfinite(boxes).all(1)


def _raise_invalid(boxes: list[Tensor], sizes: list[Size]) -> None:
    for i, (b, (h, w)) in enumerate(zip(boxes, sizes)):
        bad = (~_valid(b, b.new_tensor([w, h]))).nonzero().flatten()
        if len(bad):
            k = int(bad[0])
            raise ValueError(
                f'targets[{i}]["boxes"][{k}] = {b[k].tolist()} is not a valid box for its '
                f"{h}×{w} image: boxes must be finite xyxy pixels with x1 < x2, y1 < y2, "
                f"0 ≤ x1, x2 ≤ {w}, 0 ≤ y1, y2 ≤ {h}; clip them with "
                "`torchvision.ops.clip_boxes_to_image` and drop the empty ones."
            )


# ---------------------------------------------------------------------------- mixing
def mix_detection(
    images: Images,
    targets: Sequence[Mapping[str, Tensor]],
    params: MixParams,
    min_visible: float = MIN_VISIBLE,
    check_values: bool = True,
) -> tuple[Images, list[dict[str, Tensor]]]:
    """Check and mix a detection batch out of place: ``(mixed images, mixed targets)``.

    The images as :func:`mix_detection_images` mixes them, the targets as
    :func:`mix_detection_targets` does; nothing passed in is written.

    Args:
        images: ``(B, C, H, W)`` floating tensor or a list of ``B`` ``(C, H, W)`` ones.
        targets: ``B`` target dicts.
        params: The batch's parameters, drawn for :func:`detection_shape` of ``images``.
        min_visible: Share of a box's area that must stay visible for CutMix to keep it.
        check_values: Check every box before mixing (see :func:`check_detection_batch`).

    Raises:
        TypeError: If the batch has the wrong form (see :func:`check_detection_batch`).
        ValueError: If a box is invalid, an entry cannot be carried, or ``params`` does not fit.
    """
    sizes = check_detection_batch(images, targets, check_values)
    return (
        mix_detection_images(images, params),
        mix_detection_targets(targets, params, sizes, min_visible),
    )


def mix_detection_images(images: Images, params: MixParams) -> Images:
    """Mix detection images out of place with ``params``.

    A tensor is mixed by :func:`~lightning_mixup.policies.mix_features`. In a list, an unmixed
    image is returned as it is (the same tensor); a blended pair is mixed the same way on the
    canvas of its larger size; a cut image is a copy with the partner's pixels pasted.

    Raises:
        ValueError: If ``params`` holds another number of samples, or regions that are not 2-D.
    """
    sizes = image_sizes(images)
    _check_params(params, len(sizes))
    if isinstance(images, Tensor):
        return mix_features(images, params)
    out = list(images)
    for i, (j, lam, region) in enumerate(_plan(params, sizes)):
        x = images[i]
        if j == i:
            continue
        if region is None:
            height, width = max(sizes[i][0], sizes[j][0]), max(sizes[i][1], sizes[j][1])
            wide = torch.float64 if x.dtype == torch.float64 else torch.float32
            own, other = (_pad(images[k].to(wide), height, width) for k in (i, j))
            share = torch.tensor(1.0 - lam, dtype=wide)  # 1 - λ in float64, then as mix_features
            out[i] = torch.lerp(own, other.to(own.device), share.to(own.device)).to(x.dtype)
        else:
            c0, r0, c1, r1 = region
            out[i] = x.clone()
            out[i][:, r0:r1, c0:c1] = images[j][:, r0:r1, c0:c1].to(x.device, x.dtype)
    return out


def _pad(x: Tensor, height: int, width: int) -> Tensor:
    """``x`` at the top left of a ``height × width`` canvas of zeros."""
    return nnf.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))


def mix_detection_targets(
    targets: Sequence[Mapping[str, Tensor]],
    params: MixParams,
    image_sizes: Sequence[Sequence[int]],
    min_visible: float = MIN_VISIBLE,
) -> list[dict[str, Tensor]]:
    """Mix detection targets with ``params`` into new dicts, by the rules of ``docs/detection.md``.

    Every result has float32 ``"weights"``, unmixed samples too, so clean and mixed targets join.

    Args:
        targets: ``B`` target dicts, boxes valid for their images (see
            :func:`check_detection_batch`, which also returns ``image_sizes``).
        params: The batch's parameters.
        image_sizes: ``(H, W)`` of every image *before* mixing (a CutMix region is clipped to
            both images of its pair).
        min_visible: Share of a box's area, in ``(0, 1]``, that must stay visible for CutMix
            to keep it.

    Raises:
        TypeError: If the targets have the wrong form.
        ValueError: If an entry cannot be carried, ``min_visible`` is out of range, or ``params``
            or ``image_sizes`` hold another number of samples.

    Example:
        >>> from lightning_mixup.policies import MixUp
        >>> import numpy as np
        >>> targets = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([k])}
        ...            for k in (1, 2)]
        >>> params = MixUp(1.0).sample((2, 1, 8, 8), np.random.default_rng(0))
        >>> mixed = mix_detection_targets(targets, params, [(8, 8)] * 2)
        >>> mixed[0]["labels"].tolist(), float(mixed[0]["weights"].sum())
        ([1, 2], 1.0)
    """
    rule = " (the share of a box that must stay visible)"
    min_visible = C.number("min_visible", min_visible, 0.0, 1.0, open_low=True, hint=rule)
    check_detection_targets(targets)
    if len(image_sizes) != len(targets):
        raise ValueError(
            f"`image_sizes` must hold one (H, W) per target: {len(targets)} targets, got "
            f"{len(image_sizes)} sizes."
        )
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    _check_params(params, len(targets))
    out = []
    for i, (j, lam, region) in enumerate(_plan(params, sizes)):
        own = _weighted(targets[i], lam)
        if j != i:
            other = _weighted(targets[j], 1.0 - lam if region is None else 1.0, own[BOXES])
            own = _join(own, other) if region is None else _cut(own, other, region, min_visible)
        out.append(own)
    return out


def _check_params(params: MixParams, batch_size: int) -> None:
    if not isinstance(params, MixParams):
        raise TypeError(f"`params` must be a MixParams, got {type(params).__name__}.")
    if len(params.partner) != batch_size:
        raise ValueError(
            f"`params` were drawn for {len(params.partner)} samples but the batch holds "
            f"{batch_size}; draw them for `detection_shape(images)`."
        )
    if params.lo is not None and params.lo.shape[1] != 2:
        raise ValueError(
            f"Detection CutMix needs regions over 2 spatial dimensions (H, W), got params drawn "
            f"for {params.lo.shape[1]}; draw them for `detection_shape(images)`."
        )


def _plan(params: MixParams, sizes: list[Size]) -> Iterator[tuple[int, float, Region | None]]:
    """Per sample: ``(partner, λ, xyxy region)``; partner itself and λ 1 when it stays unmixed.

    A blend has no region; a cut has λ 1 and its region clipped to both images of the pair.
    """
    partner, lam, cut = params.partner.tolist(), params.lam.tolist(), params.cut.tolist()
    # Cuts exist only in params drawn with regions (``lo``/``hi``).
    lo: list[list[int]] = [] if params.lo is None else params.lo.tolist()
    hi: list[list[int]] = [] if params.hi is None else params.hi.tolist()
    for i, j in enumerate(partner):
        if params.identity or j == i or lam[i] >= 1.0:
            yield i, 1.0, None
        elif not cut[i]:
            yield j, lam[i], None
        else:
            r1 = min(hi[i][0], sizes[i][0], sizes[j][0])
            c1 = min(hi[i][1], sizes[i][1], sizes[j][1])
            r0, c0 = lo[i]
            if r0 >= r1 or c0 >= c1:  # nothing of the partner lands inside this image
                yield i, 1.0, None
            else:
                yield j, 1.0, (c0, r0, c1, r1)


def _weighted(
    target: Mapping[str, Tensor], weight: float, like: Tensor | None = None
) -> dict[str, Tensor]:
    """A shallow copy of ``target``, float32 ``"weights"`` times ``weight``, boxes ``like``'s."""
    like = target[BOXES] if like is None else like
    out = {key: value.to(like.device) for key, value in target.items()}
    out[BOXES] = out[BOXES].to(like.dtype)
    given = target.get(WEIGHTS)
    if given is None:
        given = like.new_ones(len(out[BOXES]), dtype=torch.float32)
    out[WEIGHTS] = given.to(like.device, torch.float32) * weight
    return out


def _join(own: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, Tensor]:
    """The sample's entries, then the partner's, box by box."""
    return {key: torch.cat([own[key], other[key]]) for key in own}


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _cut(
    own: dict[str, Tensor], other: dict[str, Tensor], region: Region, min_visible: float
) -> dict[str, Tensor]:
    """The sample's boxes left visible outside ``region``, then the partner's clipped to it."""
    boxes = own[BOXES]
    wide = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    edge = torch.tensor(region, dtype=wide, device=boxes.device)

    def clip(b: Tensor) -> Tensor:
        return torch.cat([torch.maximum(b[:, :2], edge[:2]), torch.minimum(b[:, 2:], edge[2:])], 1)

    mine, theirs = boxes.to(wide), other[BOXES].to(wide)
    area = _area(mine)
    keep_own = area - _area(clip(mine)) >= min_visible * area
    clipped = clip(theirs)
    inside = _area(clipped)
    keep_other = (inside > 0) & (inside >= min_visible * _area(theirs))
    own_kept = {key: value[keep_own] for key, value in own.items()}
    other_kept = {key: value[keep_other] for key, value in other.items()}
    other_kept[BOXES] = clipped[keep_other].to(boxes.dtype)
    return _join(own_kept, other_kept)
