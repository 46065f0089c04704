"""Time MixUp/CutMix on a batch: ours against a plain copy, timm and torchvision.

For each batch size (float32 ``B×C×H×W``) this times, interleaved:

* ``copy``: ``dst.copy_(x)`` into a preallocated tensor, the baseline (one read, one write);
* ours, ``apply`` only: :meth:`apply` with parameters drawn beforehand (torch ops, with a
  preallocated ``buffer``, as the callback runs it);
* ours, ``apply`` forced onto the other CPU path (rows marked ``[gather]`` or ``[pairs]``): large
  samples are mixed pair by pair and small ones with a gather (``PAIRWISE_MIN_BYTES``); these rows
  time the path the rule does not take, for MixUp batch and CutMix elem;
* ours, ``sample+apply``: what :class:`~lightning_mixup.MixupCallback` does per step: the batch's
  generator from the package's seed derivation, :func:`~lightning_mixup.functional.soft_targets` of the
  integer labels, ``sample`` and ``apply`` (both rows cycle through the same 64 seeds, so their
  difference is the cost of drawing);
* ``timm.data.Mixup`` (MixUp: ``mixup_alpha=1, cutmix_alpha=0``; CutMix: ``mixup_alpha=0,
  cutmix_alpha=1``; ``label_smoothing=0`` as ours; ``mode`` batch or elem), called as
  ``mixup(x, labels)``. timm is optional: without it those rows are skipped. It asserts an even
  batch, so odd batch sizes skip it too;
* ``torchvision.transforms.v2.MixUp`` / ``CutMix`` called on ``(x, labels)`` (batch mode only:
  torchvision has no per-sample mode);
* ``hook``: the whole ``MixupCallback.on_train_batch_start``, what a user pays per batch, for
  ``targets="soft"`` and ``targets="loss"``, MixUp and CutMix (``alpha=1``), batch and elem mode:
  the batch's generator, the label range check, the NaN/Inf screen, the draws, the mix and the
  targets (soft rows, or the loss mix) written back. Each call gets a fresh list ``[x, labels]``
  with integer labels, as a DataLoader hands it over.

The hook rows need a Trainer: everything runs inside one real ``trainer.fit`` (a one-layer
LightningModule with ``num_classes`` and a ``criterion``, CPU or ``--device``), whose first
``on_train_start`` callback runs every measurement and then stops the fit before its first batch.
Each measured callback is set up as the Trainer sets up its own callbacks (``setup(trainer,
module, "fit")``, ``on_fit_start``, ``on_train_start``, ``on_train_epoch_start``), so it reads the
Trainer's real counters (epoch, global step, batches per epoch, rank, the train dataloader); they
are not in ``trainer.callbacks``, where eight MixupCallbacks with one schedule would be refused.
Between measurements ``on_train_batch_end`` runs untimed (it restores the criterion in loss mode).

Ours and timm mix ``x`` in place; torchvision returns new tensors. ``x`` is restored from a
pristine copy before every measurement (untimed), so every contender sees the same data.
With ``--profile``, at the first size it also: breaks one step into sub-steps and prints the
heaviest operators under ``torch.profiler``, for ``sample+apply`` and for the whole hook; splits
a batch-mode hook call and timm's call into their passes over the data and the rest (the
"anatomy"); and times each part of the hook (:data:`HOOK_PARTS`: soft rows and label check,
NaN/Inf screen, schedule, the generator from the key and its hash, the draft and its matching,
the box and parameters, the input mix, the target or loss mix, the criterion swap, the ``.to()``
copies, the epoch statistics) inside the hook and alone, in both targets modes.

On a CPU shared with other processes, ``--clock cpu`` (with ``--threads 1``) times the CPU time
of the measuring thread instead of wall time, leaving out the time it waits for a core.

Example:
    python benchmarks/bench_mix.py --repeats 15
    python benchmarks/bench_mix.py --device cuda --sizes 256x3x224x224
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import statistics
import sys
import warnings
from collections.abc import Callable

import _harness as H
import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from lightning_mixup import MixupCallback, _criterion, _guard, _seed, _targets
from lightning_mixup import callback as _callback
from lightning_mixup import functional as LF
from lightning_mixup import policies as LP
from lightning_mixup._seed import numpy_generator
from lightning_mixup.policies import CutMix, MixUp

OPS = (("MixUp", "batch"), ("MixUp", "elem"), ("CutMix", "batch"), ("CutMix", "elem"))
TARGETS = ("soft", "loss")
N_DRAWS = 64
LARGE_GOAL = 1.3  # sample+apply at the largest size, in copies of the batch
PROFILE_REPEATS = 5
#: The parts of the hook that ``--profile`` takes out one at a time: label, owner, attribute,
#: and the targets modes it runs in. A label that starts with "↳" is a part of the part above it
#: (its time is counted there too); ``.to()`` copies run inside the mixes.
HOOK_PARTS: tuple[tuple[str, object, str, tuple[str, ...]], ...] = (
    ("targets: soft rows + label check", _targets.Targets, "prepare", TARGETS),
    ("↳ label check (range of the indices)", LF, "check_indices", TARGETS),
    ("NaN/Inf screen", _guard.Guard, "finite", TARGETS),
    ("schedule strength", MixupCallback, "strength", TARGETS),
    ("per-batch generator from the key", _callback, "numpy_generator", TARGETS),
    ("↳ key hash (BLAKE2b)", _seed, "derive", TARGETS),
    ("draft: matching, coin flips, λ", LP._Policy, "draft", TARGETS),
    ("↳ random perfect matching", LF, "_partners", TARGETS),
    ("finish: box, λ per sample, MixParams", LP.Draft, "finish", TARGETS),
    ("input mix (the data passes)", LP._Policy, "mix_inputs", TARGETS),
    ("target mix (soft rows)", LP, "mix_target", ("soft",)),
    ("loss mix (LossMix.build)", _criterion.LossMix, "build", ("loss",)),
    ("criterion swap (install)", _criterion.CriterionSwap, "install", ("loss",)),
    ("↳ .to() copies of partner and λ (to_device)", LF, "to_device", TARGETS),
    ("epoch statistics (Guard.add: λ mean)", _guard.Guard, "add", TARGETS),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="128x3x32x32,256x3x32x32,64x3x224x224",
        help="comma-separated BxCxHxW batch shapes (default: %(default)s)",
    )
    parser.add_argument("--num-classes", type=int, default=10, help="classes (default: 10)")
    parser.add_argument("--no-timm", action="store_true", help="skip timm even if installed")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time the sub-steps of one callback step and profile it at the first size",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or the CPU time of the measuring thread (CPU only; for a machine shared "
        "with other processes, with --threads 1) (default: %(default)s)",
    )
    H.add_common_args(parser, repeats=15, min_time=0.02)
    return parser.parse_args(argv)


def parse_size(text: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in text.lower().split("x"))
    if len(shape) != 4 or min(shape) < 1:
        sys.exit(f"--sizes: expected BxCxHxW with positive sizes, got {text!r}.")
    return shape


def make_policy(op: str, mode: str) -> MixUp | CutMix:
    return (MixUp if op == "MixUp" else CutMix)(alpha=1.0, mode=mode)


def load_timm() -> tuple[object | None, str]:
    try:
        from timm.data import Mixup
    except ImportError as err:
        return None, f"timm rows skipped: timm is not installed ({err})."
    return Mixup, ""


class Batch:
    """A pristine batch, a working copy that contenders may mutate, and what they reuse."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, device: torch.device) -> None:
        self.source = torch.rand(shape, device=device)
        self.x = self.source.clone()
        self.dst = torch.empty_like(self.source)
        self.buffer = torch.empty_like(self.source)
        self.labels = torch.randint(0, num_classes, (shape[0],), device=device)
        self.num_classes = num_classes

    def restore(self) -> None:
        """Put the pristine values back into the working batch."""
        self.x.copy_(self.source)


def ours_apply(policy: MixUp | CutMix, b: Batch) -> Callable[[], object]:
    soft = LF.soft_targets(b.labels, b.num_classes)
    drawn = [
        policy.sample(b.x.shape, np.random.Generator(np.random.PCG64(k))) for k in range(N_DRAWS)
    ]
    params = itertools.cycle(drawn)
    return lambda: policy.apply(b.x, soft, next(params), buffer=b.buffer)


def other_path(policy: MixUp | CutMix, b: Batch) -> tuple[str, Callable[[], object]]:
    """``apply`` forced onto the CPU path it would not take at this size: gather or pair by pair.

    Shows what the size rule in :mod:`lightning_mixup.policies` (``PAIRWISE_MIN_BYTES``) buys.
    """
    pairs_now = b.x.is_cpu and b.x[0].nbytes >= LP.PAIRWISE_MIN_BYTES
    forced = math.inf if pairs_now else 0
    run = ours_apply(policy, b)

    def call() -> object:
        saved, LP.PAIRWISE_MIN_BYTES = LP.PAIRWISE_MIN_BYTES, forced
        try:
            return run()
        finally:
            LP.PAIRWISE_MIN_BYTES = saved

    return ("gather" if pairs_now else "pairs"), call


def ours_step(policy: MixUp | CutMix, b: Batch) -> Callable[[], object]:
    seeds = itertools.cycle(range(N_DRAWS))

    def step() -> object:
        generator = numpy_generator(0, 0, 0, next(seeds), 0)  # (seed, rank, epoch, batch, salt)
        soft = LF.soft_targets(b.labels, b.num_classes)
        params = policy.sample(b.x.shape, generator)
        return policy.apply(b.x, soft, params, buffer=b.buffer)

    return step


class Fitted(pl.LightningModule):
    """The module of the fit the hook rows run in: it has what the callback reads, little else.

    ``num_classes`` for the soft rows and a ``criterion`` for ``targets="loss"``; its training
    step never runs (the fit stops before its first batch).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        """A loss for the optimizer Lightning requires (never reached)."""
        return self.layer(torch.ones(1, 1)).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD: a fit needs one."""
        return torch.optim.SGD(self.parameters(), lr=0.1)


class InsideFit(pl.Callback):
    """Runs ``measure(trainer, module)`` at the fit's ``on_train_start``, then stops the fit."""

    def __init__(self, measure: Callable[[pl.Trainer, pl.LightningModule], None]) -> None:
        self.measure = measure

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure, then ask the Trainer to stop."""
        self.measure(trainer, pl_module)
        trainer.should_stop = True  # the fit loop then ends before its first batch


def inside_fit(
    device: torch.device,
    num_classes: int,
    measure: Callable[[pl.Trainer, pl.LightningModule], None],
) -> None:
    """Call ``measure(trainer, module)`` inside a real ``trainer.fit`` on ``device``."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    trainer = H.trainer(device, [InsideFit(measure)])
    data = TensorDataset(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(Fitted(num_classes), DataLoader(data, batch_size=2))


def set_up_callback(
    trainer: pl.Trainer, module: pl.LightningModule, op: str, mode: str, targets: str
) -> MixupCallback:
    """A MixupCallback (``alpha=1`` for ``op``) set up by the calls the Trainer makes."""
    callback = MixupCallback(
        alpha=1.0 if op == "MixUp" else 0.0,
        cutmix_alpha=1.0 if op == "CutMix" else 0.0,
        mode=mode,
        targets=targets,
    )
    callback.setup(trainer, module, "fit")
    for hook in (callback.on_fit_start, callback.on_train_start, callback.on_train_epoch_start):
        hook(trainer, module)
    return callback


def hook_step(
    b: Batch,
    trainer: pl.Trainer,
    module: pl.LightningModule,
    op: str,
    mode: str,
    targets: str,
    callback: MixupCallback | None = None,
) -> tuple[Callable[[], object], Callable[[], object]]:
    """``(call, restore)``: the whole ``on_train_batch_start`` of a set-up MixupCallback.

    Each call hands the hook a fresh list ``[x, labels]`` and cycles through ``N_DRAWS`` batch
    indices; ``restore`` (untimed) ends the step as the Trainer would and restores ``x``.
    """
    if callback is None:
        callback = set_up_callback(trainer, module, op, mode, targets)
    batch_indices = itertools.cycle(range(N_DRAWS))

    def call() -> None:
        callback.on_train_batch_start(trainer, module, [b.x, b.labels], next(batch_indices))

    def restore() -> None:
        callback.on_train_batch_end(trainer, module, None, [b.x, b.labels], 0)
        b.restore()

    return call, restore


def hook_contenders(
    b: Batch, trainer: pl.Trainer | None, module: pl.LightningModule | None
) -> list[H.Contender]:
    """The hook rows, ``hook {op} {mode} {targets}`` (none without a Trainer)."""
    if trainer is None or module is None:
        return []
    out = []
    for targets in TARGETS:
        for op, mode in OPS:
            call, restore = hook_step(b, trainer, module, op, mode, targets)
            out.append(H.Contender(f"hook {op} {mode} {targets}", call, restore))
    return out


def contenders_for(
    shape: tuple[int, ...],
    b: Batch,
    timm_mixup: object | None,
    trainer: pl.Trainer | None = None,
    module: pl.LightningModule | None = None,
) -> list[H.Contender]:
    out = [H.Contender("copy", lambda: b.dst.copy_(b.x), b.restore)]
    for op, mode in OPS:
        policy = make_policy(op, mode)
        out.append(H.Contender(f"ours apply {op} {mode}", ours_apply(policy, b), b.restore))
    if b.x.is_cpu:
        for op, mode in (("MixUp", "batch"), ("CutMix", "elem")):
            path, call = other_path(make_policy(op, mode), b)
            out.append(H.Contender(f"ours apply {op} {mode} [{path}]", call, b.restore))
    for op, mode in OPS:
        policy = make_policy(op, mode)
        out.append(H.Contender(f"ours sample+apply {op} {mode}", ours_step(policy, b), b.restore))
    out += hook_contenders(b, trainer, module)
    if timm_mixup is not None and shape[0] % 2 == 0:
        for op, mode in OPS:
            mix = timm_mixup(
                mixup_alpha=1.0 if op == "MixUp" else 0.0,
                cutmix_alpha=1.0 if op == "CutMix" else 0.0,
                mode=mode,
                label_smoothing=0.0,
                num_classes=b.num_classes,
            )
            out.append(H.Contender(f"timm {op} {mode}", lambda m=mix: m(b.x, b.labels), b.restore))
    for op in ("MixUp", "CutMix"):
        tv = getattr(v2, op)(alpha=1.0, num_classes=b.num_classes)
        out.append(H.Contender(f"torchvision {op} batch", lambda t=tv: t(b.x, b.labels), b.restore))
    return out


def size_name(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def report_size(shape: tuple[int, ...], results: dict[str, H.Contender]) -> str:
    copy = results["copy"].median
    rows = []
    for name, c in results.items():
        rows.append(
            [
                name,
                *H.timing_cells(c),
                H.ratio(c.median, copy),
            ]
        )
    title = f"### {size_name(shape)} float32"
    headers = ["contender", "median ms", "p25–p75 ms", "min ms", "calls/meas.", "× copy"]
    return title + "\n\n" + H.markdown_table(headers, rows, "lrrrrr")


def compare_rows(
    shape: tuple[int, ...], results: dict[str, H.Contender]
) -> tuple[list[list[str]], list[bool]]:
    """The hook (what a user pays) against timm and torchvision: rows, one bool per comparison."""
    rows, wins = [], []
    for op, mode in OPS:
        for targets in TARGETS:
            ours = results[f"hook {op} {mode} {targets}"].median
            row = [size_name(shape), f"{op} {mode}", targets, H.ms(ours)]
            for lib in ("timm", "torchvision"):
                other = results.get(f"{lib} {op} {mode}")
                if other is None:
                    row += ["n/a", "n/a"]
                else:
                    row += [H.ms(other.median), H.ratio(other.median, ours)]
                    wins.append(ours < other.median)
            rows.append(row)
    return rows, wins


def batch_goal(all_results: dict[tuple[int, ...], dict[str, H.Contender]]) -> str:
    """Issue 23's goal: in batch mode the hook takes no longer than timm's ``Mixup`` call."""
    cells = []
    for shape, res in all_results.items():
        for op in ("MixUp", "CutMix"):
            timm = res.get(f"timm {op} batch")
            if timm is None:
                continue
            worst = max(res[f"hook {op} batch {t}"].median for t in TARGETS)
            met = "met" if worst <= timm.median else "missed"
            cells.append(f"{op} {size_name(shape)} {worst / timm.median:.2f}x timm ({met})")
    if not cells:
        return "hook ≤ timm in batch mode: not measured (timm skipped)"
    return "hook ≤ timm in batch mode, slower of soft/loss: " + "; ".join(cells)


def substep_contenders(policy: MixUp | CutMix, b: Batch) -> list[H.Contender]:
    """The pieces of :func:`ours_step` timed apart, with the whole step and a copy for scale."""
    shape = tuple(b.x.shape)
    soft = LF.soft_targets(b.labels, b.num_classes)
    seeds = itertools.cycle(range(N_DRAWS))
    drawn = itertools.cycle(
        [policy.sample(shape, np.random.Generator(np.random.PCG64(k))) for k in range(N_DRAWS)]
    )
    return [
        H.Contender("generator", lambda: numpy_generator(0, 0, 0, next(seeds), 0)),
        H.Contender("soft_targets", lambda: LF.soft_targets(b.labels, b.num_classes)),
        H.Contender(
            "sample",
            lambda: policy.sample(shape, numpy_generator(0, 0, 0, next(seeds), 0)),
        ),
        H.Contender(
            "apply", lambda: policy.apply(b.x, soft, next(drawn), buffer=b.buffer), b.restore
        ),
        H.Contender("sample+apply (whole)", ours_step(policy, b), b.restore),
        H.Contender("copy", lambda: b.dst.copy_(b.x), b.restore),
    ]


def profile_step(
    shape: tuple[int, ...],
    args: argparse.Namespace,
    timer: H.Timer,
    trainer: pl.Trainer,
    module: pl.LightningModule,
) -> None:
    """Sub-step medians of one callback step, then ``torch.profiler``'s heaviest operators."""
    device = torch.device(args.device)
    b = Batch(shape, args.num_classes, device)
    print(f"\n## Profile at {size_name(shape)}: sub-steps of one callback step\n")
    rows = []
    for op, mode in OPS:
        policy = make_policy(op, mode)
        parts = substep_contenders(policy, b)
        H.run_interleaved(parts, timer, args.repeats, args.min_time, args.seed)
        med = {c.name: c.median for c in parts}
        rows.append(
            [f"{op} {mode}"]
            + [H.ms(med[k]) for k in ("generator", "soft_targets", "sample", "apply")]
            + [H.ms(med["sample+apply (whole)"]), H.ms(med["copy"])]
            + [f"{100 * med['sample'] / med['sample+apply (whole)']:.0f} %"]
        )
    headers = [
        "policy",
        "generator ms",
        "soft_targets ms",
        "sample ms",
        "apply ms",
        "whole ms",
        "copy ms",
        "sample share",
    ]
    print(H.markdown_table(headers, rows, "lrrrrrrr"))

    print(
        "\nWhole = generator + soft_targets + sample + apply, timed as one call (sample share ="
        " sample ÷ whole). Each column is its own median, so the parts need not add up exactly."
    )
    print(f"\n### torch.profiler at {size_name(shape)}: heaviest operators per step\n")
    print(
        f"CPU time per step under the profiler (which inflates tiny ops), median of "
        f"{PROFILE_REPEATS} profiles of {N_DRAWS} steps. 'python' is the self time of the part "
        "itself: interpreter and dispatch time between ops. 'aten calls' counts every aten op "
        "per step, nested ones included.\n"
    )
    rows = []
    for op, mode in OPS:
        policy = make_policy(op, mode)
        for part, fn in profile_parts(policy, b, trainer, module, op, mode).items():
            rows.append([f"{op} {mode}", part, *profile_part(fn, timer)])
    headers = [
        "policy",
        "part",
        "µs/step",
        "python µs",
        "aten calls",
        "top aten ops: self µs/step (calls/step)",
    ]
    print(H.markdown_table(headers, rows, "llrrrl"))


def anatomy(
    shape: tuple[int, ...],
    args: argparse.Namespace,
    timer: H.Timer,
    trainer: pl.Trainer,
    module: pl.LightningModule,
    timm_mixup: object | None,
) -> None:
    """Batch mode, split into the passes over the data and everything else, ours and timm's.

    Timed interleaved in one run: the whole hook (``targets="soft"``) and timm's call; the tensor
    passes each runs over the batch, alone (ours: the NaN/Inf screen, the gather into the buffer,
    the blend; or the box copy. timm's: ``flip``, two ``mul_``, ``add_``; or ``flip`` and the box
    write, for a box of half the image); the same two calls on a batch of 2x2 images, where the
    passes cost next to nothing; and what the features timm lacks cost alone: the per-batch
    generator, the random perfect matching, the soft rows with the label check.
    """
    device = torch.device(args.device)
    b = Batch(shape, args.num_classes, device)
    small = Batch((shape[0], shape[1], 2, 2), args.num_classes, device)
    partner = LF.sample_partners(shape[0], np.random.default_rng(0)).to(device)
    half = shape[3] // 2
    box = (slice(None), slice(None), slice(0, shape[2]), slice(0, half))  # half the pixels
    seeds = itertools.cycle(range(N_DRAWS))
    rng = np.random.default_rng(0)

    def box_copy() -> None:  # ours: one box for the batch, copied from the partners
        region = b.x[box]
        region.copy_(region.index_select(0, partner))

    def timm_box() -> None:  # timm's batch-mode CutMix: the box from the flipped batch
        b.x[box] = b.x.flip(0)[box]

    contenders = [
        H.Contender("copy", lambda: b.dst.copy_(b.x), b.restore),
        H.Contender("ours: NaN/Inf screen (x.sum)", lambda: b.x.sum()),
        H.Contender(
            "ours: gather (index_select into buffer)",
            lambda: torch.index_select(b.x, 0, partner, out=b.buffer),
        ),
        H.Contender("ours: blend (lerp_, one λ)", lambda: b.x.lerp_(b.buffer, 0.3), b.restore),
        H.Contender("ours: box copy", box_copy, b.restore),
        H.Contender("timm: flip", lambda: b.x.flip(0)),
        H.Contender("timm: mul_", lambda: b.x.mul_(0.7), b.restore),
        H.Contender("timm: add_", lambda: b.x.add_(b.buffer), b.restore),
        H.Contender("timm: box from the flipped batch", timm_box, b.restore),
        H.Contender(
            "feature: per-batch generator", lambda: numpy_generator(0, 0, 0, next(seeds), 0)
        ),
        H.Contender("feature: random perfect matching", lambda: LF._partners(shape[0], rng)),
        H.Contender(
            "feature: soft rows + label check",
            lambda: LF.soft_targets(b.labels, b.num_classes),
        ),
    ]
    ops = ("MixUp", "CutMix")
    for op in ops:
        for batch, where in ((b, ""), (small, " 2x2")):
            call, restore = hook_step(batch, trainer, module, op, "batch", "soft")
            contenders.append(H.Contender(f"hook {op}{where}", call, restore))
            if timm_mixup is not None and shape[0] % 2 == 0:
                mix = timm_mixup(
                    mixup_alpha=1.0 if op == "MixUp" else 0.0,
                    cutmix_alpha=1.0 if op == "CutMix" else 0.0,
                    label_smoothing=0.0,
                    num_classes=args.num_classes,
                )
                contenders.append(
                    H.Contender(
                        f"timm {op}{where}",
                        lambda m=mix, t=batch: m(t.x, t.labels),
                        batch.restore,
                    )
                )
    H.run_interleaved(contenders, timer, args.repeats, args.min_time, args.seed)
    med = {c.name: c.median for c in contenders}
    print(f"\n## Anatomy of a batch-mode step at {size_name(shape)} (targets='soft')\n")
    print(
        H.markdown_table(
            ["part", "median ms", "p25–p75 ms", "min ms", "calls/meas."],
            [[c.name, *H.timing_cells(c)] for c in contenders],
            "lrrrr",
        )
    )
    data = {
        "hook MixUp": [
            "ours: NaN/Inf screen (x.sum)",
            "ours: gather (index_select into buffer)",
            "ours: blend (lerp_, one λ)",
        ],
        "hook CutMix": ["ours: NaN/Inf screen (x.sum)", "ours: box copy"],
        "timm MixUp": ["timm: flip", "timm: mul_", "timm: mul_", "timm: add_"],
        "timm CutMix": ["timm: box from the flipped batch"],
    }
    rows = []
    for whole, parts in data.items():
        if whole not in med:
            continue
        passes = sum(med[part] for part in parts)
        rows.append(
            [
                whole,
                H.ms(med[whole]),
                H.ms(passes),
                H.ms(med[whole] - passes),
                H.ms(med[f"{whole} 2x2"]),
            ]
        )
    print()
    print(
        H.markdown_table(
            ["call", "whole ms", "data passes ms", "whole − passes ms", "same call at 2x2 ms"],
            rows,
            "lrrrr",
        )
    )
    features = [name for name in med if name.startswith("feature: ")]
    print(
        "\nData passes: the tensor ops each runs over the batch, timed alone and added up. "
        "'whole − passes' is everything else inside the call; the call on 2x2 images measures "
        "it another way. Of ours, the features timm lacks cost alone: "
        + "; ".join(f"{name[9:]} {H.ms(med[name])} ms" for name in features)
        + "."
    )


def parts_in_context(
    shape: tuple[int, ...],
    args: argparse.Namespace,
    timer: H.Timer,
    trainer: pl.Trainer,
    module: pl.LightningModule,
) -> None:
    """What each part of the hook costs inside it, and alone (batch mode, both targets modes).

    Inside: the whole hook against the hook with one part (:data:`HOOK_PARTS`) replaced by its
    result, computed beforehand; the replacement is put in untimed before each measurement of that
    contender and taken out before the next one. Alone: the part called by itself, in a loop. All
    interleaved in one run per policy and targets mode.
    """
    print(f"\n## The hook's parts inside it and alone at {size_name(shape)} (batch mode)\n")
    rows = []
    for targets in TARGETS:
        for op in ("MixUp", "CutMix"):
            rows += part_rows(op, targets, shape, args, timer, trainer, module)
    headers = ["policy", "targets", "part", "inside the hook ms", "alone ms", "inside ÷ alone"]
    print(H.markdown_table(headers, rows, "lllrrr"))
    print(
        "\nInside the hook: the whole hook's median minus the median of the hook with that part "
        "replaced by its precomputed result (the input mix's row holds its data passes). Alone: "
        "the part in a loop of its own. '↳' rows are inside the part above them (the .to() copies "
        "inside the mixes); 'the rest' is the whole hook less the parts not marked '↳': batch "
        "unpacking, the schedule's and layer's bookkeeping, the write-back, the calls between."
    )


def _stand_ins(
    y: torch.Tensor,
    generator: np.random.Generator,
    partner: np.ndarray,
    drafts: list[LP.Draft],
    params: list[LP.MixParams],
    mix: _criterion.LossMix | None,
) -> dict[str, Callable[..., object]]:
    """Each part's replacement: its result, computed beforehand (``y``: what ``prepare`` gives).

    The draws cycle through the hook's own draws of ``N_DRAWS`` batches (``drafts``, ``params``)
    and the key's hash stands in with the batch index, so CutMix boxes vary as in the hook.
    """
    next_draft, next_params = itertools.cycle(drafts).__next__, itertools.cycle(params).__next__
    return {
        "targets: soft rows + label check": lambda self, form, target, on_host: y,
        "↳ label check (range of the indices)": lambda *args, **kwargs: None,
        "NaN/Inf screen": lambda self, *args: True,
        "schedule strength": lambda self, *args, **kwargs: 1.0,
        "per-batch generator from the key": lambda *key: generator,
        "↳ key hash (BLAKE2b)": lambda *key: key[3],  # the batch index
        "draft: matching, coin flips, λ": lambda self, *args, **kwargs: next_draft(),
        "↳ random perfect matching": lambda n, rng: partner,
        "finish: box, λ per sample, MixParams": lambda self, *args: next_params(),
        "input mix (the data passes)": lambda self, x, *args, **kwargs: x,
        "target mix (soft rows)": lambda target, *args, **kwargs: target,
        "loss mix (LossMix.build)": lambda *args, **kwargs: mix,
        "criterion swap (install)": lambda self, pl_module, mixes: None,
        "↳ .to() copies of partner and λ (to_device)": lambda t, device: t,
        "epoch statistics (Guard.add: λ mean)": lambda self, *args: None,
    }


def part_rows(
    op: str,
    targets: str,
    shape: tuple[int, ...],
    args: argparse.Namespace,
    timer: H.Timer,
    trainer: pl.Trainer,
    module: pl.LightningModule,
) -> list[list[str]]:
    """The rows of :func:`parts_in_context` for one policy and targets mode."""
    b = Batch(shape, args.num_classes, torch.device(args.device))
    callback = set_up_callback(trainer, module, op, "batch", targets)
    policy, generator = callback.policy, np.random.default_rng(0)
    partner = LF._partners(shape[0], generator)
    drafts, drawn = [], []
    for k in range(N_DRAWS):  # what the hook draws for batches 0..N_DRAWS-1
        batch_generator = numpy_generator(*callback._draw_key(trainer, k))
        drafts.append(policy.draft(shape[0], batch_generator))
        drawn.append(drafts[-1].finish(shape[2:], batch_generator))
    draft, params = drafts[0], drawn[0]
    params_cycle = itertools.cycle(drawn)
    soft = LF.soft_targets(b.labels, b.num_classes)
    y = soft if targets == "soft" else b.labels
    mix = _criterion.LossMix.build(params, b.labels, False, False, None)
    seeds = itertools.cycle(range(N_DRAWS))
    stand_in = _stand_ins(y, generator, partner, drafts, drawn, mix)
    swap = callback._swap
    alone: dict[str, Callable[[], object]] = {
        "targets: soft rows + label check": lambda: callback._targets.prepare(
            "labels", b.labels, b.x.is_cpu
        ),
        "↳ label check (range of the indices)": lambda: LF.check_indices(b.labels, b.num_classes),
        "NaN/Inf screen": lambda: callback._guard.finite(b.x, y, "labels", b.x.is_cpu),
        "schedule strength": lambda: callback.strength(0, 0, trainer.num_training_batches, 0),
        "per-batch generator from the key": lambda: numpy_generator(0, 0, 0, next(seeds), 0),
        "↳ key hash (BLAKE2b)": lambda: _seed.derive(0, 0, 0, next(seeds), 0),
        "draft: matching, coin flips, λ": lambda: policy.draft(shape[0], generator),
        "↳ random perfect matching": lambda: LF._partners(shape[0], generator),
        "finish: box, λ per sample, MixParams": lambda: draft.finish(shape[2:], generator),
        "input mix (the data passes)": lambda: policy.mix_inputs(b.x, next(params_cycle), b.buffer),
        "target mix (soft rows)": lambda: LP.mix_target(soft, params),
        "loss mix (LossMix.build)": lambda: _criterion.LossMix.build(
            params, b.labels, False, False, None
        ),
        "criterion swap (install)": lambda: swap.install(module, {None: mix}),
        "↳ .to() copies of partner and λ (to_device)": lambda: LF.to_device(
            params.partner, b.x.device
        ),
        "epoch statistics (Guard.add: λ mean)": lambda: callback._guard.add(1.0, params),
    }
    parts = [(label, owner, name) for label, owner, name, modes in HOOK_PARTS if targets in modes]
    originals = {(owner, name): vars(owner)[name] for _, owner, name in parts}
    call, restore = hook_step(b, trainer, module, op, "batch", targets, callback)

    def put_back() -> None:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
        if swap is not None:
            swap.restore()

    def only(label: str | None, then: Callable[[], object]) -> Callable[[], None]:
        """Put the originals back, then ``label``'s stand-in (None: none), then ``then``."""

        def setup() -> None:
            put_back()
            if label is not None:
                _, owner, name = next(part for part in parts if part[0] == label)
                setattr(owner, name, stand_in[label])
            then()

        return setup

    contenders = [H.Contender("whole", call, only(None, restore))]
    for label, _, _ in parts:
        contenders.append(H.Contender(f"without {label}", call, only(label, restore)))
        contenders.append(H.Contender(f"alone {label}", alone[label], only(None, b.restore)))
    try:
        H.run_interleaved(contenders, timer, args.repeats, args.min_time, args.seed)
    finally:
        put_back()
    med = {c.name: c.median for c in contenders}
    rows = [[op, targets, "whole hook", H.ms(med["whole"]), "", ""]]
    rest = med["whole"]
    for label, _, _ in parts:
        inside, by_itself = med["whole"] - med[f"without {label}"], med[f"alone {label}"]
        rows.append([op, targets, label, H.ms(inside), H.ms(by_itself), H.ratio(inside, by_itself)])
        if not label.startswith("↳"):
            rest -= inside
    rows.append([op, targets, "the rest", H.ms(rest), "", ""])
    return rows


def profile_part(fn: Callable[[], object], timer: H.Timer) -> list[str]:
    """Profile ``N_DRAWS`` calls of ``fn`` ``PROFILE_REPEATS`` times; medians per step, as text."""
    for _ in range(3):
        fn()
    total, python, calls = [], [], 0
    per_op: dict[str, list[float]] = {}
    op_calls: dict[str, int] = {}
    for _ in range(PROFILE_REPEATS):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(N_DRAWS):
                with torch.profiler.record_function("## part"):
                    fn()
            timer.sync()
        events = {e.key: e for e in prof.key_averages()}
        label = events.pop("## part")
        total.append(label.cpu_time_total / N_DRAWS)
        python.append(label.self_cpu_time_total / N_DRAWS)
        aten = {k: e for k, e in events.items() if k.startswith("aten::")}
        calls = sum(e.count for e in aten.values()) // N_DRAWS
        for key, e in aten.items():
            per_op.setdefault(key, []).append(e.self_cpu_time_total / N_DRAWS)
            op_calls[key] = e.count // N_DRAWS
    med = {
        key: statistics.median(v + [0.0] * (PROFILE_REPEATS - len(v))) for key, v in per_op.items()
    }
    top = sorted(med, key=med.__getitem__, reverse=True)[:5]
    return [
        f"{statistics.median(total):.0f}",
        f"{statistics.median(python):.0f}",
        str(calls),
        ", ".join(f"{key[6:]} {med[key]:.0f} ({op_calls[key]}×)" for key in top),
    ]


def profile_parts(
    policy: MixUp | CutMix,
    b: Batch,
    trainer: pl.Trainer,
    module: pl.LightningModule,
    op: str,
    mode: str,
) -> dict[str, Callable[[], object]]:
    """``sample`` (with the generator and soft targets), ``apply``, and the whole hook.

    ``apply`` mixes ``b.x`` in place without restoring it between calls (a restore inside the
    profile would show up as ``copy_``); its values stay convex combinations of the original ones.
    """
    shape = tuple(b.x.shape)
    soft = LF.soft_targets(b.labels, b.num_classes)
    seeds = itertools.cycle(range(N_DRAWS))
    drawn = itertools.cycle(
        [policy.sample(shape, np.random.Generator(np.random.PCG64(k))) for k in range(N_DRAWS)]
    )

    def sample() -> object:
        generator = numpy_generator(0, 0, 0, next(seeds), 0)
        LF.soft_targets(b.labels, b.num_classes)
        return policy.sample(shape, generator)

    hook, _ = hook_step(b, trainer, module, op, mode, "soft")
    b.restore()
    return {
        "generator+soft_targets+sample": sample,
        "apply": lambda: policy.apply(b.x, soft, next(drawn), buffer=b.buffer),
        "hook (targets='soft')": hook,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = H.setup_device(args)
    timer = H.Timer(device, args.clock)
    shapes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    timm_mixup, timm_note = (
        (None, "timm rows skipped (--no-timm).") if args.no_timm else load_timm()
    )

    print("# bench_mix: MixUp/CutMix per batch\n")
    print(H.environment(device))
    print(
        f"- {args.repeats} interleaved rounds, each measurement >= {args.min_time * 1e3:g} ms of "
        f"{'wall' if args.clock == 'wall' else 'thread CPU'} time; median per call; ratios "
        "are medians over medians"
    )
    if timm_note:
        print(f"- {timm_note}")
    if any(s[0] % 2 for s in shapes) and timm_mixup is not None:
        print("- timm asserts an even batch size: its rows are skipped at odd batch sizes.")

    all_results: dict[tuple[int, ...], dict[str, H.Contender]] = {}

    def measure(trainer: pl.Trainer, module: pl.LightningModule) -> None:
        for shape in shapes:
            b = Batch(shape, args.num_classes, device)
            contenders = contenders_for(shape, b, timm_mixup, trainer, module)
            H.run_interleaved(contenders, timer, args.repeats, args.min_time, args.seed)
            results = {c.name: c for c in contenders}
            all_results[shape] = results
            print("\n" + report_size(shape, results))
            del b, contenders
        summarise(all_results, timm_mixup is not None)
        if args.profile:
            profile_step(shapes[0], args, timer, trainer, module)
            anatomy(shapes[0], args, timer, trainer, module, timm_mixup)
            parts_in_context(shapes[0], args, timer, trainer, module)

    inside_fit(device, args.num_classes, measure)


def summarise(all_results: dict[tuple[int, ...], dict[str, H.Contender]], timm: bool) -> None:
    """The hook against timm and torchvision, and the goals."""
    rows, size_wins, pair_wins = [], [], []
    for shape, results in all_results.items():
        r, w = compare_rows(shape, results)
        rows += r
        pair_wins += w
        size_wins.append(bool(w) and all(w))
    headers = [
        "size",
        "op mode",
        "targets",
        "hook ms",
        "timm ms",
        "timm ÷ hook",
        "tv ms",
        "tv ÷ hook",
    ]
    print("\n### The whole hook (what a user pays per batch) against timm and torchvision\n")
    print("Ratios above 1 mean ours is faster.\n")
    print(H.markdown_table(headers, rows, "lllrrrrr"))

    worst = {}
    for kind in ("apply", "sample+apply"):
        worst[kind] = max(
            (res[f"ours {kind} {op} {mode}"].median / res["copy"].median, f"{op} {mode}", shape)
            for shape, res in all_results.items()
            for op, mode in OPS
        )
    others = "timm and torchvision" if timm else "torchvision (timm skipped)"
    summary = "; ".join(
        f"{kind} {w[0]:.1f}x ({w[1]} at {size_name(w[2])})" for kind, w in worst.items()
    )
    print(
        f"\nSummary: ours/copy worst: {summary}; the hook faster than {others} "
        f"at {sum(size_wins)}/{len(size_wins)} sizes ({sum(pair_wins)}/{len(pair_wins)} "
        "pairwise comparisons)."
    )

    largest = max(all_results, key=lambda shape: torch.Size(shape).numel())
    res = all_results[largest]
    ratio, which = max(
        (res[f"ours sample+apply {op} {mode}"].median / res["copy"].median, f"{op} {mode}")
        for op, mode in OPS
    )
    verdict = "meets" if ratio <= LARGE_GOAL else "misses"
    print(
        f"Goals: ahead of both at every size ({'met' if all(size_wins) else 'missed'}); "
        f"sample+apply at {size_name(largest)} ≤ {LARGE_GOAL:g}x a copy: worst {ratio:.2f}x "
        f"({which}), {verdict} it; {batch_goal(all_results)}."
    )


if __name__ == "__main__":
    main()
