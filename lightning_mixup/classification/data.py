"""LightningDataModules for CIFAR-10, CIFAR-100 and scikit-learn's digits, on one small base class.

Batches are lists ``[images, labels]`` that :class:`~lightning_mixup.MixupCallback` can rewrite in
place. All randomness the datamodules own (validation split, label noise, CIFAR's fast-path
augmentation) comes from ``torch.Generator`` objects derived from ``seed``; the global RNGs are
left alone. CIFAR's ``fast=False`` path augments with torchvision's transforms, which draw from
the global RNG (each DataLoader worker's), as torchvision always does.

**Label noise.** ``label_noise`` = ε makes symmetric noise on the *training* split only: exactly
``round(ε · n_train)`` samples (Python's ``round``), chosen uniformly without replacement, get a
label drawn uniformly from the *other* ``num_classes - 1`` classes, so every changed label is
wrong. ``noisy_indices`` lists them (positions in ``train_dataset``). Validation and test labels
stay clean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import functional as TF

from lightning_mixup import _checks as C
from lightning_mixup._seed import torch_generator

__all__ = ["CIFAR100DataModule", "CIFAR10DataModule", "DigitsDataModule"]

_CROP_PADDING = 4


# ---------------------------------------------------------------------------- seeded helpers
def _split(n: int, sizes: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """Cut one ``randperm(n)`` into sorted pieces of ``sizes`` and the rest, as ``random_split``."""
    order = torch.randperm(n, generator=generator)
    return [piece.sort().values for piece in order.split([*sizes, n - sum(sizes)])]


def _symmetric_label_noise(
    labels: Tensor, num_classes: int, fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``labels`` with ``round(fraction * n)`` of them given another class; the sorted positions."""
    count = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=generator)[:count].sort().values
    # A shift in [1, K) modulo K is uniform over the K - 1 wrong classes.
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy, chosen


# ---------------------------------------------------------------------------- batched augmentation
def _sample_crop_flip(
    n: int, padding: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample crop offsets (uniform over the ``(2·padding+1)²`` positions) and flips (p=½)."""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return top, left, flip


def _crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int) -> Tensor:
    """Torchvision's ``RandomCrop(size, padding)`` then ``RandomHorizontalFlip()``, batched.

    Two gathers (rows, then columns, the flip folded into the column order) on the images' device.
    """
    b, c, h, w = images.shape
    device = images.device
    top, left, flip = (t.to(device, non_blocking=True) for t in (top, left, flip))
    padded = nnf.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(h, device=device)
    rows = rows[:, None, :, None].expand(b, c, h, padded.shape[-1])
    cols = left[:, None] + torch.arange(w, device=device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded.gather(2, rows).gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 → float32 in [0, 1] → torchvision's ``normalize``: the ops of ToTensor + Normalize."""
    return TF.normalize(images.to(torch.float32).div_(255), list(mean), list(std), inplace=True)


# ---------------------------------------------------------------------------- datasets
#: What a split holds beside its images: a label tensor, or (detection) a list of target dicts.
_Labels = TypeVar("_Labels")


class _Batches(Dataset, Generic[_Labels]):
    """A split held as an image tensor and its labels; ``__getitems__`` fetches a whole batch."""

    def __init__(self, images: Tensor, labels: _Labels) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)


class _TensorBatches(_Batches[Tensor]):
    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [self.images[index], self.labels[index]]


_Batch = TypeVar("_Batch")


def _keep_batch(batch: _Batch) -> _Batch:
    """Collate function for :class:`_Batches`: the batch is already assembled."""
    return batch


class _PILImages(Dataset):
    """The classic per-sample path: HWC uint8 array → PIL image → torchvision transform."""

    def __init__(
        self, images: np.ndarray, labels: Tensor, transform: Callable[[Image.Image], Tensor]
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


# ---------------------------------------------------------------------------- base class
class _ClassificationDataModule(pl.LightningDataModule):
    """Argument checks, label noise and the dataloaders; :meth:`_build` fills the datasets."""

    num_classes: int

    def __init__(
        self,
        *,
        batch_size: int,
        num_workers: int,
        label_noise: float,
        seed: int,
        pin_memory: bool | None,
    ) -> None:
        super().__init__()
        self.batch_size = C.integer("batch_size", batch_size, 1)
        self.num_workers = C.integer("num_workers", num_workers, 0)
        self.label_noise = C.number("label_noise", label_noise, 0.0, 1.0, open_high=True)
        self.seed = C.integer("seed", seed, 0)
        self.pin_memory = None if pin_memory is None else C.boolean("pin_memory", pin_memory)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        #: Positions in ``train_dataset`` whose label was replaced by ``label_noise``.
        self.noisy_indices: Tensor = torch.empty(0, dtype=torch.long)

    def _build(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement `_build()`.")

    def setup(self, stage: str | None = None) -> None:
        """Load the data and make the splits (once; later calls are no-ops)."""
        if self.train_dataset is None:
            self._build()

    def _noisy(self, labels: Tensor, num_classes: int) -> Tensor:
        """Apply ``label_noise`` to training labels and record ``noisy_indices``."""
        generator = torch_generator(self.seed, "label_noise")
        noisy, self.noisy_indices = _symmetric_label_noise(
            labels, num_classes, self.label_noise, generator
        )
        return noisy

    def _use_pin_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"`{type(self).__name__}.{stage}_dataloader()` was called before `setup()`; call "
                "`setup()` first (a Trainer does this for you)."
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=_keep_batch if isinstance(dataset, _Batches) else None,
            pin_memory=self._use_pin_memory(),
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``[images, labels]``."""
        return self._loader(self.train_dataset, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order, the last one possibly smaller."""
        return self._loader(self.val_dataset, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order, the last one possibly smaller."""
        return self._loader(self.test_dataset, "test", shuffle=False)


# ---------------------------------------------------------------------------- CIFAR
class CIFAR10DataModule(_ClassificationDataModule):
    """CIFAR-10 (Krizhevsky, 2009): 50,000 training and 10,000 test 32×32 colour images, 10 classes.

    Reads the python version of the dataset with torchvision (``data_dir/cifar-10-batches-py``).
    Training augmentation is the standard one: a random 32×32 crop of the image zero-padded by 4
    pixels (offset uniform over the 9×9 positions) and a horizontal flip with probability ½, then
    per-channel normalisation by the training set's mean and std (:attr:`mean`, :attr:`std`).
    Evaluation batches are only normalised. Batches are lists ``[images, labels]`` with float32
    ``(B, 3, 32, 32)`` images and int64 labels.

    **Fast path** (``fast=True``, the default): each split is one uint8 tensor and a batch travels
    to the device as uint8, where :meth:`on_after_batch_transfer` augments and normalises it, with
    the PIL path's (``fast=False``) distribution, drawing from a ``torch.Generator`` seeded from
    ``(seed, epoch, global_rank)``. So pass the datamodule itself to the Trainer:
    ``trainer.fit(model, datamodule=dm)``.

    Label noise is symmetric and touches the training split only: see the module docstring.

    Args:
        data_dir: Folder that holds (or, with ``download=True``, will hold) the dataset's folder,
            ``cifar-10-batches-py`` (CIFAR-100: ``cifar-100-python``).
        download: Download and extract the archive into ``data_dir`` in ``prepare_data`` if the
            files are missing or corrupted.
        val_size: 0 validates on the official test split; otherwise this many training images,
            drawn with ``seed``, form the validation split (with evaluation transforms) and are
            removed from training.
        batch_size: Images per batch for every split.
        num_workers: DataLoader worker processes.
        label_noise: Fraction in ``[0, 1)`` of training labels replaced by a wrong class.
        seed: Seed of the validation split, the label noise and the fast-path augmentation.
        pin_memory: Pin host memory; None pins only when the Trainer runs on a CUDA device (or,
            outside a Trainer, when CUDA is available).
        fast: Use the in-memory batched pipeline (the fast path above) instead of torchvision's
            per-image PIL transforms.

    Raises:
        ValueError: On an out-of-range argument; in ``setup``, when ``val_size`` leaves no
            training images.
        FileNotFoundError: In ``setup``, when the dataset files are not in ``data_dir``.
        RuntimeError: In ``setup``, when a dataset file fails its MD5 check.

    Example::

        dm = CIFAR10DataModule(data_dir="~/data", download=True, val_size=5000)
        trainer.fit(model, datamodule=dm)
    """

    num_classes = 10
    #: Per-channel mean and std of the training images, in [0, 1] units.
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    _dataset_cls: type[torchvision.datasets.CIFAR10] = torchvision.datasets.CIFAR10
    _display_name = "CIFAR-10"

    def __init__(
        self,
        data_dir: str,
        download: bool = False,
        val_size: int = 0,
        batch_size: int = 128,
        num_workers: int = 2,
        label_noise: float = 0.0,
        seed: int = 0,
        pin_memory: bool | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            label_noise=label_noise,
            seed=seed,
            pin_memory=pin_memory,
        )
        if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
            raise ValueError(
                f"`data_dir` must be a non-empty path to the folder that holds "
                f"`{self._dataset_cls.base_folder}`, got {data_dir!r}."
            )
        self.data_dir = os.path.expanduser(os.fspath(data_dir))
        self.download = C.boolean("download", download)
        self.val_size = C.integer("val_size", val_size, 0)
        self.fast = C.boolean("fast", fast)
        #: Indices into the official training set of the training / validation images.
        self.train_indices: Tensor = torch.empty(0, dtype=torch.long)
        self.val_indices: Tensor = torch.empty(0, dtype=torch.long)
        self._augment_key: tuple[int, int] | None = None
        self._augment_generator: torch.Generator | None = None

    def prepare_data(self) -> None:
        """Download and extract the dataset when ``download=True`` (runs on one process only)."""
        if self.download:
            self._dataset_cls(self.data_dir, train=False, download=True)

    def _expected_files(self) -> list[list[str]]:
        cls = self._dataset_cls
        return [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]

    def _load(self, train: bool) -> tuple[np.ndarray, Tensor]:
        """One official split as (HWC uint8 images, int64 labels), with clear file errors."""
        cls = self._dataset_cls
        folder = os.path.join(self.data_dir, cls.base_folder)
        missing = [
            n for n, _ in self._expected_files() if not os.path.isfile(os.path.join(folder, n))
        ]
        if missing:
            raise FileNotFoundError(
                f"{self._display_name} files not found: looked in {folder!r} and could not find "
                f"{', '.join(missing)}. Pass `download=True` to download them, or put the extracted "
                f"`{cls.base_folder}` folder inside `data_dir`."
            )
        try:
            dataset = cls(self.data_dir, train=train, download=False)
        except RuntimeError as err:
            bad = [
                n
                for n, md5 in self._expected_files()
                if not check_integrity(os.path.join(folder, n), md5)
            ]
            if not bad:
                raise
            raise RuntimeError(
                f"{self._display_name} files in {folder!r} are corrupted (MD5 mismatch: "
                f"{', '.join(bad)}). Delete them and pass `download=True` to download them again, "
                f"or replace `{cls.base_folder}` with a fresh copy."
            ) from err
        return dataset.data, torch.tensor(dataset.targets, dtype=torch.long)

    def _dataset(self, images: np.ndarray, labels: Tensor, train: bool) -> Dataset:
        if self.fast:
            return _TensorBatches(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)
        augment = (
            [T.RandomCrop(32, padding=_CROP_PADDING), T.RandomHorizontalFlip()] if train else []
        )
        return _PILImages(
            images, labels, T.Compose([*augment, T.ToTensor(), T.Normalize(self.mean, self.std)])
        )

    def _build(self) -> None:
        train_images, train_labels = self._load(train=True)
        test_images, test_labels = self._load(train=False)
        n = len(train_labels)
        if self.val_size >= n:
            raise ValueError(
                f"`val_size` must be smaller than the training set ({n} images), got "
                f"{self.val_size!r}."
            )
        self.val_indices, self.train_indices = _split(
            n, [self.val_size], torch_generator(self.seed, "split")
        )
        noisy_labels = self._noisy(train_labels[self.train_indices], self.num_classes)
        self.test_dataset = self._dataset(test_images, test_labels, train=False)
        self.train_dataset = self._dataset(
            train_images[self.train_indices.numpy()], noisy_labels, train=True
        )
        if self.val_size == 0:
            self.val_dataset = self.test_dataset
        else:
            val_images = train_images[self.val_indices.numpy()]
            self.val_dataset = self._dataset(
                val_images, train_labels[self.val_indices], train=False
            )

    def _augmentation_generator(self, epoch: int, rank: int) -> torch.Generator:
        """One stream per ``(epoch, rank)``, continued from batch to batch within the epoch."""
        if self._augment_generator is None or self._augment_key != (epoch, rank):
            self._augment_key = (epoch, rank)
            self._augment_generator = torch_generator(self.seed, "augment", epoch, rank)
        return self._augment_generator

    def teardown(self, stage: str) -> None:
        """Forget the augmentation stream, so a later ``fit`` with this datamodule repeats it."""
        self._augment_key = self._augment_generator = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Fast path: augment (training only) and normalise the uint8 batch on its device.

        Runs after the batch reached the device. Training batches (``trainer.training``) get a
        random crop and flip per sample; every batch is converted to float32, normalised, and
        then cast by the Trainer's precision plugin (e.g. to bfloat16 under ``"bf16-true"``).
        With ``fast=False`` the batch is returned untouched.
        """
        if not self.fast:
            return batch
        if not isinstance(batch, list) or len(batch) != 2 or not isinstance(batch[0], Tensor):
            raise TypeError(
                f"{type(self).__name__}(fast=True) expects the `[images, labels]` list its own "
                f"dataloaders yield, got {type(batch).__name__}."
            )
        images = batch[0]
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(
                f"{type(self).__name__}(fast=True) expects uint8 (B, C, H, W) images, got "
                f"{images.dtype} with shape {tuple(images.shape)}; was the batch already processed?"
            )
        trainer = self.trainer
        if trainer is not None and trainer.training:
            generator = self._augmentation_generator(trainer.current_epoch, trainer.global_rank)
            params = _sample_crop_flip(images.shape[0], _CROP_PADDING, generator)
            images = _crop_flip(images, *params, padding=_CROP_PADDING)
        images = _normalize(images, self.mean, self.std)
        if trainer is not None:
            images = trainer.precision_plugin.convert_input(images)
        batch[0] = images
        return batch


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (Krizhevsky, 2009): 50,000 training and 10,000 test 32×32 images, 100 classes.

    The pipeline, arguments and errors of :class:`CIFAR10DataModule` (fine labels; files in
    ``data_dir/cifar-100-python``), normalised with CIFAR-100's own channel statistics.

    Example::

        dm = CIFAR100DataModule(data_dir="~/data", download=True, label_noise=0.2)
        trainer.fit(model, datamodule=dm)
    """

    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    _dataset_cls = torchvision.datasets.CIFAR100
    _display_name = "CIFAR-100"


# ---------------------------------------------------------------------------- digits
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "DigitsDataModule needs scikit-learn, which ships the digits images; install it with "
            '`pip install "lightning-mixup[digits]"`.'
        ) from err
    bunch = load_digits()
    return bunch.images, bunch.target


class DigitsDataModule(_ClassificationDataModule):
    """scikit-learn's handwritten digits: 1,797 real 8×8 grayscale images, 10 classes, offline.

    The data ships with scikit-learn (UCI "Optical Recognition of Handwritten Digits", Alpaydin &
    Kaynak, 1998), so this datamodule needs no download: it is the quick start's dataset. Pixel
    values 0..16 are scaled to [0, 1], then normalised by the training split's mean and std
    (:attr:`mean`, :attr:`std`, set in ``setup``). Images are float32 ``(1, 8, 8)``; there is no
    augmentation. A ``seed``-drawn split gives ``test_size`` test images, ``val_size`` validation
    images and the rest for training. Label noise is symmetric and touches the training split
    only: see the module docstring.

    **A subset of the digits** (``classes``, e.g. ``[0, 1, 2, 3, 4]``): the split is drawn as
    without ``classes`` (same ``seed``, same images in each split), then every split keeps only
    the images of those digits, and their labels become positions in ``classes``: ``classes[i]``
    is label ``i``. :attr:`num_classes` is then ``len(classes)``, the ``*_indices`` list the kept
    images, :attr:`mean`/:attr:`std` are those of the kept training images, and label noise acts
    on the kept training images over the kept classes. The test images of the other digits are an
    OOD set: see :meth:`ood_dataloaders`.

    Args:
        val_size: Number of validation images (at least 1).
        test_size: Number of test images (at least 1).
        batch_size: Images per batch for every split.
        num_workers: DataLoader worker processes (the data is in memory: 0 is fastest).
        label_noise: Fraction in ``[0, 1)`` of training labels replaced by a wrong class.
        seed: Seed of the split and of the label noise.
        pin_memory: Pin host memory; None pins only when the Trainer runs on a CUDA device (or,
            outside a Trainer, when CUDA is available).
        classes: Keep only these digits (at least 2 distinct ints in 0..9), relabelled
            ``0..len(classes)-1`` in the given order; None keeps all ten.

    Raises:
        ValueError: On an out-of-range argument; in ``setup``, when ``val_size + test_size``
            leaves no training images, or ``classes`` leaves a split without images.
        ImportError: In ``setup``, when scikit-learn is not installed.

    Example::

        dm = DigitsDataModule(batch_size=64, label_noise=0.1)
        trainer.fit(model, datamodule=dm)
        five = DigitsDataModule(classes=[0, 1, 2, 3, 4])  # five.num_classes == 5
    """

    num_classes = 10

    def __init__(
        self,
        val_size: int = 300,
        test_size: int = 300,
        batch_size: int = 64,
        num_workers: int = 0,
        label_noise: float = 0.0,
        seed: int = 0,
        pin_memory: bool | None = None,
        classes: list[int] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            label_noise=label_noise,
            seed=seed,
            pin_memory=pin_memory,
        )
        self.val_size = C.integer("val_size", val_size, 1)
        self.test_size = C.integer("test_size", test_size, 1)
        #: The kept digits (label ``i`` is digit ``classes[i]``), or None for all ten.
        self.classes: list[int] | None = _check_classes(classes)
        if self.classes is not None:
            self.num_classes = len(self.classes)
        #: Indices into the 1,797 digits of each split's images (set in ``setup``).
        self.train_indices: Tensor = torch.empty(0, dtype=torch.long)
        self.val_indices: Tensor = torch.empty(0, dtype=torch.long)
        self.test_indices: Tensor = torch.empty(0, dtype=torch.long)
        self.mean: float | None = None
        self.std: float | None = None
        self._ood_datasets: dict[str, _TensorBatches] | None = None

    def _build(self) -> None:
        raw_images, raw_labels = _load_digits()
        n = len(raw_labels)
        if self.val_size + self.test_size >= n:
            raise ValueError(
                f"`val_size` + `test_size` must leave training images (the digits set has {n}), "
                f"got {self.val_size!r} + {self.test_size!r}."
            )
        self.test_indices, self.val_indices, self.train_indices = _split(
            n, [self.test_size, self.val_size], torch_generator(self.seed, "split")
        )
        images = torch.from_numpy(raw_images).to(torch.float32).div_(16).unsqueeze(1)
        labels = torch.from_numpy(raw_labels).long()
        unseen = torch.empty(0, dtype=torch.long)
        if self.classes is not None:
            labels, unseen = self._keep_classes(labels, self.classes)
        train_images = images[self.train_indices]
        self.mean, self.std = train_images.mean().item(), train_images.std().item()
        images = (images - self.mean) / self.std

        noisy = self._noisy(labels[self.train_indices], self.num_classes)
        self.train_dataset = _TensorBatches(images[self.train_indices], noisy)
        self.val_dataset = _TensorBatches(images[self.val_indices], labels[self.val_indices])
        self.test_dataset = _TensorBatches(images[self.test_indices], labels[self.test_indices])

        noise = torch.rand(
            (len(self.test_indices), *images.shape[1:]),
            generator=torch_generator(self.seed, "ood_noise"),
        )
        ood = {"noise": (noise - self.mean) / self.std}
        if self.classes is not None and len(self.classes) < 10:
            ood = {"unseen_classes": images[unseen], **ood}
        self._ood_datasets = {
            name: _TensorBatches(x, torch.full((len(x),), -1, dtype=torch.long))
            for name, x in ood.items()
        }

    def _keep_classes(self, labels: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
        """Keep ``classes`` in each split's indices; relabel; find the test split's other digits.

        Returns the labels of all 1,797 digits relabelled (-1 for the other digits) and the test
        split's indices of the other digits.
        """
        # Digit d -> its position in `classes`; the other digits -> -1 (dropped).
        relabel = torch.full((10,), -1, dtype=torch.long)
        relabel[torch.tensor(classes)] = torch.arange(len(classes))
        labels = relabel[labels]
        unseen = self.test_indices[labels[self.test_indices] < 0]
        kept = []
        for name, indices in (
            ("training", self.train_indices),
            ("validation", self.val_indices),
            ("test", self.test_indices),
        ):
            keep = indices[labels[indices] >= 0]
            if len(keep) == 0:
                raise ValueError(
                    f"`classes` = {classes!r} leaves no {name} images: the {name} split "
                    f"({len(indices)} images, seed {self.seed}) holds none of these digits; use a "
                    "larger split or other digits."
                )
            kept.append(keep)
        self.train_indices, self.val_indices, self.test_indices = kept
        return labels, unseen

    def ood_dataloaders(self) -> dict[str, DataLoader]:
        """Out-of-distribution sets, with the test loader's settings (for :class:`OODEval`).

        - ``"unseen_classes"`` (only with ``classes``, unless it holds all ten digits): the test
          split's images of the *other* digits, in index order;
        - ``"noise"``: as many images as the test split, each pixel uniform in ``[0, 1]`` (drawn
          from a generator derived from ``(seed, "ood_noise")``), normalised with :attr:`mean` and
          :attr:`std` like the real images.

        Batches are ``[images, labels]`` like the other splits; the labels are all -1 (an OOD
        sample has no class) and are not meant to be used.

        Returns:
            ``{name: DataLoader}``.

        Raises:
            RuntimeError: If called before ``setup()``.

        Example:
            >>> dm = DigitsDataModule(classes=[0, 1, 2])
            >>> dm.setup()
            >>> sorted(dm.ood_dataloaders())
            ['noise', 'unseen_classes']
        """
        if self._ood_datasets is None:
            raise RuntimeError(
                f"`{type(self).__name__}.ood_dataloaders()` was called before `setup()`; call "
                "`setup()` first (a Trainer does this for you)."
            )
        return {
            name: self._loader(dataset, "ood", shuffle=False)
            for name, dataset in self._ood_datasets.items()
        }


def _check_classes(classes: Any) -> list[int] | None:
    """``classes`` of :class:`DigitsDataModule`: None, or at least 2 distinct ints in 0..9."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ValueError(
            f"`classes` must be a list of at least 2 distinct digits in 0..9, or None, got "
            f"{classes!r}."
        )
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 9]
    if bad:
        raise ValueError(
            f"`classes` must hold digits, integers in 0..9, got {bad[0]!r} in {list(classes)!r}."
        )
    if len(set(classes)) != len(classes):
        raise ValueError(f"`classes` must not repeat a digit, got {list(classes)!r}.")
    if len(classes) < 2:
        raise ValueError(f"`classes` must hold at least 2 digits, got {list(classes)!r}.")
    return list(classes)
