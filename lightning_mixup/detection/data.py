"""A detection datamodule made of scikit-learn's real handwritten digits, offline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_mixup._seed import torch_generator
from lightning_mixup.classification.data import _Batches
from lightning_mixup.segmentation.data import (
    _DIGIT_SIZE,
    _MAX_DIGITS,
    INK_THRESHOLD,
    _DigitCanvases,
    _squares,
)

__all__ = ["DigitsDetectionDataModule", "collate_detection"]

Target = dict[str, Tensor]


def collate_detection(samples: Sequence[tuple[Tensor, Target]]) -> list:
    """Collate ``(image, target)`` samples into ``[images (B, C, H, W), list of B targets]``.

    The images are stacked (so they must share one size); the target dicts are kept in a list,
    as torchvision's detection models take them. The datamodule's own loaders fetch whole
    batches in this form already; this is for per-sample access (``dataset[i]``), e.g. inside
    another ``DataLoader``.

    Example:
        >>> sample = (torch.zeros(1, 4, 4), {"boxes": torch.zeros(0, 4),
        ...                                   "labels": torch.zeros(0, dtype=torch.long)})
        >>> images, targets = collate_detection([sample, sample])
        >>> tuple(images.shape), len(targets)
        ((2, 1, 4, 4), 2)
    """
    images, targets = zip(*samples)
    return [torch.stack(images), list(targets)]


class _DetectionBatches(_Batches[list[Target]]):
    """Canvases as one tensor and one target dict per canvas; fetched targets are fresh copies."""

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        return self.images[index], _copy(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [self.images[index], [_copy(self.labels[i]) for i in indices]]


def _copy(target: Target) -> Target:
    return {key: value.clone() for key, value in target.items()}


class DigitsDetectionDataModule(_DigitCanvases):
    """Canvases of 1–3 real handwritten digits, each with its box and class, for detection.

    The digit pools (the same for the same seed), the canvases, their normalisation, the label
    noise and the seeding follow
    :class:`~lightning_mixup.segmentation.DigitsSegmentationDataModule`, except that the digits'
    16×16 squares never overlap: a canvas whose squares overlap has all its positions drawn again.

    **Targets** are torchvision's detection form, one dict per canvas: ``"boxes"``, float32
    ``(N, 4)`` ``(x1, y1, x2, y2)`` pixels, the smallest box holding every *ink* pixel of the digit
    (intensity at least :data:`~lightning_mixup.segmentation.data.INK_THRESHOLD`, 0.25), with
    pixel column ``c`` spanning ``[c, c + 1)``; and ``"labels"``, int64 ``(N,)``: **the digit plus
    one** (1–10), since torchvision's detectors reserve class 0 for the background. So
    ``num_classes`` is 11. Boxes are listed in drawing order. A noisy digit has its wrong class in
    every box where it appears.

    **Batches** are lists ``[images, targets]``: a float32 ``(B, 1, S, S)`` tensor and a list of
    ``B`` target dicts, fetched in one indexing operation (see :func:`collate_detection` for the
    per-sample form).

    Args:
        train_canvases: Number of training canvases.
        val_canvases: Number of validation canvases.
        test_canvases: Number of test canvases.
        canvas_size: Height and width ``S`` of a canvas, at least 48.
        batch_size: Canvases per batch for every split.
        num_workers: DataLoader worker processes (the data is in memory: 0 is fastest).
        label_noise: Fraction in ``[0, 1)`` of training-pool digits relabelled with a wrong class.
        seed: Seed of the split, the label noise and the canvases.
        pin_memory: Pin host memory; None pins only when the Trainer runs on a CUDA device (or,
            outside a Trainer, when CUDA is available).

    Raises:
        ValueError: On an out-of-range argument.
        ImportError: In ``setup``, when scikit-learn is not installed.

    Example::

        dm = DigitsDetectionDataModule(label_noise=0.2)
        trainer.fit(FasterRCNNDetector(num_classes=11), datamodule=dm)
    """

    #: 10 digit classes (labels 1–10) and torchvision's background class 0.
    num_classes = 11
    # Three 16×16 squares always fit side by side; from 48 on, a random placement without overlap
    # is found in a few draws (about one in ten draws fails at 48, fewer on larger canvases).
    _min_canvas = 48
    _dataset = _DetectionBatches

    def __init__(
        self,
        train_canvases: int = 1000,
        val_canvases: int = 200,
        test_canvases: int = 400,
        canvas_size: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        label_noise: float = 0.0,
        seed: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            label_noise=label_noise,
            seed=seed,
            pin_memory=pin_memory,
        )
        self._init_canvases(train_canvases, val_canvases, test_canvases, canvas_size)

    def _draw_layout(self, split: str, pool_size: int, count: int) -> Tensor:
        """``(count, 3, 3)`` rows ``(pool position, top, left)`` of squares that never overlap.

        Canvases whose squares overlap draw all their positions again, from the same stream,
        until none does.
        """
        generator = torch_generator(self.seed, "detection_canvases", split)
        digits_per_canvas = torch.randint(1, _MAX_DIGITS + 1, (count,), generator=generator)
        which = torch.randint(0, pool_size, (count, _MAX_DIGITS), generator=generator)
        used = torch.arange(_MAX_DIGITS) < digits_per_canvas[:, None]
        span = self.canvas_size - _DIGIT_SIZE + 1
        corners = torch.empty(count, _MAX_DIGITS, 2, dtype=torch.long)
        redraw = torch.arange(count)
        while len(redraw):
            corners[redraw] = torch.randint(
                0, span, (len(redraw), _MAX_DIGITS, 2), generator=generator
            )
            gap = (corners[redraw, :, None, :] - corners[redraw, None, :, :]).abs()
            overlap = (gap < _DIGIT_SIZE).all(-1)
            pair_used = used[redraw, :, None] & used[redraw, None, :]
            overlap &= pair_used & ~torch.eye(_MAX_DIGITS, dtype=torch.bool)
            redraw = redraw[overlap.flatten(1).any(1)]
        layout = torch.cat([which[..., None], corners], dim=2)
        return layout.masked_fill_(~used[..., None], -1)

    def _compose(
        self, digits: Tensor, labels: Tensor, layout: Tensor
    ) -> tuple[Tensor, list[Target]]:
        """Paint ``layout`` (pool positions): ``(N, S, S)`` images in [0, 1] and their targets."""
        images = torch.zeros(len(layout), self.canvas_size, self.canvas_size)
        for where, which in _squares(layout):  # the squares never overlap
            images[where] = digits[which]
        return images, _targets(layout, _ink_extents(digits), labels + 1)


def _ink_extents(digits: Tensor) -> Tensor:
    """Per ``(n, D, D)`` digit, the ``(x1, y1, x2, y2)`` of its ink inside its square (int64).

    Every one of the 1,797 digits has ink, so every box is valid.
    """
    ink = digits >= INK_THRESHOLD
    positions = torch.arange(digits.shape[-1])

    def span(present: Tensor) -> tuple[Tensor, Tensor]:
        first = torch.where(present, positions, digits.shape[-1]).amin(1)
        last = torch.where(present, positions, -1).amax(1)
        return first, last + 1

    x1, x2 = span(ink.any(1))
    y1, y2 = span(ink.any(2))
    return torch.stack([x1, y1, x2, y2], dim=1)


def _targets(layout: Tensor, extents: Tensor, labels: Tensor) -> list[Target]:
    """One target dict per canvas of ``layout`` (pool positions), boxes in drawing order."""
    targets = []
    for rows in layout:
        rows = rows[rows[:, 0] >= 0]
        which, top, left = rows.unbind(dim=1)
        corner = torch.stack([left, top, left, top], dim=1)
        targets.append(
            {"boxes": (extents[which] + corner).to(torch.float32), "labels": labels[which]}
        )
    return targets
