"""Does mixing help segmentation? Arms × label noise × seeds on the digits canvases.

Each run trains ``SoftLabelSegmenter`` (``SmallFCN``) on ``DigitsSegmentationDataModule`` with one
arm (no mixing, CutMix, MixUp, CutMix ramped in) and a fraction of noisy training digits, then
tests the last epoch's weights: test mIoU and pixel accuracy (validation and test masks are clean).
The settings are ``examples/digits_segmentation.yaml``'s: ``SmallFCN(width=16)``, SGD lr 0.05 with
Nesterov momentum 0.9 and weight decay 5e-4, cosine decay, batch 16, 1,000/200/400 canvases.
Every run is one process with one thread; ``--workers`` runs that many at once.

Writes ``results.csv`` (one row per run), ``summary.md`` (mean ± std over seeds, with the command
and the wall time) and ``miou.png`` to ``--out``::

    python experiments/segmentation.py --out docs/evidence/segmentation --workers 2
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import logging
import shlex
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

#: Each arm's MixupCallback arguments; None trains without mixing.
ARMS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "cutmix": {"alpha": 0.0, "cutmix_alpha": 1.0},
    "mixup": {"alpha": 0.4},
    "cutmix_ramp": {"alpha": 0.0, "cutmix_alpha": 1.0, "ramp_epochs": 5, "ramp_shape": "cosine"},
}
METRICS = ("test/miou", "test/pixel_acc")


def run_one(arm: str, noise: float, seed: int, epochs: int, canvases: int) -> dict[str, Any]:
    """Train and test one run; return its row."""
    import lightning.pytorch as pl
    import torch

    from lightning_mixup import (
        DigitsSegmentationDataModule,
        MixupCallback,
        SmallFCN,
        SoftLabelSegmenter,
    )

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    pl.seed_everything(seed, verbose=False)
    data = DigitsSegmentationDataModule(
        train_canvases=canvases,
        val_canvases=200,
        test_canvases=400,
        batch_size=16,
        label_noise=noise,
        seed=seed,
    )
    k = data.num_classes
    model = SoftLabelSegmenter(
        SmallFCN(num_classes=k, width=16),
        num_classes=k,
        optimizer=functools.partial(
            torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
        ),
    )
    kwargs = ARMS[arm]
    callbacks = [] if kwargs is None else [MixupCallback(**kwargs)]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    (tested,) = trainer.test(model, datamodule=data, verbose=False)
    row = {"arm": arm, "noise": noise, "seed": seed, "seconds": time.perf_counter() - start}
    row.update({name: float(tested[name]) for name in METRICS})
    return row


def summary(rows: list[dict[str, Any]], command: str, wall: float) -> str:
    """A markdown table of mean ± std over seeds, per arm and noise level."""
    lines = [
        "# Mixing on the digits segmentation canvases",
        "",
        f"Command: `{command}` ({wall / 60:.1f} min wall time). Last-epoch weights, clean test "
        "masks; mean ± std over seeds.",
        "",
        "| arm | label noise | test mIoU | test pixel accuracy | runs |",
        "|---|---|---|---|---|",
    ]
    for (arm, noise), group in itertools.groupby(rows, key=lambda r: (r["arm"], r["noise"])):
        group = list(group)
        cells = []
        for name in METRICS:
            values = [r[name] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        lines.append(f"| {arm} | {noise:g} | {cells[0]} | {cells[1]} | {len(group)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test mIoU per arm, one group of bars per noise level, with the seeds' spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    noises = sorted({r["noise"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        values = [
            [r["test/miou"] for r in rows if (r["arm"], r["noise"]) == (arm, n)] for n in noises
        ]
        means = [statistics.mean(v) for v in values]
        spread = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        xs = [i + (k - (len(arms) - 1) / 2) * width for i in range(len(noises))]
        ax.bar(xs, means, width, yerr=spread, capsize=3, label=arm)
    ax.set_xticks(range(len(noises)), [f"{n:.0%} noisy digits" for n in noises])
    ax.set_ylabel("test mIoU (last epoch)")
    low = min(r["test/miou"] for r in rows)
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.legend(ncol=len(arms), fontsize="small", loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the grid and write the results; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--canvases", type=int, default=1000, help="training canvases per run")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/segmentation"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    grid = list(itertools.product(args.arms, args.noise, args.seeds))
    start = time.perf_counter()
    jobs = [(arm, noise, seed, args.epochs, args.canvases) for arm, noise, seed in grid]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        rows = []
        for row in pool.map(run_one, *zip(*jobs)):
            rows.append(row)
            print(f"[{len(rows)}/{len(jobs)}] {row}", flush=True)
    wall = time.perf_counter() - start
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python " + shlex.join(["experiments/segmentation.py", *(argv or sys.argv[1:])])
    text = summary(rows, command, wall)
    (args.out / "summary.md").write_text(text)
    plot(rows, args.out / "miou.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
