"""Datamodules on tiny CIFAR files written in the real on-disk format, and on the real digits."""

from __future__ import annotations

import itertools
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from lightning.pytorch.plugins.precision import HalfPrecision, Precision
from lightning.pytorch.utilities.data import _update_dataloader
from PIL import Image
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from lightning_mixup._seed import torch_generator
from lightning_mixup.classification.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    _crop_flip,
    _normalize,
    _sample_crop_flip,
    _symmetric_label_noise,
    _TensorBatches,
)
from tests.cifar_files import FakeCifar, checksum_lists, sample_index, write_cifar10, write_cifar100


def normalised(images: torch.Tensor, dm: CIFAR10DataModule) -> torch.Tensor:
    """Reference: uint8 (B, 3, 32, 32) -> what ToTensor + Normalize give, written out by hand."""
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cifar10_files(tmp_path_factory: pytest.TempPathFactory) -> FakeCifar:
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="module")
def cifar100_files(tmp_path_factory: pytest.TempPathFactory) -> FakeCifar:
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


def _trust(monkeypatch: pytest.MonkeyPatch, dataset_cls: type, written: FakeCifar) -> None:
    """Point torchvision's MD5 lists at the files we wrote; the integrity check still runs."""
    for name, value in checksum_lists(dataset_cls, written).items():
        monkeypatch.setattr(dataset_cls, name, value)


@pytest.fixture
def cifar10(cifar10_files: FakeCifar, monkeypatch: pytest.MonkeyPatch) -> FakeCifar:
    _trust(monkeypatch, torchvision.datasets.CIFAR10, cifar10_files)
    return cifar10_files


@pytest.fixture
def cifar100(cifar100_files: FakeCifar, monkeypatch: pytest.MonkeyPatch) -> FakeCifar:
    _trust(monkeypatch, torchvision.datasets.CIFAR100, cifar100_files)
    return cifar100_files


@pytest.fixture
def both_cifars(cifar10: FakeCifar, cifar100: FakeCifar) -> dict[type, FakeCifar]:
    return {CIFAR10DataModule: cifar10, CIFAR100DataModule: cifar100}


def make(cls: type = CIFAR10DataModule, root: Path | None = None, **kwargs: object):
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 16)
    dm = cls(data_dir=str(root), **kwargs)
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------- the fixture itself
def test_written_files_load_like_the_real_ones(cifar10: FakeCifar) -> None:
    import pickle

    path = cifar10.root / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (50, 3072)
    dataset = torchvision.datasets.CIFAR10(str(cifar10.root), train=True)
    assert len(dataset) == 250 and dataset.targets == cifar10.train_labels.tolist()


# ---------------------------------------------------------------------------- batches
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_batches_are_lists_of_float_images_and_int64_labels(
    both_cifars: dict[type, FakeCifar], cls: type, fast: bool
) -> None:
    written = both_cifars[cls]
    dm = make(cls, written.root, fast=fast)
    assert dm.num_classes == (10 if cls is CIFAR10DataModule else 100)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert isinstance(batch, list) and len(batch) == 2
        if fast:
            assert batch[0].dtype == torch.uint8  # stays uint8 until it reaches the device
            batch = dm.on_after_batch_transfer(batch, 0)
            assert isinstance(batch, list)
        images, labels = batch
        assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.shape == (16,)
    # Evaluation order is the file order, with the labels as written (fine labels for CIFAR-100).
    images, labels = next(iter(dm.test_dataloader()))
    assert torch.equal(labels, written.test_labels[:16])


@pytest.mark.parametrize("fast", [False, True])
def test_eval_batches_are_normalised_originals(cifar10: FakeCifar, fast: bool) -> None:
    dm = make(root=cifar10.root, fast=fast)
    batches = list(dm.val_dataloader())
    if fast:
        batches = [dm.on_after_batch_transfer(b, 0) for b in batches]
    images = torch.cat([b[0] for b in batches])
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]  # 50 images: no drop_last
    torch.testing.assert_close(images, normalised(cifar10.test_images, dm), rtol=0, atol=1e-6)


def test_cifar100_uses_its_own_statistics(cifar100: FakeCifar) -> None:
    dm = make(CIFAR100DataModule, cifar100.root, fast=False)
    image, _ = dm.test_dataset[0]
    torch.testing.assert_close(image, normalised(cifar100.test_images[:1], dm)[0])
    assert dm.mean != CIFAR10DataModule.mean and dm.std != CIFAR10DataModule.std


def test_classic_train_images_are_augmented_and_val_subset_is_not(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root, fast=False, val_size=40, seed=1)
    torch.manual_seed(0)
    train_draws = torch.stack([dm.train_dataset[0][0] for _ in range(8)])
    assert len({tuple(x.flatten()[:2000].tolist()) for x in train_draws}) > 1
    first, second = dm.val_dataset[3][0], dm.val_dataset[3][0]
    assert torch.equal(first, second)
    original = cifar10.train_images[dm.val_indices[3]][None]
    torch.testing.assert_close(first[None], normalised(original, dm), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- splits
@pytest.mark.parametrize("fast", [False, True])
def test_validation_split_is_seeded_disjoint_and_complete(cifar10: FakeCifar, fast: bool) -> None:
    a = make(root=cifar10.root, val_size=40, seed=5, fast=fast)
    b = make(root=cifar10.root, val_size=40, seed=5, fast=not fast)
    c = make(root=cifar10.root, val_size=40, seed=6, fast=fast)
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(
        a.train_indices, b.train_indices
    )
    assert not torch.equal(a.val_indices, c.val_indices)
    assert len(a.val_dataset) == 40 and len(a.train_dataset) == 210
    both = torch.cat([a.train_indices, a.val_indices])
    assert torch.equal(both.sort().values, torch.arange(250))
    assert torch.equal(a.val_dataset.labels, cifar10.train_labels[a.val_indices])
    assert a.test_dataset is not a.val_dataset and len(a.test_dataset) == 50
    if fast:  # the stored images really are the selected ones
        assert torch.equal(sample_index(a.val_dataset.images), a.val_indices)
        assert torch.equal(sample_index(a.train_dataset.images), a.train_indices)


def test_without_val_size_validation_is_the_test_split(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root)
    assert dm.val_dataset is dm.test_dataset and len(dm.train_dataset) == 250
    assert dm.val_indices.numel() == 0 and torch.equal(dm.train_indices, torch.arange(250))


def test_val_size_must_leave_training_images(cifar10: FakeCifar) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar10.root), val_size=250)
    with pytest.raises(
        ValueError, match=r"`val_size` must be smaller .* \(250 images\), got 250\."
    ):
        dm.setup("fit")
    make(root=cifar10.root, val_size=249)  # one training image left is allowed


# ---------------------------------------------------------------------------- label noise
@pytest.mark.parametrize(("fraction", "fast"), [(0.1, True), (0.33, False), (0.5, True)])
def test_label_noise_changes_exactly_the_requested_training_labels(
    cifar10: FakeCifar, fraction: float, fast: bool
) -> None:
    dm = make(root=cifar10.root, val_size=50, label_noise=fraction, seed=2, fast=fast)
    clean = cifar10.train_labels[dm.train_indices]
    noisy = dm.train_dataset.labels
    changed = (noisy != clean).nonzero().flatten()
    assert len(changed) == round(fraction * 200)
    assert torch.equal(changed, dm.noisy_indices)
    assert ((noisy >= 0) & (noisy < 10)).all()
    assert torch.equal(dm.val_dataset.labels, cifar10.train_labels[dm.val_indices])
    assert torch.equal(dm.test_dataset.labels, cifar10.test_labels)
    # The training loader serves the noisy labels (in shuffled order), the test loader clean ones.
    served = torch.cat([b[1] for b in dm.train_dataloader()])
    assert torch.equal(served.sort().values, noisy.sort().values)
    assert torch.equal(torch.cat([b[1] for b in dm.test_dataloader()]), cifar10.test_labels)


def test_label_noise_is_seeded_and_independent_of_the_pipeline(cifar10: FakeCifar) -> None:
    fast = make(root=cifar10.root, label_noise=0.2, seed=4, fast=True)
    classic = make(root=cifar10.root, label_noise=0.2, seed=4, fast=False)
    other = make(root=cifar10.root, label_noise=0.2, seed=9, fast=True)
    assert torch.equal(fast.train_dataset.labels, classic.train_dataset.labels)
    assert not torch.equal(fast.noisy_indices, other.noisy_indices)
    # Changing the noise level does not move the validation split.
    plain = make(root=cifar10.root, val_size=30, seed=4)
    noisy = make(root=cifar10.root, val_size=30, seed=4, label_noise=0.4)
    assert torch.equal(plain.val_indices, noisy.val_indices)
    assert plain.noisy_indices.numel() == 0


def test_symmetric_noise_is_uniform_over_the_other_classes() -> None:
    labels = torch.arange(10).repeat(9000)
    noisy, chosen = _symmetric_label_noise(labels, 10, 0.5, torch.Generator().manual_seed(0))
    assert len(chosen) == 45000 and (noisy[chosen] != labels[chosen]).all()
    shifts = (noisy[chosen] - labels[chosen]) % 10
    counts = torch.bincount(shifts, minlength=10).double()
    assert counts[0] == 0
    expected = 45000 / 9
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum().item()
    assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001


# ---------------------------------------------------------------------------- files
def test_missing_files_name_the_folder_and_the_fix(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    folder = str(tmp_path / "cifar-10-batches-py")
    with pytest.raises(FileNotFoundError, match=r"looked in '.*cifar-10-batches-py'") as info:
        dm.setup("fit")
    assert folder in str(info.value) and "`download=True`" in str(info.value)
    assert "put the extracted `cifar-10-batches-py` folder inside `data_dir`" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*could not find train, test"):
        CIFAR100DataModule(data_dir=str(tmp_path)).setup("fit")


def test_one_missing_file_is_named(cifar10: FakeCifar, tmp_path: Path) -> None:
    shutil.copytree(cifar10.root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"could not find data_batch_4\. Pass `download"):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")


@pytest.mark.parametrize("victim", ["data_batch_3", "test_batch", "batches.meta"])
def test_corrupted_file_is_caught_by_the_md5_check(
    cifar10: FakeCifar, tmp_path: Path, victim: str
) -> None:
    shutil.copytree(cifar10.root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / victim).write_bytes(b"not a pickle at all")
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=rf"corrupted \(MD5 mismatch: {victim}\).*download=True"):
        dm.setup("fit")


def test_cifar100_corruption_is_caught(cifar100: FakeCifar, tmp_path: Path) -> None:
    shutil.copytree(cifar100.root / "cifar-100-python", tmp_path / "cifar-100-python")
    with open(tmp_path / "cifar-100-python" / "train", "r+b") as f:
        f.seek(500)
        f.write(b"\xff\x00\xff")  # a few flipped bytes inside the image data
    with pytest.raises(
        RuntimeError, match=r"CIFAR-100 files in .* corrupted \(MD5 mismatch: train\)"
    ):
        CIFAR100DataModule(data_dir=str(tmp_path)).setup("fit")


def test_download_happens_only_in_prepare_data(
    cifar10: FakeCifar, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "download", lambda self: calls.append(self.root)
    )
    dm = CIFAR10DataModule(data_dir=str(cifar10.root), download=True, num_workers=0)
    dm.setup("fit")
    assert calls == []
    dm.prepare_data()
    assert calls == [str(cifar10.root)]
    CIFAR10DataModule(data_dir=str(cifar10.root)).prepare_data()
    assert len(calls) == 1


# ---------------------------------------------------------------------------- loaders
def test_loader_settings(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root, fast=False)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(train.sampler, RandomSampler)
    assert isinstance(val.sampler, SequentialSampler) and isinstance(
        test.sampler, SequentialSampler
    )
    assert not any(loader.drop_last for loader in (train, val, test))
    assert train.pin_memory is torch.cuda.is_available()
    assert train.batch_size == 16 and train.num_workers == 0
    pinned = CIFAR10DataModule(data_dir=str(cifar10.root), pin_memory=True, num_workers=2)
    pinned.setup()
    loader = pinned.train_dataloader()
    assert loader.pin_memory is True and loader.num_workers == 2 and loader.persistent_workers


def test_loaders_need_setup(cifar10: FakeCifar) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar10.root))
    with pytest.raises(
        RuntimeError, match=r"`CIFAR10DataModule.val_dataloader\(\)` was called before"
    ):
        dm.val_dataloader()


def test_data_dir_is_expanded(cifar10: FakeCifar) -> None:
    assert CIFAR10DataModule(data_dir=cifar10.root).data_dir == str(cifar10.root)
    assert not CIFAR10DataModule(data_dir="~/x").data_dir.startswith("~")


# ---------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"data_dir": ""},
            r"`data_dir` must be a non-empty path .*`cifar-10-batches-py`, got ''\.",
        ),
        ({"data_dir": None}, r"`data_dir` must be a non-empty path .*, got None\."),
        ({"download": "yes"}, r"`download` must be True or False, got 'yes'\."),
        ({"val_size": -1}, r"`val_size` must be an integer >= 0, got -1\."),
        ({"val_size": True}, r"`val_size` must be an integer >= 0, got True\."),
        ({"val_size": 2.0}, r"`val_size` must be an integer >= 0, got 2\.0\."),
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0\."),
        ({"batch_size": False}, r"`batch_size` must be an integer >= 1, got False\."),
        ({"num_workers": -2}, r"`num_workers` must be an integer >= 0, got -2\."),
        ({"num_workers": True}, r"`num_workers` must be an integer >= 0, got True\."),
        ({"label_noise": 1.0}, r"`label_noise` must be a number in \[0, 1\), got 1\.0\."),
        ({"label_noise": -0.1}, r"`label_noise` must be a number in \[0, 1\), got -0\.1\."),
        ({"label_noise": True}, r"`label_noise` must be a number in \[0, 1\), got True\."),
        ({"seed": True}, r"`seed` must be an integer >= 0, got True\."),
        ({"seed": -1}, r"`seed` must be an integer >= 0, got -1\."),
        ({"pin_memory": 1}, r"`pin_memory` must be True or False, got 1\."),
        ({"fast": None}, r"`fast` must be True or False, got None\."),
    ],
)
def test_cifar_argument_errors(kwargs: dict, match: str) -> None:
    kwargs.setdefault("data_dir", "somewhere")
    with pytest.raises(ValueError, match=match):
        CIFAR10DataModule(**kwargs)


def test_integer_label_noise_is_accepted(tmp_path: Path) -> None:
    assert CIFAR10DataModule(data_dir=str(tmp_path), label_noise=0).label_noise == 0.0


# ---------------------------------------------------------------------------- digits
def test_digits_end_to_end() -> None:
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(batch_size=32, label_noise=0.1, seed=3)
    dm.setup("fit")
    assert dm.num_classes == 10
    sizes = [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)]
    assert sizes == [1197, 300, 300]
    all_indices = torch.cat([dm.train_indices, dm.val_indices, dm.test_indices])
    assert torch.equal(all_indices.sort().values, torch.arange(1797))
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert isinstance(batch, list) and len(batch) == 2
        images, labels = batch
        assert images.dtype == torch.float32 and images.shape == (32, 1, 8, 8)
        assert labels.dtype == torch.int64
    assert [len(b[1]) for b in dm.val_dataloader()][-1] == 300 - 9 * 32  # no drop_last
    digits = load_digits()
    raw = torch.from_numpy(digits.images).float() / 16
    expected = (raw[dm.test_indices] - dm.mean) / dm.std
    torch.testing.assert_close(dm.test_dataset.images[:, 0], expected)
    train = dm.train_dataset.images
    assert abs(train.mean().item()) < 1e-5 and abs(train.std().item() - 1) < 1e-4
    clean = torch.from_numpy(digits.target)[dm.train_indices]
    assert (dm.train_dataset.labels != clean).sum().item() == round(0.1 * 1197)
    assert torch.equal(dm.val_dataset.labels, torch.from_numpy(digits.target)[dm.val_indices])
    again = DigitsDataModule(seed=3)
    again.setup()
    assert torch.equal(again.val_indices, dm.val_indices)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_size": 0}, r"`val_size` must be an integer >= 1, got 0\."),
        ({"test_size": 1.5}, r"`test_size` must be an integer >= 1, got 1\.5\."),
        ({"batch_size": -3}, r"`batch_size` must be an integer >= 1, got -3\."),
        ({"label_noise": 2}, r"`label_noise` must be a number in \[0, 1\), got 2\."),
    ],
)
def test_digits_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_digits_split_must_leave_training_images() -> None:
    dm = DigitsDataModule(val_size=900, test_size=897)
    with pytest.raises(ValueError, match=r"must leave training images .*1797\), got 900 \+ 897\."):
        dm.setup()


def test_digits_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-mixup\[digits\]"'):
        DigitsDataModule().setup()


# ---------------------------------------------------------------------------- digits: classes, OOD
def _raw_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.from_numpy(digits.images).float().div(16), torch.from_numpy(digits.target)


def test_digits_classes_filter_the_same_split_and_remap_labels() -> None:
    raw_images, raw_labels = _raw_digits()
    full = DigitsDataModule(seed=4)
    full.setup()
    dm = DigitsDataModule(seed=4, classes=[7, 2, 5])
    assert dm.num_classes == 3 and DigitsDataModule.num_classes == 10 and full.num_classes == 10
    dm.setup()
    keep = torch.tensor([7, 2, 5])
    for split in ("train", "val", "test"):
        all_indices = getattr(full, f"{split}_indices")
        kept = getattr(dm, f"{split}_indices")
        # The same images as without `classes`, filtered, in the same order.
        assert torch.equal(kept, all_indices[torch.isin(raw_labels[all_indices], keep)])
        dataset = getattr(dm, f"{split}_dataset")
        assert len(dataset) == len(kept) > 0
        # Label i is digit classes[i].
        assert torch.equal(keep[dataset.labels], raw_labels[kept])
        expected = (raw_images[kept] - dm.mean) / dm.std
        torch.testing.assert_close(dataset.images[:, 0], expected)
    # Normalised with the kept training images' statistics.
    train = raw_images[dm.train_indices]
    assert dm.mean == pytest.approx(train.mean().item()) and dm.std == pytest.approx(
        train.std().item()
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch[1].dtype == torch.int64 and set(batch[1].tolist()) <= {0, 1, 2}


def test_digits_label_noise_acts_on_the_kept_classes() -> None:
    _, raw_labels = _raw_digits()
    dm = DigitsDataModule(classes=[3, 8], label_noise=0.25, seed=1)
    dm.setup()
    clean = (raw_labels[dm.train_indices] == 8).long()  # 3 -> 0, 8 -> 1
    noisy = dm.train_dataset.labels
    changed = (noisy != clean).nonzero().flatten()
    assert torch.equal(changed, dm.noisy_indices)
    assert len(changed) == round(0.25 * len(dm.train_dataset))
    assert set(noisy.tolist()) == {0, 1}  # flipped to the other kept class, never to 2..9
    assert torch.equal(dm.val_dataset.labels, (raw_labels[dm.val_indices] == 8).long())


def test_digits_ood_sets() -> None:
    raw_images, raw_labels = _raw_digits()
    dm = DigitsDataModule(classes=[0, 1, 2, 3, 4], test_size=200, batch_size=32, seed=2)
    dm.setup()
    loaders = dm.ood_dataloaders()
    assert list(loaders) == ["unseen_classes", "noise"]
    reference = dm.test_dataloader()
    for loader in loaders.values():
        assert loader.batch_size == reference.batch_size and not loader.drop_last
        assert isinstance(loader.sampler, SequentialSampler)
        assert loader.num_workers == reference.num_workers
        assert loader.pin_memory == reference.pin_memory
    full = DigitsDataModule(test_size=200, seed=2)
    full.setup()
    unseen_indices = full.test_indices[raw_labels[full.test_indices] >= 5]
    unseen = torch.cat([b[0] for b in loaders["unseen_classes"]])
    labels = torch.cat([b[1] for b in loaders["unseen_classes"]])
    assert len(unseen) == len(unseen_indices) == 200 - len(dm.test_dataset)
    torch.testing.assert_close(unseen[:, 0], (raw_images[unseen_indices] - dm.mean) / dm.std)
    assert labels.dtype == torch.int64 and (labels == -1).all()

    noise = torch.cat([b[0] for b in loaders["noise"]])
    assert noise.shape == (len(dm.test_dataset), 1, 8, 8)
    # Uniform [0, 1] pixels from the (seed, "ood_noise") stream, normalised like real images.
    pixels = torch.rand(noise.shape, generator=torch_generator(2, "ood_noise"))
    torch.testing.assert_close(noise, (pixels - dm.mean) / dm.std)
    assert (torch.cat([b[1] for b in loaders["noise"]]) == -1).all()
    again = DigitsDataModule(classes=[0, 1, 2, 3, 4], test_size=200, batch_size=32, seed=2)
    again.setup()
    assert torch.equal(torch.cat([b[0] for b in again.ood_dataloaders()["noise"]]), noise)


def test_digits_ood_without_classes_is_noise_only() -> None:
    dm = DigitsDataModule(test_size=50)
    with pytest.raises(
        RuntimeError, match=r"`DigitsDataModule.ood_dataloaders\(\)` was called before"
    ):
        dm.ood_dataloaders()
    dm.setup()
    loaders = dm.ood_dataloaders()
    assert list(loaders) == ["noise"] and len(loaders["noise"].dataset) == 50
    permuted = DigitsDataModule(classes=list(range(9, -1, -1)))
    permuted.setup()
    assert list(permuted.ood_dataloaders()) == ["noise"]  # no other digit is left
    _, raw_labels = _raw_digits()
    assert torch.equal(permuted.test_dataset.labels, 9 - raw_labels[permuted.test_indices])


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ([3], r"`classes` must hold at least 2 digits, got \[3\]\."),
        ([1, 1, 2], r"`classes` must not repeat a digit, got \[1, 1, 2\]\."),
        ([0, 10], r"`classes` must hold digits, integers in 0\.\.9, got 10 in \[0, 10\]\."),
        ([0, 1.0], r"integers in 0\.\.9, got 1\.0 in"),
        ([True, 2], r"integers in 0\.\.9, got True in"),
        (
            "01",
            r"`classes` must be a list of at least 2 distinct digits in 0\.\.9, or None, got '01'\.",
        ),
        (3, r"`classes` must be a list .* got 3\."),
    ],
)
def test_digits_classes_errors(classes: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(classes=classes)


def test_digits_classes_must_leave_images_in_every_split() -> None:
    _, raw_labels = _raw_digits()
    dm = DigitsDataModule(val_size=1, test_size=1, seed=0)
    dm.setup()
    val_digit = int(raw_labels[dm.val_indices[0]])
    others = [d for d in range(10) if d != val_digit][:2]
    with pytest.raises(
        ValueError, match=r"leaves no validation images: the validation split \(1 images"
    ):
        DigitsDataModule(val_size=1, test_size=1, seed=0, classes=others).setup()


def test_digits_classes_train_a_classifier_of_that_width() -> None:
    from lightning_mixup import SmallCNN, SoftLabelClassifier

    dm = DigitsDataModule(classes=[4, 9], batch_size=32)
    model = SoftLabelClassifier(SmallCNN(num_classes=2, width=4), 2, lr_scheduler=None)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.state.finished
    with pytest.raises(ValueError, match=r"datamodule has `num_classes` = 2"):
        trainer.fit(SoftLabelClassifier(SmallCNN(num_classes=10, width=4), 10), datamodule=dm)


def test_tensor_batches_fetch_a_batch_in_one_indexing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_single_items(self: _TensorBatches, index: int) -> None:
        raise AssertionError("per-sample __getitem__ must not be used")

    monkeypatch.setattr(_TensorBatches, "__getitem__", no_single_items)
    dm = DigitsDataModule(batch_size=50)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 24 and sum(len(b[1]) for b in batches) == 1197


# ---------------------------------------------------------------------------- fast path (phase 2)
def _fake_trainer(training: bool, epoch: int = 0, rank: int = 0, precision: str = "32-true"):
    """The four public Trainer attributes the fast-path hook reads."""
    plugin = Precision() if precision == "32-true" else HalfPrecision(precision)
    return SimpleNamespace(
        training=training, current_epoch=epoch, global_rank=rank, precision_plugin=plugin
    )


GRID = list(itertools.product(range(9), range(9), (False, True)))  # (top, left, flip)


def _all_crops(raw: torch.Tensor, dm: CIFAR10DataModule) -> torch.Tensor:
    """``(162, B, 3, 32, 32)``: every crop offset and flip of ``raw``, normalised."""
    b = raw.shape[0]
    top, left, flip = (torch.tensor(column).repeat_interleave(b) for column in zip(*GRID))
    crops = _crop_flip(raw.repeat(len(GRID), 1, 1, 1), top, left, flip, padding=4)
    return _normalize(crops, dm.mean, dm.std).view(len(GRID), *raw.shape)


def _matching_params(processed: torch.Tensor, raw: torch.Tensor, dm: CIFAR10DataModule) -> list:
    """For each processed image, the (top, left, flip) that produced it exactly (or fail)."""
    candidates = _all_crops(raw, dm).to(processed.dtype)
    hits = (candidates == processed[None]).flatten(2).all(-1)  # (162, B)
    assert hits.any(0).all(), "a training image is not a crop/flip of its source image"
    return [GRID[i] for i in hits.float().argmax(0).tolist()]


def test_crop_offsets_are_uniform_and_flips_fair() -> None:
    n = 81 * 200
    top, left, flip = _sample_crop_flip(n, 4, torch.Generator().manual_seed(0))
    assert top.min() == left.min() == 0 and top.max() == left.max() == 8
    counts = torch.bincount(top * 9 + left, minlength=81).double()
    chi2 = ((counts - 200) ** 2 / 200).sum().item()
    assert chi2 < 124.8  # chi-square, 80 degrees of freedom, p = 0.001
    assert abs(flip.sum().item() - n / 2) < 4 * (n / 4) ** 0.5
    # Flips are independent of the offsets: both halves cover every position evenly.
    for half in (flip, ~flip):
        cells = torch.bincount(top[half] * 9 + left[half], minlength=81).double()
        expected = half.sum().item() / 81
        assert ((cells - expected) ** 2 / expected).sum().item() < 124.8


def test_batched_crop_flip_equals_torchvision_on_pil_images(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root, fast=False)
    raw = cifar10.test_images[:3]
    fast = _all_crops(raw, dm)
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(dm.mean, dm.std)])
    for k, (top, left, flip) in enumerate(GRID):
        for i in range(3):
            pil = Image.fromarray(raw[i].permute(1, 2, 0).numpy())
            crop = TF.crop(TF.pad(pil, 4), top, left, 32, 32)
            expected = to_tensor(TF.hflip(crop) if flip else crop)
            torch.testing.assert_close(fast[k, i], expected, rtol=0, atol=1e-6)
    # Offset (4, 4) without flip is the un-augmented image: exactly the classic eval output.
    four, no_flip = torch.full((3,), 4), torch.zeros(3, dtype=torch.bool)
    centre = _normalize(_crop_flip(raw, four, four, no_flip, padding=4), dm.mean, dm.std)
    classic = torch.stack([dm.test_dataset[i][0] for i in range(3)])
    torch.testing.assert_close(centre, classic, rtol=0, atol=0)


def test_fast_hook_augments_training_batches_only(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root, batch_size=64)
    raw = next(iter(dm.val_dataloader()))[0]
    dm.trainer = _fake_trainer(training=False)
    evaluated = dm.on_after_batch_transfer([raw.clone(), torch.zeros(50)], 0)[0]
    torch.testing.assert_close(evaluated, normalised(raw, dm), rtol=0, atol=1e-6)
    dm.trainer = _fake_trainer(training=True)
    batch = [raw.clone(), torch.zeros(50)]
    out = dm.on_after_batch_transfer(batch, 0)
    assert out is batch and out[0].dtype == torch.float32 and out[0].shape == raw.shape
    params = _matching_params(out[0], raw, dm)
    assert len(set(params)) > 10  # per-sample offsets and flips, not one per batch


def test_fast_hook_randomness_is_seeded_by_seed_epoch_and_rank(cifar10: FakeCifar) -> None:
    raw = cifar10.test_images[:50]

    def augmented(seed: int, epoch: int, rank: int, calls: int = 1) -> torch.Tensor:
        dm = make(root=cifar10.root, seed=seed)
        dm.trainer = _fake_trainer(training=True, epoch=epoch, rank=rank)
        state = torch.get_rng_state()
        out = [dm.on_after_batch_transfer([raw.clone(), None], 0)[0] for _ in range(calls)]
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not used
        return torch.stack(out)

    reference = augmented(0, 0, 0, calls=2)
    dm = make(root=cifar10.root, seed=0)
    dm.trainer = _fake_trainer(training=True)
    dm.on_after_batch_transfer([raw.clone(), None], 0)
    dm.teardown("fit")  # a second fit with the same datamodule starts the stream again
    assert torch.equal(dm.on_after_batch_transfer([raw.clone(), None], 0)[0], reference[0])
    assert torch.equal(reference, augmented(0, 0, 0, calls=2))
    assert not torch.equal(reference[0], reference[1])  # the stream moves on within an epoch
    for other in (augmented(1, 0, 0), augmented(0, 1, 0), augmented(0, 0, 1)):
        assert not torch.equal(reference[0], other[0])


def test_fast_hook_applies_the_trainer_precision(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root)
    raw = next(iter(dm.train_dataloader()))
    dm.trainer = _fake_trainer(training=True, precision="bf16-true")
    assert dm.on_after_batch_transfer(raw, 0)[0].dtype == torch.bfloat16


def test_fast_hook_rejects_other_batches(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root)
    images, labels = next(iter(dm.val_dataloader()))
    with pytest.raises(TypeError, match=r"expects the `\[images, labels\]` list .*, got tuple\."):
        dm.on_after_batch_transfer((images, labels), 0)
    with pytest.raises(TypeError, match=r"expects uint8 \(B, C, H, W\) images, got torch.float32"):
        dm.on_after_batch_transfer([images.float(), labels], 0)
    classic = make(root=cifar10.root, fast=False)
    anything = (images.float(), labels)
    assert classic.on_after_batch_transfer(anything, 0) is anything


def test_fast_loader_splits_cleanly_under_a_distributed_sampler(cifar10: FakeCifar) -> None:
    dm = make(root=cifar10.root, val_size=50, batch_size=32)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(dm.train_dataset, num_replicas=2, rank=rank, seed=0)
        # What Lightning does under DDP: rebuild our DataLoader around its DistributedSampler.
        loader = _update_dataloader(dm.train_dataloader(), sampler)
        batches = list(loader)
        assert all(isinstance(b, list) and b[0].dtype == torch.uint8 for b in batches)
        assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
        seen.append(torch.cat([sample_index(b[0]) for b in batches]))
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert torch.equal(torch.cat(seen).sort().values, dm.train_indices)


class _FastProbe(pl.LightningModule):
    """Records each batch before transfer (raw uint8) and as the steps receive it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)
        self.raw: dict[str, list[torch.Tensor]] = {"train": [], "val": []}
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    def on_before_batch_transfer(self, batch: list, dataloader_idx: int) -> list:
        self.raw["train" if self.trainer.training else "val"].append(batch[0].clone())
        return batch

    def training_step(self, batch: list, batch_idx: int) -> torch.Tensor:
        assert isinstance(batch, list) and batch[1].dtype == torch.int64
        self.seen["train"].append(batch[0].detach().clone())
        logits = self.layer(batch[0].flatten(1))
        return torch.nn.functional.cross_entropy(logits.float(), batch[1])

    def validation_step(self, batch: list, batch_idx: int) -> None:
        self.seen["val"].append(batch[0].clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_fast_path_in_a_real_fit(cifar10: FakeCifar, precision: str) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar10.root), batch_size=16, num_workers=0, val_size=20)
    model = _FastProbe()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(overridden|does not have many workers)")
        trainer.fit(model, datamodule=dm)
    dtype = torch.float32 if precision == "32-true" else torch.bfloat16
    assert len(model.seen["train"]) == 4 and len(model.seen["val"]) == 4
    params = []
    for raw, seen in zip(model.raw["train"], model.seen["train"]):
        assert raw.dtype == torch.uint8 and seen.dtype == dtype
        params += _matching_params(seen, raw, dm)
    assert len(set(params)) > 10
    for raw, seen in zip(model.raw["val"], model.seen["val"]):
        torch.testing.assert_close(seen, normalised(raw, dm).to(dtype), rtol=0, atol=1e-6)


def test_cifar100_arguments_are_documented_once_on_cifar10() -> None:
    # CIFAR-100 inherits CIFAR-10's __init__ and its Args; LightningCLI's parser (jsonargparse)
    # still describes every argument, the CIFAR-100 folder included. jsonargparse reads an
    # inherited __init__'s docstring from 4.51 on (checked: 4.27.7 to 4.50 print the arguments
    # without descriptions); the oldest-versions stage has 4.27.7.
    import jsonargparse
    from jsonargparse import ArgumentParser
    from packaging.version import Version

    if Version(jsonargparse.__version__) < Version("4.51"):
        pytest.skip(
            f"jsonargparse {jsonargparse.__version__} < 4.51 describes no inherited argument"
        )

    parser = ArgumentParser()
    parser.add_class_arguments(CIFAR100DataModule, "data")
    text = " ".join(parser.format_help().split())
    assert "cifar-100-python" in text and "Fraction in ``[0, 1)`` of training labels" in text
    assert "Args:" not in (CIFAR100DataModule.__doc__ or "")
