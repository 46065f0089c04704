"""How much faster does ``lightning-mixup compare --workers 2`` finish a grid than one worker?

Runs the same grid (default: the default 54-run digits grid) with ``--workers 1`` and
``--workers 2``, each into a fresh temporary folder, ``--rounds`` times in alternating order
(1 2, then 2 1, ...), so a machine that speeds up or slows down over the measurement weighs on
both. Each number is the wall time of the whole command (``time.perf_counter`` around the
process): startup, every run, and the report. Also checks that both studies hold the same
results (every metric column of ``results.csv``; only ``train_seconds`` may differ).

Any flag after ``--`` goes to ``lightning-mixup compare`` (for a quick look, e.g.
``-- --epochs 2 --seeds 0``).

Example:
    python benchmarks/bench_compare.py --rounds 2
    python benchmarks/bench_compare.py --rounds 1 -- --epochs 2 --seeds 0
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


def _run(workers: int, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "lightning_mixup", "compare", "--out", str(out)]
    cmd += ["--workers", str(workers), *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _same_results(a: Path, b: Path) -> bool:
    import pandas as pd

    key = ["arm", "noise", "seed"]
    left, right = (
        pd.read_csv(p / "results.csv").sort_values(key, ignore_index=True) for p in (a, b)
    )
    columns = [c for c in left.columns if c != "train_seconds"]
    return left[columns].equals(right[columns])


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
    print(f"- command: lightning-mixup compare --workers W {' '.join(extra)}".rstrip())
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
