"""How much faster does ``lightning-mixup compare --workers 2`` finish a grid than one worker?

Runs the same grid (default: the 54-run evidence grid of ``examples/compare_digits.yaml``,
:data:`EVIDENCE`) with ``--workers 1`` and ``--workers 2``, each into a fresh temporary folder,
``--rounds`` times in alternating order (1 2, then 2 1, ...), so a machine that speeds up or slows
down over the measurement weighs on both. Each number is the wall time of the whole command
(``time.perf_counter`` around the process): startup, every run, and the report. Also checks that
both studies hold the same results (every column of ``results.csv`` but the trial numbers and
``train_seconds``).

Any flag after ``--`` is added to the grid's command (a later value wins, e.g.
``-- --trainer.max_epochs=2 --seeds 0`` for a quick look).

Example:
    python benchmarks/bench_compare.py --rounds 2
    python benchmarks/bench_compare.py --rounds 1 -- --trainer.max_epochs=2 --seeds 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The evidence grid (docs/evidence): 9 arms x label noise {0, 0.4} x seeds {0, 1, 2}, one torch
#: thread per worker.
EVIDENCE = [
    "--config", str(ROOT / "examples" / "compare_digits.yaml"),
    "--arms", "erm", "mixup0.2", "mixup1.0", "cutmix", "mixup_ramp", "manifold", "regmixup",
    "mixup+TS", "erm+TS",
    "--grid", "data.label_noise=0,0.4", "--seeds", "0", "1", "2", "--seed_keys", "data.seed",
    "--threads", "1",
]  # fmt: skip


def _run(workers: int, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "lightning_mixup", "compare", *EVIDENCE, *extra]
    cmd += ["--out", str(out), "--workers", str(workers)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _same_results(a: Path, b: Path) -> bool:
    import pandas as pd

    left, right = (pd.read_csv(p / "results.csv") for p in (a, b))
    columns = [c for c in left.columns if c not in ("trial", "train_seconds")]
    point = list(left.columns[1 : list(left.columns).index("epochs")])  # arm, grid keys, seed
    left, right = (f[columns].sort_values(point, ignore_index=True) for f in (left, right))
    return left.equals(right)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs (default 2)")
    args = p.parse_args(own)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    load = os.getloadavg()[0]
    shown = " ".join(["lightning-mixup compare", *EVIDENCE, *extra, "--workers W"])
    print(f"- command: {shown.replace(str(ROOT) + '/', '')}")
    print(f"- {os.cpu_count()} CPUs; load average (1 min) at start: {load:.2f}")
    times: dict[int, list[float]] = {1: [], 2: []}
    same = True
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            outs = {}
            for workers in order:
                outs[workers] = Path(tmp) / f"r{r}w{workers}"
                times[workers].append(_run(workers, outs[workers], extra))
                print(f"round {r + 1}, {workers} worker(s): {times[workers][-1]:.1f} s", flush=True)
            same = same and _same_results(outs[1], outs[2])
    print()
    print("| workers | wall s per round | median s |")
    print("|---|---|---|")
    for workers, values in times.items():
        cells = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {workers} | {cells} | {statistics.median(values):.1f} |")
    ratio = statistics.median(times[2]) / statistics.median(times[1])
    print()
    print(f"2 workers / 1 worker (medians): {ratio:.3f}x (goal: <= 0.6x)")
    print(f"same results.csv metrics from both: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
