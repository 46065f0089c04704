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
  torchvision has no per-sample mode).

Ours and timm mix ``x`` in place; torchvision returns new tensors. ``x`` is restored from a
pristine copy before every measurement (untimed), so every contender sees the same data.
With ``--profile`` it also breaks one step into sub-steps at the first size and prints the
heaviest operators under ``torch.profiler``.

Example:
    python benchmarks/bench_mix.py --repeats 15
    python benchmarks/bench_mix.py --device cuda --sizes 256x3x224x224
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Callable

import _harness as H
import numpy as np
import torch
from torchvision.transforms import v2

from lightning_mixup import functional as LF
from lightning_mixup import policies as LP
from lightning_mixup._seed import numpy_generator
from lightning_mixup.policies import CutMix, MixUp

OPS = (("MixUp", "batch"), ("MixUp", "elem"), ("CutMix", "batch"), ("CutMix", "elem"))
N_DRAWS = 64
LARGE_GOAL = 1.3  # sample+apply at the largest size, in copies of the batch
PROFILE_REPEATS = 5


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


def contenders_for(
    shape: tuple[int, ...], b: Batch, timm_mixup: object | None
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
    """Ours (sample+apply) against timm and torchvision: rows and one bool per comparison."""
    rows, wins = [], []
    for op, mode in OPS:
        ours = results[f"ours sample+apply {op} {mode}"].median
        row = [size_name(shape), f"{op} {mode}", H.ms(ours)]
        for lib in ("timm", "torchvision"):
            other = results.get(f"{lib} {op} {mode}")
            if other is None:
                row += ["n/a", "n/a"]
            else:
                row += [H.ms(other.median), H.ratio(other.median, ours)]
                wins.append(ours < other.median)
        rows.append(row)
    return rows, wins


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


def profile_step(shape: tuple[int, ...], args: argparse.Namespace, timer: H.Timer) -> None:
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
        for part, fn in profile_parts(policy, b).items():
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


def profile_parts(policy: MixUp | CutMix, b: Batch) -> dict[str, Callable[[], object]]:
    """``sample`` (with the generator and soft targets) and ``apply``, as the callback runs them.

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

    b.restore()
    return {
        "generator+soft_targets+sample": sample,
        "apply": lambda: policy.apply(b.x, soft, next(drawn), buffer=b.buffer),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = H.setup_device(args)
    timer = H.Timer(device)
    shapes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    timm_mixup, timm_note = (
        (None, "timm rows skipped (--no-timm).") if args.no_timm else load_timm()
    )

    print("# bench_mix: MixUp/CutMix per batch\n")
    print(H.environment(device))
    print(
        f"- {args.repeats} interleaved rounds, each measurement >= {args.min_time * 1e3:g} ms; "
        f"median per call; ratios are medians over medians"
    )
    if timm_note:
        print(f"- {timm_note}")
    if any(s[0] % 2 for s in shapes) and timm_mixup is not None:
        print("- timm asserts an even batch size: its rows are skipped at odd batch sizes.")

    all_results: dict[tuple[int, ...], dict[str, H.Contender]] = {}
    for shape in shapes:
        b = Batch(shape, args.num_classes, device)
        contenders = contenders_for(shape, b, timm_mixup)
        H.run_interleaved(contenders, timer, args.repeats, args.min_time, args.seed)
        results = {c.name: c for c in contenders}
        all_results[shape] = results
        print("\n" + report_size(shape, results))
        del b, contenders

    rows, size_wins, pair_wins = [], [], []
    for shape, results in all_results.items():
        r, w = compare_rows(shape, results)
        rows += r
        pair_wins += w
        size_wins.append(bool(w) and all(w))
    headers = ["size", "op mode", "ours ms", "timm ms", "timm ÷ ours", "tv ms", "tv ÷ ours"]
    print("\n### Ours (sample+apply, what the callback pays) against timm and torchvision\n")
    print("Ratios above 1 mean ours is faster.\n")
    print(H.markdown_table(headers, rows, "llrrrrr"))

    worst = {}
    for kind in ("apply", "sample+apply"):
        worst[kind] = max(
            (res[f"ours {kind} {op} {mode}"].median / res["copy"].median, f"{op} {mode}", shape)
            for shape, res in all_results.items()
            for op, mode in OPS
        )
    others = "timm and torchvision" if timm_mixup is not None else "torchvision (timm skipped)"
    summary = "; ".join(
        f"{kind} {w[0]:.1f}x ({w[1]} at {size_name(w[2])})" for kind, w in worst.items()
    )
    print(
        f"\nSummary: ours/copy worst: {summary}; ours (sample+apply) faster than {others} "
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
        f"({which}), {verdict} it."
    )

    if args.profile:
        profile_step(shapes[0], args, timer)


if __name__ == "__main__":
    main()
