"""Training throughput of ``CIFAR10DataModule``: the fast uint8 path against torchvision's PIL path.

Both pipelines read the same full-size CIFAR-10 (50,000 training images) and deliver the same
thing to ``training_step``: float32 ``(B, 3, 32, 32)`` images, randomly cropped (padding 4) and
flipped, normalised, on the device. This script times, in interleaved rounds, training images
per second over ``--batches`` batches of:

* ``classic``: ``CIFAR10DataModule(fast=False, num_workers=2)``: torchvision's per-image PIL
  ``RandomCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` in DataLoader worker
  processes, then the default collate;
* ``fast``: ``CIFAR10DataModule(fast=True, num_workers=0)``: one indexing operation per batch on
  an in-memory uint8 tensor, then the device-side crop, flip and normalisation of
  ``on_after_batch_transfer``.

Each batch goes through what a Trainer does between the DataLoader and ``training_step``:
``next(iterator)``, then the datamodule's ``on_before_batch_transfer``,
``transfer_batch_to_device`` and ``on_after_batch_transfer``. The datamodules are attached to a
real ``pl.Trainer`` whose state says it is fitting and training (``trainer.training = True``),
which is what the fast path's hook checks before it augments; the trainer never runs a loop.

Unless ``--data-dir`` points at an extracted ``cifar-10-batches-py``, the data set is generated
in a temporary folder with ``tests/cifar_files.py``: the real on-disk format (Python 2 pickles,
5 × 10,000 training and 10,000 test images), random pixel values.

Example:
    python benchmarks/bench_data.py --threads 1
    python benchmarks/bench_data.py --device cuda --batches 200
    python benchmarks/bench_data.py --data-dir ~/data   # the real CIFAR-10, if you have it
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as H
import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, default_collate

from lightning_mixup.classification.data import CIFAR10DataModule

GOAL = 10.0  # fast path ÷ classic path, training images per second
PREFETCH_FACTOR = 2  # DataLoader's default: batches each worker keeps ready


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument(
        "--batches",
        type=int,
        default=50,
        help="batches timed per measurement, after the warm-up batches (default: 50)",
    )
    parser.add_argument(
        "--classic-workers",
        type=int,
        default=2,
        help="DataLoader workers of the classic PIL path (default: 2)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds of pause before each measurement, so idle workers have finished "
        "prefetching and do not compete with the next contender (default: 0.5)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding an extracted cifar-10-batches-py; default: generate one in a "
        "temporary folder",
    )
    H.add_common_args(parser, repeats=7, min_time=0.05)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.batches < 1 or args.classic_workers < 0 or args.settle < 0:
        sys.exit("--batch-size and --batches must be >= 1, --classic-workers and --settle >= 0.")
    return args


# ---------------------------------------------------------------------------- data on disk
def write_full_cifar10(root: Path, seed: int) -> None:
    """Write a full-size CIFAR-10 under ``root`` and make torchvision's MD5 check accept it."""
    # The tests' writer produces the real layout (Python 2 pickles, same keys and dtypes).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.cifar_files import checksum_lists, write_cifar10

    written = write_cifar10(root, per_batch=10_000, n_test=10_000, seed=seed)
    # Our files are not the official ones, so their MD5s differ from torchvision's list. As the
    # tests do, point CIFAR10.train_list / test_list / meta at the MD5s of the files just written:
    # torchvision still hashes every file on load and still refuses one that does not match.
    for name, value in checksum_lists(torchvision.datasets.CIFAR10, written).items():
        setattr(torchvision.datasets.CIFAR10, name, value)


# ---------------------------------------------------------------------------- pipelines
def fitting_trainer(device: torch.device) -> pl.Trainer:
    """A real Trainer on ``device`` whose state reads 'fitting, training stage'; it runs nothing."""
    if device.type == "cuda":
        trainer = pl.Trainer(accelerator="gpu", devices=[device.index or 0], logger=False)
    else:
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    trainer.state.fn = TrainerFn.FITTING
    trainer.training = True  # public setter: state.stage = RunningStage.TRAINING
    return trainer


class Stream:
    """Endless training batches of one datamodule, as the Trainer hands them to the step.

    ``ensure(n)`` starts a new epoch when fewer than ``n`` full batches are left in this one, so a
    timed segment never includes the short last batch or an epoch restart.
    """

    def __init__(self, dm: CIFAR10DataModule, device: torch.device) -> None:
        self.dm = dm
        self.device = device
        self.loader: DataLoader = dm.train_dataloader()
        self.iterator: Any = None
        self.left = 0

    def ensure(self, n: int) -> None:
        """Start a new epoch unless ``n`` full batches are left in this one."""
        if self.left < n:
            self.iterator = iter(self.loader)
            self.left = len(self.loader.dataset) // self.loader.batch_size

    def fetch(self) -> Any:
        """The next host batch, as ``next(iterator)`` gives it to the Trainer."""
        self.ensure(1)
        self.left -= 1
        return next(self.iterator)

    def to_device(self, batch: Any) -> Any:
        """``on_before_batch_transfer`` then ``transfer_batch_to_device``, as the Trainer calls them."""
        batch = self.dm.on_before_batch_transfer(batch, 0)
        return self.dm.transfer_batch_to_device(batch, self.device, 0)

    def step(self) -> Any:
        """One batch: ``next``, the two transfer hooks, then ``on_after_batch_transfer``."""
        return self.dm.on_after_batch_transfer(self.to_device(self.fetch()), 0)


def make_datamodule(
    data_dir: str, fast: bool, workers: int, args: argparse.Namespace, trainer: pl.Trainer
) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(
        data_dir, batch_size=args.batch_size, num_workers=workers, seed=args.seed, fast=fast
    )
    dm.trainer = trainer  # what Trainer.fit does; pin_memory and the hook read it
    dm.setup("fit")
    return dm


def throughput_rounds(
    streams: dict[str, Stream], args: argparse.Namespace, timer: H.Timer
) -> dict[str, H.Contender]:
    """Interleaved rounds; each measurement is ``--batches`` consecutive batches of one stream."""
    contenders = {}
    for name, stream in streams.items():
        workers = stream.loader.num_workers
        # Workers hold up to workers × prefetch batches ready when a measurement starts: draining
        # twice that many first leaves the pipeline in its steady state.
        warmup = max(2, 2 * workers * PREFETCH_FACTOR)

        def setup(s: Stream = stream, w: int = warmup) -> None:
            time.sleep(args.settle)
            s.ensure(w + args.batches)
            for _ in range(w):
                s.step()

        contenders[name] = H.Contender(name, stream.step, setup)
    order = list(contenders.values())
    rng = random.Random(args.seed)
    for c in order:  # first epoch, worker start-up, allocator: untimed
        c.setup()
    for _ in range(args.repeats):
        rng.shuffle(order)
        for c in order:
            c.setup()
            c.times.append(timer.per_call(c.fn, args.batches))
    return contenders


def breakdown_contenders(fast: Stream, classic: Stream, trainer: pl.Trainer) -> list[H.Contender]:
    """The fast path's parts (and one process's classic batch), timed apart on the same data."""
    host_batch = fast.fetch()
    raw_images, labels = fast.to_device(host_batch)
    dataset = classic.loader.dataset
    size = len(raw_images)
    indices = torch.randperm(len(dataset))[:size].tolist()

    def hook(training: bool) -> Callable[[], object]:
        def call() -> object:
            trainer.training = training
            out = fast.dm.on_after_batch_transfer([raw_images, labels], 0)
            trainer.training = True
            return out

        return call

    return [
        H.Contender("fast: next(iterator)", fast.fetch),
        H.Contender("fast: transfer hooks", lambda: fast.to_device(host_batch)),
        H.Contender("fast: on_after_batch_transfer, eval (normalise)", hook(False)),
        H.Contender("fast: on_after_batch_transfer, train (crop+flip+normalise)", hook(True)),
        H.Contender("fast: whole batch", fast.step),
        H.Contender(
            "classic: one process (PIL getitem × B + collate)",
            lambda: default_collate([dataset[i] for i in indices]),
        ),
    ]


# ---------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = H.setup_device(args)
    timer = H.Timer(device)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    print("# bench_data: CIFAR-10 training pipeline throughput\n")
    print(H.environment(device))
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        t0 = time.perf_counter()
        write_full_cifar10(Path(tmp.name), args.seed)
        data_dir = tmp.name
        print(
            f"- data: generated CIFAR-10 in the real on-disk format in {time.perf_counter() - t0:.1f}"
            " s (50,000 training images, random pixels); torchvision's MD5 list set to the"
            " written files"
        )
    else:
        data_dir = os.path.expanduser(args.data_dir)
        print(f"- data: {data_dir} (torchvision's own MD5 list)")

    trainer = fitting_trainer(device)
    streams = {
        f"classic (PIL, {args.classic_workers} workers)": Stream(
            make_datamodule(data_dir, False, args.classic_workers, args, trainer), device
        ),
        "fast (uint8, 0 workers, device-side aug)": Stream(
            make_datamodule(data_dir, True, 0, args, trainer), device
        ),
    }
    classic_name, fast_name = streams
    n_train = len(streams[fast_name].loader.dataset)
    print(
        f"- {n_train:,} training images, batch {args.batch_size}; {args.repeats} interleaved "
        f"rounds of {args.batches} batches per pipeline after untimed warm-up batches; a "
        f"{args.settle:g} s pause before each measurement; medians over rounds"
    )

    results = throughput_rounds(streams, args, timer)
    classic_rate = args.batch_size / results[classic_name].median
    fast_rate = args.batch_size / results[fast_name].median
    rows = []
    for name, c in results.items():
        lo, hi = c.quartiles
        rate = args.batch_size / c.median
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{args.batch_size / hi:,.0f}–{args.batch_size / lo:,.0f}",
                f"{args.batch_size / c.best:,.0f}",
                H.ms(c.median),
                H.ratio(rate, classic_rate),
            ]
        )
    headers = [
        "pipeline",
        "images/s",
        "p25–p75 images/s",
        "best images/s",
        "ms/batch",
        "× classic",
    ]
    print(f"\n## Training images per second, batch {args.batch_size}, on {device}\n")
    print(H.markdown_table(headers, rows, "lrrrrr"))

    parts = breakdown_contenders(streams[fast_name], streams[classic_name], trainer)
    H.run_interleaved(parts, timer, args.repeats, args.min_time, args.seed)
    whole = next(c for c in parts if c.name == "fast: whole batch").median
    rows = []
    for c in parts:
        lo, hi = c.quartiles
        share = f"{100 * c.median / whole:.0f} %" if c.name.startswith("fast") else ""
        rows.append(
            [
                c.name,
                H.ms(c.median),
                f"{H.ms(lo)}–{H.ms(hi)}",
                f"{1e6 * c.median / args.batch_size:.2f}",
                str(c.number),
                share,
            ]
        )
    headers = ["part", "ms/batch", "p25–p75 ms", "µs/image", "calls/meas.", "of fast whole"]
    print("\n## Where the time goes (one batch, parts timed apart, in the main process)\n")
    print(H.markdown_table(headers, rows, "lrrrrr"))
    print(
        "\n'eval' runs the hook with trainer.training = False (uint8 → float32, normalise); "
        "'train' adds the batched crop and flip, so their difference is the augmentation. The "
        "classic row is one worker's work per batch, without the inter-process transfer."
    )

    print(
        f"\nSummary: fast path: {fast_rate:,.0f} images/s = {fast_rate / classic_rate:.1f}× the "
        f"PIL pipeline ({classic_rate:,.0f} images/s with {args.classic_workers} workers) "
        f"(goal ≥ {GOAL:g}×)."
    )
    del streams
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
