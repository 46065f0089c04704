"""What ``MixupCallback`` adds to a real Lightning training step, end to end.

The step is ``SoftLabelClassifier(CifarResNet18)`` (its defaults: SGD with Nesterov momentum,
weight decay, cosine schedule) on ``B×3×32×32`` float32 inputs: forward, ``F.cross_entropy``,
backward, optimizer step. Inputs and labels are fixed random tensors, served in order by a
DataLoader (default collate, so batches are ``[x, y]`` lists), the same for every run. All of it
runs inside real ``trainer.fit`` calls (logger, checkpointing and progress bar off,
``max_epochs=1``), so the callback reads the Trainer's counters and keeps its logged statistics
exactly as in training.

Two measurements:

1. **End to end** (the headline). ``--runs`` pairs of ``trainer.fit`` runs of ``--steps`` timed
   steps (plus one untimed warm-up step), one with ``MixupCallback(alpha)`` and one without, in
   alternating order, each from the same seed and data. A timing callback placed *first* in
   ``callbacks`` stamps the clock in ``on_train_batch_start`` and ``on_train_batch_end``, so a
   step is: every callback's ``on_train_batch_start`` (the mixing), ``training_step``, backward,
   optimizer step. The MixupCallback's ``on_train_batch_start`` is also wrapped and timed on its
   own: that is its own per-batch cost.
2. **Micro**, inside one more real ``trainer.fit``: at ``on_train_start`` a probe callback times,
   interleaved, ``callback.on_train_batch_start(trainer, module, batch, 0)`` alone (many calls
   per measurement, the batch restored untimed before each), one model step
   (``training_step`` + backward + ``optimizer.step()`` on an unmixed batch), and the callback
   followed by a model step on the same batch; then it stops the fit (``trainer.should_stop``).

On CUDA every timestamp follows a ``torch.cuda.synchronize()``, which drains the queue at each
step boundary: the callback's host-side time then shows in full (an upper bound).

With ``--mix-at LAYER`` the callback mixes that layer's output (Manifold Mixup) instead of the
inputs: its hook then runs inside ``training_step``, so only the end-to-end steps show its whole
cost, the micro row of the callback alone being the target mix and the hook's placement.

Example:
    python benchmarks/bench_step.py --threads 1
    python benchmarks/bench_step.py --threads 1 --mix-at backbone.layer2
    python benchmarks/bench_step.py --device cuda --steps 50 --runs 3
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
import warnings
from typing import Any

import _harness as H
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_mixup import MixupCallback, SoftLabelClassifier
from lightning_mixup.classification.models import CifarResNet18

# Goals, in percent of a training step: on the CPU (ResNet-18 at 32x32, seconds per step) the
# callback must vanish in the noise; a GPU step is ~100x shorter, so the goal there is looser.
GOALS = {"cpu": 0.05, "cuda": 2.0}
SPEEDUP = 100  # a GPU step is roughly this many times shorter than this CPU one


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes (default: 10)")
    parser.add_argument("--alpha", type=float, default=1.0, help="MixUp alpha (default: 1.0)")
    parser.add_argument(
        "--mix-at",
        default="input",
        help="where to mix: 'input' or a layer of the module, e.g. backbone.layer2 (Manifold "
        "Mixup through a forward hook; default: input)",
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per fit run, after 1 warm-up (default: 3)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=2,
        help="fit runs per configuration, with and without the callback alternating (default: 2)",
    )
    parser.add_argument(
        "--step-repeats",
        type=int,
        default=2,
        help="micro: interleaved rounds of the two model-step contenders (default: 2)",
    )
    H.add_common_args(parser, repeats=15, min_time=0.02)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.runs, args.step_repeats) < 1 or args.alpha <= 0:
        sys.exit("--batch-size, --steps, --runs, --step-repeats must be >= 1 and --alpha > 0.")
    return args


# ---------------------------------------------------------------------------- the run
def make_data(args: argparse.Namespace) -> DataLoader:
    n = args.batch_size * (args.steps + 1)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(n, 3, 32, 32, generator=generator)
    y = torch.randint(0, args.num_classes, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=False)


def make_module(args: argparse.Namespace) -> SoftLabelClassifier:
    pl.seed_everything(args.seed, verbose=False)
    return SoftLabelClassifier(CifarResNet18(args.num_classes), num_classes=args.num_classes)


def make_trainer(device: torch.device, callbacks: list[pl.Callback], batches: int) -> pl.Trainer:
    return H.trainer(device, callbacks, limit_train_batches=batches)


class StepTimer(pl.Callback):
    """Wall time from ``on_train_batch_start`` to ``on_train_batch_end``; put it first."""

    def __init__(self, timer: H.Timer) -> None:
        self.timer = timer
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        """Start the clock (after the queued GPU work, on CUDA)."""
        self.timer.sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        """Stop the clock and record the step."""
        self.timer.sync()
        self.times.append(time.perf_counter() - self._start)


def timed_hook(callback: MixupCallback, timer: H.Timer) -> list[float]:
    """Wrap the instance's ``on_train_batch_start``; return the list its wall times go to."""
    inner = callback.on_train_batch_start
    times: list[float] = []

    def on_train_batch_start(*args: Any, **kwargs: Any) -> None:
        timer.sync()
        start = time.perf_counter()
        inner(*args, **kwargs)
        timer.sync()
        times.append(time.perf_counter() - start)

    callback.on_train_batch_start = on_train_batch_start  # Lightning looks hooks up by name
    return times


def fit_once(
    args: argparse.Namespace, device: torch.device, timer: H.Timer, mixup: bool
) -> tuple[list[float], list[float]]:
    """One ``trainer.fit`` of 1 + ``--steps`` steps: (step times, callback times), warm-up dropped."""
    step_timer = StepTimer(timer)
    callbacks: list[pl.Callback] = [step_timer]
    hook_times: list[float] = []
    if mixup:
        callback = MixupCallback(alpha=args.alpha, mix_at=args.mix_at)
        hook_times = timed_hook(callback, timer)
        callbacks.append(callback)
    trainer = make_trainer(device, callbacks, args.steps + 1)
    trainer.fit(make_module(args), train_dataloaders=make_data(args))
    if len(step_timer.times) != args.steps + 1:
        sys.exit(f"expected {args.steps + 1} timed steps, got {len(step_timer.times)}.")
    return step_timer.times[1:], hook_times[1:]


class MicroProbe(pl.Callback):
    """At ``on_train_start``: time the callback, a model step, and both; then stop the fit."""

    def __init__(self, mixup: MixupCallback, args: argparse.Namespace, timer: H.Timer) -> None:
        self.mixup, self.args, self.timer = mixup, args, timer
        self.callback: list[H.Contender] = []
        self.steps: list[H.Contender] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run the micro measurements on the fit's first batch, then ask the Trainer to stop."""
        x, y = next(iter(trainer.train_dataloader))  # the fit's own first batch, moved like it
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        work_x = x.clone()
        work: list[torch.Tensor] = [work_x, y]
        optimizer = trainer.optimizers[0]

        def restore() -> None:
            work[0], work[1] = work_x.copy_(x), y

        def model_step(batch: list[torch.Tensor]) -> None:
            loss = pl_module.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def mix() -> None:
            self.mixup.on_train_batch_start(trainer, pl_module, work, 0)

        def mix_and_step() -> None:
            mix()
            model_step(work)

        self.callback = [H.Contender("callback.on_train_batch_start", mix, restore)]
        H.run_interleaved(
            self.callback, self.timer, self.args.repeats, self.args.min_time, self.args.seed
        )
        self.steps = [
            H.Contender("model step", lambda: model_step([x, y])),
            H.Contender("callback + model step", mix_and_step, restore),
        ]
        model_step([x, y])  # one untimed warm-up step serves both
        H.run_interleaved(self.steps, self.timer, self.args.step_repeats, 0.0, self.args.seed, 0)
        trainer.should_stop = True  # the fit loop then ends before its first epoch


# ---------------------------------------------------------------------------- report
def quartiles(times: list[float]) -> tuple[float, float]:
    """25th and 75th percentiles (both the value itself for a single time)."""
    return H.Contender("", lambda: None, times=times).quartiles


def row(name: str, times: list[float], extra: list[str]) -> list[str]:
    lo, hi = quartiles(times)
    return [name, str(len(times)), H.ms(statistics.median(times)), f"{H.ms(lo)}–{H.ms(hi)}"] + extra


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:+.2f} %"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = H.setup_device(args)
    timer = H.Timer(device)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*`validation_step` but have no `val_dataloader`.*")

    print("# bench_step: MixupCallback in a real training step\n")
    print(H.environment(device))
    print(
        f"- model: SoftLabelClassifier(CifarResNet18({args.num_classes})), batch "
        f"{args.batch_size}x3x32x32 float32; MixupCallback(alpha={args.alpha:g}, "
        f"mix_at={args.mix_at!r}), batch mode"
    )
    print(
        f"- end to end: {args.runs} fit run(s) per configuration, alternating, each 1 warm-up + "
        f"{args.steps} timed steps; micro: callback {args.repeats} rounds of >= "
        f"{args.min_time * 1e3:g} ms, model steps {args.step_repeats} interleaved rounds"
    )
    started = time.perf_counter()

    # 1. End to end: fit runs with and without the callback, in alternating order.
    steps: dict[bool, list[float]] = {False: [], True: []}
    hook: list[float] = []
    rng = random.Random(args.seed)
    for _ in range(args.runs):
        order = [False, True]
        rng.shuffle(order)
        for mixup in order:
            step_times, hook_times = fit_once(args, device, timer, mixup)
            steps[mixup] += step_times
            hook += hook_times
    base, mixed, own = (statistics.median(v) for v in (steps[False], steps[True], hook))
    lo, hi = quartiles(steps[False])
    spread = 100 * (hi - lo) / 2 / base
    print("\n## End to end: steps of two real trainer.fit configurations\n")
    headers = ["configuration", "steps", "median ms", "p25–p75 ms", "vs without"]
    print(
        H.markdown_table(
            headers,
            [
                row("without MixupCallback", steps[False], ["—"]),
                row(
                    f"with MixupCallback(alpha={args.alpha:g}, mix_at={args.mix_at!r})",
                    steps[True],
                    [pct(mixed - base, base)],
                ),
                row("MixupCallback.on_train_batch_start alone", hook, [pct(own, base)]),
            ],
            "lrrrr",
        )
    )
    print(
        f"\nA step is timed from the first callback's on_train_batch_start to on_train_batch_end "
        f"(mixing, training_step, backward, optimizer step). Half the step-to-step p25–p75 spread "
        f"without the callback is ±{spread:.2f} % of a step: an end-to-end difference smaller "
        "than that is noise."
    )

    # 2. Micro: the same pieces timed apart inside one more real fit.
    mixup = MixupCallback(alpha=args.alpha, mix_at=args.mix_at)
    probe = MicroProbe(mixup, args, timer)
    make_trainer(device, [probe, mixup], 1).fit(make_module(args), make_data(args))
    micro = {c.name: c for c in probe.callback + probe.steps}
    step_alone = micro["model step"].median
    print("\n## Micro: the callback, a model step, and both, inside trainer.fit\n")
    rows = []
    for name, c in micro.items():
        rows.append(
            [
                name,
                *H.timing_cells(c),
                pct(c.median, step_alone) if name.startswith("callback.") else "",
            ]
        )
    headers = ["contender", "median ms", "p25–p75 ms", "min ms", "calls/meas.", "of a model step"]
    print(H.markdown_table(headers, rows, "lrrrrr"))
    both = micro["callback + model step"].median
    print(
        f"\n(callback + model step) − model step = {(both - step_alone) * 1e3:+.1f} ms "
        f"({pct(both - step_alone, step_alone)}), medians of {args.step_repeats} rounds: the "
        "step's own noise, not the callback, sets this difference."
    )

    share = 100 * own / base
    goal = GOALS.get(device.type, GOALS["cuda"])
    if device.type == "cpu":
        short = base / SPEEDUP
        print(
            f"\nOn a GPU the step is ~{SPEEDUP}× shorter or more, so the callback's absolute time "
            f"per batch is what matters. At {H.ms(own)} ms it stays within {GOALS['cuda']:g} % of "
            f"any step longer than {H.ms(own * 100 / GOALS['cuda'])} ms; against this step ÷ {SPEEDUP} "
            f"({H.ms(short)} ms) it would be {100 * own / short:.1f} %. Both assume the callback "
            "costs on the GPU what it costs here: an extrapolation, not a measurement (rerun with "
            "--device cuda)."
        )
    print(f"\nTotal run time: {time.perf_counter() - started:.0f} s.")
    verdict = "meets" if share <= goal else "misses"
    print(
        f"\nSummary: callback overhead {share:.3f} % of a step (goal ≤ {goal:g} %, {verdict} it): "
        f"MixupCallback.on_train_batch_start takes {H.ms(own)} ms per batch against a "
        f"{H.ms(base)} ms {device.type} step; end to end, with vs without: "
        f"{pct(mixed - base, base)} (noise ±{spread:.2f} %)."
    )


if __name__ == "__main__":
    main()
