"""A segmentation datamodule made of scikit-learn's real handwritten digits, offline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mixup import _checks as C
from lightning_mixup._seed import torch_generator
from lightning_mixup.classification.data import (
    _Batches,
    _ClassificationDataModule,
    _load_digits,
    _split,
    _TensorBatches,
)

__all__ = ["DigitsSegmentationDataModule"]

_DIGIT_CLASSES = 10
_SCALE = 2  # 8×8 digits are upscaled to 16×16 (nearest neighbour: each pixel becomes 2×2)
_DIGIT_SIZE = 8 * _SCALE
_MAX_DIGITS = 3
# The same pool sizes as DigitsDataModule's defaults, with the same seeded split: for one seed, the
# two datamodules hold out the same 300 validation and 300 test digits.
_VAL_DIGITS = 300
_TEST_DIGITS = 300
#: A digit pixel is ink when its intensity, scaled to [0, 1], is at least this (raw value >= 4/16).
INK_THRESHOLD = 0.25


def _squares(layout: Tensor) -> Iterator[tuple[tuple[Tensor, Tensor, Tensor], Tensor]]:
    """Per slot, in drawing order: its digits' squares (a canvas index) and pool positions."""
    offsets = torch.arange(_DIGIT_SIZE)
    for slot in range(_MAX_DIGITS):
        canvas = torch.nonzero(layout[:, slot, 0] >= 0).squeeze(1)
        which, top, left = layout[canvas, slot].unbind(dim=1)
        rows = (top[:, None] + offsets)[:, :, None]
        cols = (left[:, None] + offsets)[:, None, :]
        yield (canvas[:, None, None], rows, cols), which


class _DigitCanvases(_ClassificationDataModule):
    """The digit-canvas datamodules' pools, label noise, layouts and normalisation.

    Subclasses set ``_min_canvas`` and ``_dataset``, paint the canvases in :meth:`_compose` and may
    draw them otherwise in :meth:`_draw_layout`.
    """

    num_classes = _DIGIT_CLASSES + 1
    _min_canvas = _DIGIT_SIZE
    _dataset: type[_Batches[Any]] = _TensorBatches

    def _init_canvases(
        self, train_canvases: int, val_canvases: int, test_canvases: int, canvas_size: int
    ) -> None:
        self.train_canvases = C.positive_integer("train_canvases", train_canvases)
        self.val_canvases = C.positive_integer("val_canvases", val_canvases)
        self.test_canvases = C.positive_integer("test_canvases", test_canvases)
        self.canvas_size = C.integer("canvas_size", canvas_size, self._min_canvas)
        #: Indices into the 1,797 digits of each split's pool (set in ``setup``).
        self.train_indices: Tensor = torch.empty(0, dtype=torch.long)
        self.val_indices: Tensor = torch.empty(0, dtype=torch.long)
        self.test_indices: Tensor = torch.empty(0, dtype=torch.long)
        #: Per split (``"train"``, ``"val"``, ``"test"``), an int64 ``(N, 3, 3)`` tensor: for each
        #: canvas, its digits in drawing order as rows ``(index into the 1,797 digits, top, left)``;
        #: rows of unused slots are ``-1``.
        self.layouts: dict[str, Tensor] = {}
        self.mean: float | None = None
        self.std: float | None = None

    def _build(self) -> None:
        raw_images, raw_labels = _load_digits()
        self.test_indices, self.val_indices, self.train_indices = _split(
            len(raw_labels), [_TEST_DIGITS, _VAL_DIGITS], torch_generator(self.seed, "split")
        )
        digits = torch.from_numpy(raw_images).to(torch.float32).div_(16)
        digits = digits.repeat_interleave(_SCALE, dim=1).repeat_interleave(_SCALE, dim=2)
        labels = torch.from_numpy(raw_labels).long()
        train_labels = self._noisy(labels[self.train_indices], _DIGIT_CLASSES)
        splits = {
            "train": (self.train_indices, train_labels, self.train_canvases),
            "val": (self.val_indices, labels[self.val_indices], self.val_canvases),
            "test": (self.test_indices, labels[self.test_indices], self.test_canvases),
        }
        canvases = {}
        for name, (pool, pool_labels, count) in splits.items():
            layout = self._draw_layout(name, len(pool), count)
            canvases[name] = self._compose(digits[pool], pool_labels, layout)
            # Record digits by their index into the 1,797 images, not their pool position.
            layout[..., 0] = torch.where(layout[..., 0] >= 0, pool[layout[..., 0].clamp(min=0)], -1)
            self.layouts[name] = layout
        train_images = canvases["train"][0]
        self.mean, self.std = train_images.mean().item(), train_images.std().item()
        self.train_dataset, self.val_dataset, self.test_dataset = (
            self._dataset(((images - self.mean) / self.std).unsqueeze(1), targets)
            for images, targets in canvases.values()
        )

    def _draw_layout(self, split: str, pool_size: int, count: int) -> Tensor:
        """``(count, 3, 3)`` rows ``(pool position, top, left)``; ``-1`` rows for unused slots."""
        generator = torch_generator(self.seed, "canvases", split)
        digits_per_canvas = torch.randint(1, _MAX_DIGITS + 1, (count,), generator=generator)
        which = torch.randint(0, pool_size, (count, _MAX_DIGITS), generator=generator)
        span = self.canvas_size - _DIGIT_SIZE + 1
        top = torch.randint(0, span, (count, _MAX_DIGITS), generator=generator)
        left = torch.randint(0, span, (count, _MAX_DIGITS), generator=generator)
        layout = torch.stack([which, top, left], dim=2)
        unused = torch.arange(_MAX_DIGITS) >= digits_per_canvas[:, None]
        return layout.masked_fill_(unused[..., None], -1)

    def _compose(self, digits: Tensor, labels: Tensor, layout: Tensor) -> tuple[Tensor, Any]:
        """Paint ``layout`` (pool positions): ``(N, S, S)`` images in [0, 1] and the targets."""
        raise NotImplementedError(f"{type(self).__name__} must implement `_compose()`.")


class DigitsSegmentationDataModule(_DigitCanvases):
    """Canvases of 1–3 real handwritten digits, segmented into 10 digit classes and background.

    **Digit pools.** The 1,797 images of scikit-learn's digits (UCI "Optical Recognition of
    Handwritten Digits", Alpaydin & Kaynak, 1998) are first split, with ``seed``, into disjoint
    pools: 300 test digits, 300 validation digits and 1,197 training digits (the split of
    :class:`~lightning_mixup.classification.DigitsDataModule` for the same seed). A canvas of one
    split only holds digits of that split's pool, so no handwritten digit is seen in two splits.

    **Canvases.** Each ``canvas_size``×``canvas_size`` canvas holds a uniformly drawn number (1, 2
    or 3) of digits, each drawn uniformly (with replacement) from the pool, upscaled ×2 by nearest
    neighbour (8×8 → 16×16), and placed at a uniformly drawn position fully inside the canvas;
    digits may overlap, later ones are drawn over earlier ones. The image is the pixelwise maximum
    of the digits' intensities, scaled to [0, 1], then normalised by the training canvases' mean
    and std (:attr:`mean`, :attr:`std`, set in ``setup``); images are float32 ``(1, S, S)``.

    **Masks** are int64 ``(S, S)``: a pixel is *ink* of a digit when that digit's intensity there
    is at least :data:`INK_THRESHOLD` (0.25, a raw value of 4 out of 16); it is labelled with the
    class (0–9) of the last-drawn digit whose ink covers it, and with :attr:`background_class`
    (10) where no digit has ink. So ``num_classes`` is 11, and a pixel is background exactly where
    the unnormalised image is below the threshold. With ``ignore_index`` set, every background pixel
    8-adjacent to ink (the one-pixel ring around each stroke, whose label is ambiguous, like Pascal
    VOC's 255 borders) is labelled ``ignore_index`` instead, in all splits. :attr:`layouts` records
    what each canvas holds.

    **Label noise** acts on whole digits of the training pool: exactly ``round(ε · 1197)`` pool
    digits (Python's ``round``), chosen uniformly without replacement, get a class drawn uniformly
    from the 9 other digit classes, on all their ink pixels wherever they appear. ``noisy_indices``
    lists them (positions in the training pool, i.e. in :attr:`train_indices`). Validation and test
    masks stay clean.

    All randomness comes from ``torch.Generator`` objects derived from ``seed`` (the split, the
    noise and each split's canvases have their own stream, so changing ``label_noise`` keeps the
    canvases); the global RNGs are left alone and nothing is downloaded.

    Args:
        train_canvases: Number of training canvases.
        val_canvases: Number of validation canvases.
        test_canvases: Number of test canvases.
        canvas_size: Height and width ``S`` of a canvas, at least 16.
        batch_size: Canvases per batch for every split.
        num_workers: DataLoader worker processes (the data is in memory: 0 is fastest).
        label_noise: Fraction in ``[0, 1)`` of training-pool digits relabelled with a wrong class.
        ignore_index: Label of the pixels around the ink, outside ``[0, 11)`` (e.g. 255); None
            labels them background.
        seed: Seed of the split, the label noise and the canvases.
        pin_memory: Pin host memory; None pins only when the Trainer runs on a CUDA device (or,
            outside a Trainer, when CUDA is available).

    Raises:
        ValueError: On an out-of-range argument.
        ImportError: In ``setup``, when scikit-learn is not installed.

    Example::

        dm = DigitsSegmentationDataModule(ignore_index=255, label_noise=0.1)
        model = SoftLabelSegmenter(SmallFCN(num_classes=11), num_classes=11, ignore_index=255)
        trainer.fit(model, datamodule=dm)
    """

    #: Class of the pixels that no digit's ink covers.
    background_class = _DIGIT_CLASSES

    def __init__(
        self,
        train_canvases: int = 1000,
        val_canvases: int = 200,
        test_canvases: int = 400,
        canvas_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        label_noise: float = 0.0,
        ignore_index: int | None = None,
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
        self.ignore_index = C.ignore_index(ignore_index, self.num_classes)

    def _compose(self, digits: Tensor, labels: Tensor, layout: Tensor) -> tuple[Tensor, Tensor]:
        """Paint the canvases of ``layout`` (pool positions): ``(N, S, S)`` images in [0, 1], masks."""
        n, size = len(layout), self.canvas_size
        images = torch.zeros(n, size, size)
        masks = torch.full((n, size, size), self.background_class, dtype=torch.long)
        for where, which in _squares(layout):  # in drawing order: later digits over earlier ones
            patch = digits[which]
            images[where] = torch.maximum(images[where], patch)
            masks[where] = torch.where(
                patch >= INK_THRESHOLD, labels[which][:, None, None], masks[where]
            )
        if self.ignore_index is not None:
            ink = (masks != self.background_class).float().unsqueeze(1)
            near_ink = F.max_pool2d(ink, 3, stride=1, padding=1).squeeze(1) > 0
            masks[near_ink & (masks == self.background_class)] = self.ignore_index
        return images, masks
