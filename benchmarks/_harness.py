"""Shared timing helpers for the scripts in ``benchmarks/`` (not a benchmark itself).

Every script measures its contenders *interleaved*: each round times every contender once, in a
freshly shuffled order, and the reported figure is the median over rounds. On a shared, noisy
machine this keeps slow phases (another process waking up) from landing on one contender only.

On CUDA a measurement is bracketed by CUDA events after a ``synchronize``, so queued kernels are
counted; on the CPU it is ``time.perf_counter``. Each measurement repeats the call ``number``
times, ``number`` being calibrated once per contender so that a measurement lasts at least
``--min-time`` seconds; the figure stored is the time per call.

The scripts import this module as ``_harness``: ``python benchmarks/bench_mix.py`` puts
``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata

import torch


def add_common_args(parser: argparse.ArgumentParser, repeats: int, min_time: float) -> None:
    """Add ``--device``, ``--repeats``, ``--min-time``, ``--threads`` and ``--seed`` to ``parser``."""
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'cuda:N' (default: cpu)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help=f"interleaved rounds; the median over rounds is reported (default: {repeats})",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=min_time,
        help=f"seconds one measurement lasts at least; sets calls per measurement (default: {min_time})",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs and round order")


def setup_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and ``--seed``; check and return ``--device``."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available in this environment.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.repeats < 1 or args.min_time < 0:
        sys.exit("--repeats must be >= 1 and --min-time >= 0.")
    return device


class Timer:
    """Time of ``number`` calls of a function, in seconds per call, on one device.

    ``clock="wall"`` (the default) measures wall time. ``clock="cpu"`` measures the CPU time of
    the calling thread (CPU device only): on a machine shared with other processes it leaves out
    the time the thread waits for a core, so a call is charged for its own work (still slowed by
    what the others do to the caches). Use it with ``--threads 1``: other threads' work is not
    counted.
    """

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.cuda = device.type == "cuda"
        if clock not in ("wall", "cpu") or (clock == "cpu" and self.cuda):
            sys.exit(f"--clock {clock}: use 'wall', or 'cpu' on the CPU device.")
        self._now = time.thread_time if clock == "cpu" else time.perf_counter

    def sync(self) -> None:
        """Wait for queued CUDA work (no-op on the CPU)."""
        if self.cuda:
            torch.cuda.synchronize()

    def per_call(self, fn: Callable[[], object], number: int) -> float:
        """Seconds per call of ``fn``, averaged over ``number`` back-to-back calls."""
        self.sync()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / number
        t0 = self._now()
        for _ in range(number):
            fn()
        return (self._now() - t0) / number


@dataclass
class Contender:
    """One thing to time: ``fn`` is timed, ``setup`` (e.g. restoring an input) runs before, untimed."""

    name: str
    fn: Callable[[], object]
    setup: Callable[[], object] | None = None
    number: int = 0
    times: list[float] = field(default_factory=list)

    def _prepare(self) -> None:
        if self.setup is not None:
            self.setup()

    @property
    def median(self) -> float:
        """Median seconds per call over rounds."""
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        """Fastest round, seconds per call: a lower bound less sensitive to machine load."""
        return min(self.times)

    @property
    def quartiles(self) -> tuple[float, float]:
        """25th and 75th percentiles of the per-round times (equal to the median for one round)."""
        if len(self.times) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]


def run_interleaved(
    contenders: Sequence[Contender],
    timer: Timer,
    rounds: int,
    min_time: float,
    seed: int = 0,
    warmup: int = 2,
    max_number: int = 10_000,
) -> None:
    """Warm up and calibrate each contender, then time them all for ``rounds`` shuffled rounds."""
    for c in contenders:
        for _ in range(warmup):
            c._prepare()
            c.fn()
        if min_time <= 0:
            c.number = 1
            continue
        # The fastest of a few single calls estimates a call's cost: a stall caused by another
        # process only ever makes a call slower, so the minimum is the robust estimate.
        estimate = math.inf
        for _ in range(3):
            c._prepare()
            estimate = min(estimate, timer.per_call(c.fn, 1))
        wanted = math.ceil(min_time / estimate) if estimate > 0 else max_number
        c.number = max(1, min(max_number, wanted))
    order = list(contenders)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for c in order:
            c._prepare()
            c.times.append(timer.per_call(c.fn, c.number))


def trainer(device: torch.device, callbacks: list, **kwargs: object) -> object:
    """A quiet ``pl.Trainer`` on ``device`` for one short fit; ``kwargs`` go to it too.

    One epoch, and no validation, logger, checkpoints, progress bar or model summary.
    """
    import lightning.pytorch as pl

    where: dict[str, object] = (
        {"accelerator": "gpu", "devices": [device.index or 0]}
        if device.type == "cuda"
        else {"accelerator": "cpu", "devices": 1}
    )
    return pl.Trainer(
        **where,
        callbacks=callbacks,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def ms(seconds: float) -> str:
    """Format seconds as milliseconds with three significant-ish decimals."""
    value = seconds * 1e3
    if value >= 100:
        return f"{value:.1f}"
    if value >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def timing_cells(c: Contender) -> list[str]:
    """A contender's median, p25–p75 and fastest round in ms, and its calls per measurement."""
    lo, hi = c.quartiles
    return [ms(c.median), f"{ms(lo)}–{ms(hi)}", ms(c.best), str(c.number)]


def ratio(a: float, b: float) -> str:
    """``a / b`` formatted as ``1.23x``."""
    return f"{a / b:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table with padded columns; ``align`` holds 'l' or 'r' per column (default 'l')."""
    align = align.ljust(len(headers), "l")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if a == "r" else str(c).ljust(w)
            for c, w, a in zip(cells, widths, align)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if a == "r" else "-" * w for w, a in zip(widths, align)]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)])


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for row in out.splitlines():
        if row.startswith("Model name:"):
            return row.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _package_commit() -> str:
    """Commit of the measured ``lightning_mixup`` checkout, flagged when it has local changes."""
    try:
        import lightning_mixup
    except ImportError:
        return "lightning_mixup not importable"
    package = os.path.dirname(os.path.abspath(lightning_mixup.__file__))

    def git(*cmd: str) -> str:
        done = subprocess.run(
            ["git", "-C", package, *cmd], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        head = git("log", "-1", "--format=%h", "--", ".")
        dirty = git("status", "--porcelain", "--", ".")
    except OSError:
        head = dirty = ""
    if not head:
        return f"{package} (not a git checkout)"
    return f"{package} at commit {head}" + (" + uncommitted changes" if dirty else "")


def environment(device: torch.device) -> str:
    """Lines describing when and where the benchmark ran, for pasting next to its tables."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in ("torch", "torchvision", "lightning", "timm", "lightning-mixup")
    )
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{_cpu_model()}, {torch.get_num_threads()} torch threads"
    )
    lines = [
        f"- date: {when}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- python {platform.python_version()}, {versions}",
        f"- measured code: {_package_commit()}",
        f"- device: {device} ({where})",
    ]
    if hasattr(os, "getloadavg"):
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
        lines.append(f"- load average (1 min) at start: {load:.2f} on {cpus} CPUs")
        if device.type == "cpu" and load > cpus and torch.get_num_threads() > 1:
            lines.append(
                "- WARNING: the machine is oversubscribed; multi-threaded torch ops then stall on "
                "descheduled threads and small ops can read 100x slow: consider --threads 1."
            )
    return "\n".join(lines)
