"""Write tiny CIFAR-10/100 datasets in the exact on-disk layout torchvision reads.

The real archives hold Python 2 pickles: dict keys and strings are Python 2 ``str`` objects, so
they load as ``str`` under ``encoding="latin1"`` (what torchvision uses) and as ``bytes`` under
``encoding="bytes"`` (``b"data"``, ``b"labels"``). :class:`_Py2Pickler` writes those strings with
the same opcodes, so the tiny files are faithful copies of the format, just shorter.

Every image is random noise except pixel (0, 0) of the red and green planes, which hold
``index // 256`` and ``index % 256``: a test can read back which sample an un-augmented image
came from (:func:`sample_index`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PIXELS = 32 * 32


class _Py2Str(bytes):
    """Bytes that are pickled as a Python 2 ``str`` (opcodes ``U`` / ``T``)."""


class _Py2Pickler(pickle._Pickler):
    """Pure-Python pickler that writes :class:`_Py2Str` with the protocol-2 string opcodes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: _Py2Str) -> None:
        raw = bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def _s(text: str) -> _Py2Str:
    return _Py2Str(text.encode("latin1"))


def _dump(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def md5(path: Path) -> str:
    """MD5 of a file, as torchvision's integrity check computes it."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, start: int, count: int) -> np.ndarray:
    data = rng.integers(0, 256, size=(count, 3 * PIXELS), dtype=np.uint8)
    index = np.arange(start, start + count)
    data[:, 0] = index // 256
    data[:, PIXELS] = index % 256
    return data


def sample_index(images: Tensor) -> Tensor:
    """Recover the per-split sample index from un-augmented uint8 ``(B, 3, 32, 32)`` images."""
    return images[:, 0, 0, 0].long() * 256 + images[:, 1, 0, 0].long()


@dataclass
class FakeCifar:
    """What was written: the folder, the clean labels, the images, and each file's MD5."""

    root: Path
    train_labels: Tensor
    test_labels: Tensor
    train_images: Tensor  # (N, 3, 32, 32) uint8
    test_images: Tensor
    md5s: dict[str, str] = field(default_factory=dict)


def _finish(
    root: Path,
    folder: Path,
    train: list[np.ndarray],
    test: np.ndarray,
    train_labels: list[int],
    test_labels: list[int],
) -> FakeCifar:
    train_all = np.concatenate(train)
    return FakeCifar(
        root=root,
        train_labels=torch.tensor(train_labels),
        test_labels=torch.tensor(test_labels),
        train_images=torch.from_numpy(train_all.reshape(-1, 3, 32, 32).copy()),
        test_images=torch.from_numpy(test.reshape(-1, 3, 32, 32).copy()),
        md5s={p.name: md5(p) for p in folder.iterdir()},
    )


def write_cifar10(root: Path, per_batch: int = 50, n_test: int = 50, seed: int = 0) -> FakeCifar:
    """Write ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` under ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_labels = [], []
    for b in range(5):
        data = _images(rng, b * per_batch, per_batch)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        names = [_s(f"image_{b}_{i}.png") for i in range(per_batch)]
        batch_label = _s(f"training batch {b + 1} of 5")
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                _s("batch_label"): batch_label,
                _s("labels"): labels,
                _s("data"): data,
                _s("filenames"): names,
            },
        )
        train.append(data)
        train_labels += labels
    test = _images(rng, 0, n_test)
    test_labels = rng.integers(0, 10, size=n_test).tolist()
    _dump(
        folder / "test_batch",
        {
            _s("batch_label"): _s("testing batch 1 of 1"),
            _s("labels"): test_labels,
            _s("data"): test,
            _s("filenames"): [_s(f"test_{i}.png") for i in range(n_test)],
        },
    )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _dump(
        folder / "batches.meta",
        {
            _s("num_cases_per_batch"): per_batch,
            _s("label_names"): [_s(n) for n in names],
            _s("num_vis"): 3 * PIXELS,
        },
    )
    return _finish(root, folder, train, test, train_labels, test_labels)


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 1) -> FakeCifar:
    """Write ``cifar-100-python/{train, test, meta}`` under ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays, labels = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[split] = _images(rng, 0, n)
        labels[split] = rng.integers(0, 100, size=n).tolist()
        _dump(
            folder / split,
            {
                _s("filenames"): [_s(f"{split}_{i}.png") for i in range(n)],
                _s("batch_label"): _s(f"{split}ing batch 1 of 1"),
                _s("fine_labels"): labels[split],
                _s("coarse_labels"): [y // 5 for y in labels[split]],
                _s("data"): arrays[split],
            },
        )
    _dump(
        folder / "meta",
        {
            _s("fine_label_names"): [_s(f"fine_{i}") for i in range(100)],
            _s("coarse_label_names"): [_s(f"coarse_{i}") for i in range(20)],
        },
    )
    return _finish(root, folder, [arrays["train"]], arrays["test"], labels["train"], labels["test"])


def checksum_lists(dataset_cls: type, written: FakeCifar) -> dict[str, object]:
    """``train_list`` / ``test_list`` / ``meta`` for ``dataset_cls``, with the written files' MD5s."""

    def relist(entries: list[list[str]]) -> list[list[str]]:
        return [[name, written.md5s[name]] for name, _ in entries]

    meta = dict(dataset_cls.meta)
    meta["md5"] = written.md5s[meta["filename"]]
    return {
        "train_list": relist(dataset_cls.train_list),
        "test_list": relist(dataset_cls.test_list),
        "meta": meta,
    }
