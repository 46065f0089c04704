"""``lightning-mixup-compare``: train mixing arms × label-noise levels × seeds, then compare.

Each run trains :class:`~lightning_mixup.SoftLabelClassifier` (``SmallCNN`` on scikit-learn's
digits by default, ``PreActResNet18`` on CIFAR) with one *arm*, a ``MixupCallback``
configuration or none (``+TS`` arms add ``TemperatureScaling``), on training labels with a given
fraction of symmetric noise; on the digits, ``OODEval`` also measures out-of-distribution
detection (pure noise, and the left-out classes with ``--classes``). The Trainer
keeps the checkpoint with the best ``val/acc`` (validation labels are clean). Both the last-epoch
weights and the best checkpoint are then tested with
:class:`~lightning_mixup.evaluation.robustness.AdversarialEval` (FGSM, ε in [0, 1] pixel units).

Output folder (``--out``):

- ``results.csv``: one row per run (arm, noise, seed, best epoch, and for the best and last
  weights: accuracy, NLL, ECE, confidence gap, FGSM accuracy per ε);
- ``summary.md``: mean ± std over seeds per arm × noise, with the command, versions, date and wall
  time;
- ``accuracy_vs_noise.png``, ``fgsm_vs_eps.png`` and ``reliability.png`` (one diagram per arm and
  noise level, pooled over seeds, best checkpoints).

Example::

    lightning-mixup-compare --out runs/compare  # the default 30-run grid on the digits
    lightning-mixup-compare --arms erm mixup1.0 --noise 0.4 --seeds 0 --epochs 5
    lightning-mixup-compare --dataset cifar10 --data-dir ~/data --accelerator gpu --epochs 200
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import math
import platform
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lightning_mixup.callback import MixupCallback
from lightning_mixup.classification.models import PreActResNet18, SmallCNN
from lightning_mixup.classification.module import SoftLabelClassifier
from lightning_mixup.evaluation.calibration import TemperatureScaling
from lightning_mixup.evaluation.ood import OODEval
from lightning_mixup.evaluation.robustness import AdversarialEval
from lightning_mixup.evaluation.visual import _figure, plot_reliability

__all__ = ["ARMS", "CompareConfig", "build_config", "main", "run_grid"]

#: The arms: ``MixupCallback`` keyword arguments (None = no mixing). ``mixup_ramp``'s
#: ``ramp_epochs`` is filled in per run as a quarter of the epochs (at least 1); ``manifold``'s
#: ``mix_at`` (Manifold Mixup: one of two hidden blocks per batch) with the backbone's names.
#: ``regmixup`` trains on each clean batch and its mixed copy (Pinto et al., NeurIPS 2022), with a
#: large α as the paper recommends (10; λ is then close to 0.5).
ARMS: dict[str, dict[str, Any] | None] = {
    "erm": None,
    "mixup0.2": {"alpha": 0.2},
    "mixup1.0": {"alpha": 1.0},
    "cutmix": {"alpha": 0.0, "cutmix_alpha": 1.0},
    "mixup_ramp": {"alpha": 1.0, "ramp_epochs": None},
    "manifold": {"alpha": 1.0, "mix_at": None},
    "regmixup": {"alpha": 10.0, "keep_clean": True},
    "mixup+TS": {"alpha": 1.0},
    "erm+TS": None,
}
#: Arms whose name ends in this also fit a temperature on the validation split
#: (:class:`~lightning_mixup.evaluation.calibration.TemperatureScaling`), applied at test time.
TS_SUFFIX = "+TS"
#: The two hidden blocks ``manifold`` mixes at, per backbone: SmallCNN's first two conv blocks end
#: at ``features.2`` (ReLU) and ``features.6`` (max-pool); PreActResNet18's first two stages.
_MANIFOLD_LAYERS = {
    "digits": ["backbone.features.2", "backbone.features.6"],
    "cifar": ["backbone.layer1", "backbone.layer2"],
}
_DATASETS = ("digits", "cifar10", "cifar100")
_METRICS = ("acc", "nll", "ece", "conf_gap")


@dataclass
class CompareConfig:
    """Everything a comparison needs, checked (see :func:`build_config`)."""

    dataset: str = "digits"
    data_dir: str | None = None
    val_size: int = 5000
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    noise: list[float] = field(default_factory=lambda: [0.0, 0.4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 30
    batch_size: int | None = None
    lr: float | None = None
    width: int = 32
    eps: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    pgd_steps: int = 0
    out: Path = Path("runs/compare")
    max_minutes: float | None = None
    accelerator: str = "cpu"
    threads: int | None = 1
    num_workers: int | None = None
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None
    limit_test_batches: float | int | None = None
    progress: bool = True
    command: str = ""
    classes: list[int] | None = None

    @property
    def ood_sets(self) -> list[str]:
        """The OOD sets tested (digits only): pure noise, and the left-out classes if any."""
        if not self.digits:
            return []
        unseen = self.classes is not None and len(set(self.classes)) < 10
        return ["unseen_classes", "noise"] if unseen else ["noise"]

    @property
    def digits(self) -> bool:
        """Whether the dataset is the offline digits set."""
        return self.dataset == "digits"

    @property
    def resolved_batch_size(self) -> int:
        """``batch_size``, or 64 for digits and 128 for CIFAR."""
        return self.batch_size or (64 if self.digits else 128)

    @property
    def resolved_lr(self) -> float:
        """``lr``, or 0.05 for digits (as ``examples/digits.yaml``) and 0.1 for CIFAR."""
        return self.lr or (0.05 if self.digits else 0.1)

    def arm_kwargs(self, arm: str) -> dict[str, Any] | None:
        """``MixupCallback`` keyword arguments of ``arm`` for this run length (None: no mixing)."""
        kwargs = ARMS[arm]
        if kwargs is None:
            return None
        kwargs = dict(kwargs)
        if "ramp_epochs" in kwargs and kwargs["ramp_epochs"] is None:
            kwargs["ramp_epochs"] = max(1, self.epochs // 4)
        if "mix_at" in kwargs and kwargs["mix_at"] is None:
            kwargs["mix_at"] = _MANIFOLD_LAYERS["digits" if self.digits else "cifar"]
        return kwargs


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    arms = ", ".join(f"{k} ({_describe(ARMS[k])})" for k in ARMS)
    p = argparse.ArgumentParser(
        prog="lightning-mixup-compare",
        description="Train a grid of MixUp/CutMix arms × label-noise levels × seeds and compare "
        "clean accuracy, calibration and FGSM robustness. Writes results.csv, summary.md and "
        "PNG plots to --out.",
    )
    p.add_argument(
        "--dataset", default="digits", help="digits (offline, default), cifar10 or cifar100"
    )
    p.add_argument("--data-dir", default=None, help="folder with the CIFAR files (CIFAR only)")
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="CIFAR training images held out for validation (default 5000)",
    )
    p.add_argument("--arms", nargs="+", default=list(ARMS), help=f"arms to train: {arms}")
    p.add_argument(
        "--noise",
        nargs="+",
        type=float,
        default=[0.0, 0.4],
        help="fractions of training labels replaced by a wrong class (default: 0 0.4)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument(
        "--classes",
        nargs="+",
        type=int,
        default=None,
        help="digits only: train on these classes; the others become an OOD set (default: all)",
    )
    p.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 digits, 128 CIFAR")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="SGD learning rate (Nesterov momentum 0.9, weight decay 5e-4, cosine decay); "
        "default: 0.05 digits, 0.1 CIFAR",
    )
    p.add_argument("--width", type=int, default=32, help="SmallCNN width for digits (default 32)")
    p.add_argument(
        "--eps",
        nargs="+",
        type=float,
        default=[0.02, 0.05, 0.1],
        help="FGSM radii in [0, 1] pixel units (default: 0.02 0.05 0.1)",
    )
    p.add_argument("--pgd-steps", type=int, default=0, help="also run PGD with this many steps")
    p.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new run after this many minutes; the summary says what ran",
    )
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default: cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 (default) is fastest for the small digits model on a "
        "shared CPU; 0 leaves torch's default",
    )
    p.add_argument("--num-workers", type=int, default=None, help="default: 0 digits, 2 CIFAR")
    for stage in ("train", "val", "test"):
        p.add_argument(
            f"--limit-{stage}-batches",
            type=_limit_arg,
            default=None,
            help=f"Trainer limit_{stage}_batches: a batch count (4) or a fraction (0.5)",
        )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _describe(kwargs: dict[str, Any] | None) -> str:
    if kwargs is None:
        return "no mixing"
    text = ", ".join(f"{k}={v}" for k, v in kwargs.items() if v is not None)
    text = f"MixupCallback({text})"
    if "ramp_epochs" in kwargs and kwargs["ramp_epochs"] is None:
        text = text.replace(")", ", ramp_epochs=epochs//4)")
    if "mix_at" in kwargs and kwargs["mix_at"] is None:
        text = text.replace(")", ", mix_at=[two hidden blocks])")
    return text


def _distinct(name: str, values: Sequence[Any]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"`{name}` lists {v!r} twice.")
        seen.add(v)


def build_config(argv: Sequence[str] | None = None) -> CompareConfig:
    """Parse and check the command line.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        The checked configuration.

    Raises:
        ValueError: On an unknown dataset or arm, a repeated value, or a value out of range (the
            message names the flag and the value).
        SystemExit: On arguments argparse cannot parse, or ``--help``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.dataset not in _DATASETS:
        raise ValueError(f"`--dataset` must be one of {', '.join(_DATASETS)}, got {a.dataset!r}.")
    if a.dataset != "digits" and not a.data_dir:
        raise ValueError(
            f"`--dataset {a.dataset}` needs `--data-dir`, the folder that holds the CIFAR files."
        )
    for arm in a.arms:
        if arm not in ARMS:
            raise ValueError(f"Unknown arm {arm!r} in `--arms`; choose from {', '.join(ARMS)}.")
    for name, values in (("--arms", a.arms), ("--noise", a.noise), ("--seeds", a.seeds)):
        _distinct(name, values)
    for value in a.noise:
        if not 0 <= value < 1:
            raise ValueError(f"`--noise` values must be in [0, 1), got {value!r}.")
    for value in a.seeds:
        if value < 0:
            raise ValueError(f"`--seeds` must be non-negative integers, got {value!r}.")
    for value in a.eps:
        if not 0 <= value < math.inf:
            raise ValueError(
                f"`--eps` values must be non-negative numbers in [0, 1] pixel units, got {value!r}."
            )
    _distinct("--eps", [f"{e:g}" for e in a.eps])
    for flag, value, low in (
        ("--epochs", a.epochs, 1),
        ("--width", a.width, 1),
        ("--val-size", a.val_size, 1),
        ("--pgd-steps", a.pgd_steps, 0),
        ("--threads", a.threads, 0),
    ):
        if value < low:
            raise ValueError(f"`{flag}` must be an integer >= {low}, got {value!r}.")
    for flag, value in (
        ("--batch-size", a.batch_size),
        ("--lr", a.lr),
        ("--max-minutes", a.max_minutes),
        ("--limit-train-batches", a.limit_train_batches),
        ("--limit-val-batches", a.limit_val_batches),
        ("--limit-test-batches", a.limit_test_batches),
    ):
        if value is not None and not 0 < value < math.inf:
            raise ValueError(f"`{flag}` must be a positive number, got {value!r}.")
    if a.classes is not None:
        if a.dataset != "digits":
            raise ValueError(f"`--classes` works with `--dataset digits` only, got {a.dataset!r}.")
        _distinct("--classes", a.classes)
    if a.num_workers is not None and a.num_workers < 0:
        raise ValueError(f"`--num-workers` must be an integer >= 0, got {a.num_workers!r}.")
    return CompareConfig(
        dataset=a.dataset,
        data_dir=a.data_dir,
        val_size=a.val_size,
        arms=list(a.arms),
        noise=[float(n) for n in a.noise],
        seeds=list(a.seeds),
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        width=a.width,
        eps=[float(e) for e in a.eps],
        pgd_steps=a.pgd_steps,
        out=Path(a.out),
        max_minutes=a.max_minutes,
        accelerator=a.accelerator,
        threads=a.threads or None,
        num_workers=a.num_workers,
        limit_train_batches=a.limit_train_batches,
        limit_val_batches=a.limit_val_batches,
        limit_test_batches=a.limit_test_batches,
        progress=not a.no_progress,
        command=shlex.join(["lightning-mixup-compare", *argv]),
        classes=None if a.classes is None else list(a.classes),
    )


def _limit_arg(text: str) -> float | int:
    """Read ``limit_*_batches`` as Lightning does: ``"4"`` counts batches, ``"0.5"`` is a share."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected a batch count (e.g. 4) or a fraction (e.g. 0.5), got {text!r}"
            ) from err


# ---------------------------------------------------------------------------- one run
def _datamodule(cfg: CompareConfig, noise: float, seed: int) -> pl.LightningDataModule:
    batch_size = cfg.resolved_batch_size
    if cfg.digits:
        from lightning_mixup.classification.data import DigitsDataModule

        workers = 0 if cfg.num_workers is None else cfg.num_workers
        return DigitsDataModule(
            batch_size=batch_size,
            num_workers=workers,
            label_noise=noise,
            seed=seed,
            classes=cfg.classes,
        )
    from lightning_mixup.classification.data import CIFAR10DataModule, CIFAR100DataModule

    cls = CIFAR10DataModule if cfg.dataset == "cifar10" else CIFAR100DataModule
    workers = 2 if cfg.num_workers is None else cfg.num_workers
    return cls(
        data_dir=str(cfg.data_dir),
        val_size=cfg.val_size,
        batch_size=batch_size,
        num_workers=workers,
        label_noise=noise,
        seed=seed,
    )


def _model(cfg: CompareConfig, num_classes: int) -> SoftLabelClassifier:
    if cfg.digits:
        backbone: torch.nn.Module = SmallCNN(num_classes, in_channels=1, width=cfg.width)
    else:
        backbone = PreActResNet18(num_classes)
    optimizer = functools.partial(
        torch.optim.SGD,
        lr=cfg.resolved_lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    return SoftLabelClassifier(backbone, num_classes, optimizer=optimizer)


def _metrics(
    trainer: pl.Trainer, prefix: str, eps: Sequence[float], pgd: bool, ood: Sequence[str]
) -> dict[str, float]:
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    row = {f"{prefix}_{name}": m[f"test/{name}"] for name in _METRICS}
    for name in ood:
        row[f"{prefix}_ood_{name}"] = m[f"test/ood_auroc/{name}"]
    for e in eps:
        row[f"{prefix}_fgsm@{e:g}"] = m[f"test/fgsm_acc@{e:g}"]
        if pgd:
            row[f"{prefix}_pgd@{e:g}"] = m[f"test/pgd_acc@{e:g}"]
    return row


@dataclass
class RunResult:
    """One run's CSV row and the best checkpoint's test confidences and hits."""

    row: dict[str, Any]
    confidences: np.ndarray
    correct: np.ndarray


def run_one(cfg: CompareConfig, arm: str, noise: float, seed: int) -> RunResult:
    """Train one arm at one noise level and seed, then test its last and best weights.

    ``seed`` seeds the data split and label noise, the model's initialisation and the shuffling
    (``seed_everything``), the mixing draws (``MixupCallback(seed=seed)``) and PGD's starts.
    """
    pl.seed_everything(seed, verbose=False)
    dm = _datamodule(cfg, noise, seed)
    model = _model(cfg, dm.num_classes)
    kwargs = cfg.arm_kwargs(arm)
    limits = {
        f"limit_{stage}_batches": value
        for stage, value in (
            ("train", cfg.limit_train_batches),
            ("val", cfg.limit_val_batches),
            ("test", cfg.limit_test_batches),
        )
        if value is not None
    }
    adversarial = AdversarialEval(cfg.eps, pgd_steps=cfg.pgd_steps, seed=seed, save_diagram=False)
    with tempfile.TemporaryDirectory(prefix="lightning-mixup-compare-") as tmp:
        checkpoint = ModelCheckpoint(
            dirpath=tmp,
            filename="best-{epoch}",
            monitor="val/acc",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
        )
        callbacks: list[pl.Callback] = [checkpoint, adversarial]
        if kwargs is not None:
            callbacks.append(MixupCallback(**kwargs, seed=seed))
        if arm.endswith(TS_SUFFIX):
            callbacks.append(TemperatureScaling())
        if cfg.ood_sets:
            callbacks.append(OODEval())
        trainer = pl.Trainer(
            accelerator=cfg.accelerator,
            devices=1,
            max_epochs=cfg.epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
            callbacks=callbacks,
            **limits,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        train_seconds = time.perf_counter() - start
        trainer.test(model, datamodule=dm, verbose=False)
        last = _metrics(trainer, "last", cfg.eps, cfg.pgd_steps > 0, cfg.ood_sets)
        best_path = checkpoint.best_model_path
        best_epoch = int(Path(best_path).stem.split("-")[1])
        best_val = float(checkpoint.best_model_score)
        trainer.test(model, datamodule=dm, ckpt_path=best_path, verbose=False)
        best = _metrics(trainer, "best", cfg.eps, cfg.pgd_steps > 0, cfg.ood_sets)
    row: dict[str, Any] = {
        "arm": arm,
        "noise": noise,
        "seed": seed,
        "epochs": cfg.epochs,
        "best_epoch": best_epoch,
        "best_val_acc": best_val,
        **best,
        **last,
        "train_seconds": round(train_seconds, 2),
    }
    return RunResult(row, adversarial.confidences.numpy(), adversarial.correct.numpy())


# ---------------------------------------------------------------------------- the grid
@dataclass
class GridResult:
    """All finished runs, the pooled calibration data, and whether the time budget cut the grid."""

    rows: list[dict[str, Any]]
    calibration: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]
    planned: int
    wall_seconds: float


def run_grid(cfg: CompareConfig) -> GridResult:
    """Run every seed × noise × arm, seeds outermost: a time budget cuts the last seeds first.

    Args:
        cfg: The configuration.

    Returns:
        The rows, the best checkpoints' confidences/hits pooled over seeds per (arm, noise),
        the number of runs planned and the wall time.
    """
    from tqdm import tqdm

    grid = [(arm, noise, seed) for seed in cfg.seeds for noise in cfg.noise for arm in cfg.arms]
    rows: list[dict[str, Any]] = []
    pooled: dict[tuple[str, float], list[tuple[np.ndarray, np.ndarray]]] = {}
    start = time.perf_counter()
    bar = tqdm(grid, desc="compare", unit="run", disable=not cfg.progress, file=sys.stderr)
    for arm, noise, seed in bar:
        elapsed = time.perf_counter() - start
        if rows and cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes:
            bar.write(
                f"--max-minutes {cfg.max_minutes:g} reached: stopping after {len(rows)} runs."
            )
            break
        bar.set_postfix_str(f"{arm} noise={noise:g} seed={seed}")
        result = run_one(cfg, arm, noise, seed)
        rows.append(result.row)
        pooled.setdefault((arm, noise), []).append((result.confidences, result.correct))
    bar.close()
    calibration = {
        key: (np.concatenate([c for c, _ in parts]), np.concatenate([h for _, h in parts]))
        for key, parts in pooled.items()
    }
    return GridResult(rows, calibration, len(grid), time.perf_counter() - start)


# ---------------------------------------------------------------------------- reporting
def _columns(cfg: CompareConfig) -> list[str]:
    per = list(_METRICS) + [f"fgsm@{e:g}" for e in cfg.eps]
    if cfg.pgd_steps > 0:
        per += [f"pgd@{e:g}" for e in cfg.eps]
    per += [f"ood_{name}" for name in cfg.ood_sets]
    head = ["arm", "noise", "seed", "epochs", "best_epoch", "best_val_acc"]
    return head + [f"best_{c}" for c in per] + [f"last_{c}" for c in per] + ["train_seconds"]


def write_csv(rows: list[dict[str, Any]], cfg: CompareConfig, path: Path) -> None:
    """Write one row per run to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(cfg))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def _groups(rows: list[dict[str, Any]], cfg: CompareConfig) -> list[tuple[str, float, list[dict]]]:
    out = []
    for arm in cfg.arms:
        for noise in cfg.noise:
            runs = [r for r in rows if r["arm"] == arm and r["noise"] == noise]
            if runs:
                out.append((arm, noise, runs))
    return out


def _mean_std(values: list[float], scale: float, digits: int, signed: bool = False) -> str:
    arr = np.asarray(values, dtype=np.float64) * scale
    sign = "+" if signed else ""
    mean = f"{arr.mean():{sign}.{digits}f}"
    if len(arr) < 2:
        return mean
    return f"{mean} ± {arr.std(ddof=1):.{digits}f}"


def summary_table(rows: list[dict[str, Any]], cfg: CompareConfig) -> str:
    """The Markdown table: mean ± std (sample std) over seeds per arm × noise."""
    eps_cols = [f"FGSM ε={e:g} (%)" for e in cfg.eps]
    pgd_cols = [f"PGD-{cfg.pgd_steps} ε={e:g} (%)" for e in cfg.eps] if cfg.pgd_steps else []
    head = ["arm", "noise", "acc best (%)", "acc last (%)", "NLL", "ECE", "conf gap"]
    head += eps_cols + pgd_cols + [f"OOD AUROC {name.replace('_', ' ')}" for name in cfg.ood_sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, noise, runs in _groups(rows, cfg):

        def col(key: str, scale: float = 1.0, digits: int = 3, signed: bool = False) -> str:
            return _mean_std([r[key] for r in runs], scale, digits, signed)  # noqa: B023

        cells = [
            f"`{arm}`",
            f"{noise:.0%}",
            col("best_acc", 100, 1),
            col("last_acc", 100, 1),
            col("best_nll"),
            col("best_ece"),
            col("best_conf_gap", signed=True),
        ]
        cells += [col(f"best_fgsm@{e:g}", 100, 1) for e in cfg.eps]
        cells += [col(f"best_pgd@{e:g}", 100, 1) for e in cfg.eps] if cfg.pgd_steps else []
        cells += [col(f"best_ood_{name}") for name in cfg.ood_sets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(result: GridResult, cfg: CompareConfig, path: Path) -> None:
    """Write ``summary.md``: setup, the table, the plots, and whether the grid was cut short."""
    seeds = sorted({r["seed"] for r in result.rows})
    model = (
        f"SmallCNN(width={cfg.width})" if cfg.digits else "PreActResNet18"
    ) + " + SoftLabelClassifier"
    arms = "\n".join(
        f"- `{a}`: {_describe(cfg.arm_kwargs(a))}"
        + (" + TemperatureScaling()" if a.endswith(TS_SUFFIX) else "")
        for a in cfg.arms
    )
    done = len(result.rows)
    cut = (
        f"\n**Stopped by `--max-minutes {cfg.max_minutes:g}` after {done} of {result.planned} "
        "runs**; each cell covers the seeds that finished.\n"
        if done < result.planned
        else ""
    )
    limits = ", ".join(
        f"limit_{s}_batches={v:g}"
        for s, v in (
            ("train", cfg.limit_train_batches),
            ("val", cfg.limit_val_batches),
            ("test", cfg.limit_test_batches),
        )
        if v is not None
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    threads = cfg.threads or torch.get_num_threads()
    setup = f"{cfg.epochs} epochs" + (f", {limits}" if limits else "")
    lines = [
        f"# lightning-mixup-compare: {cfg.dataset}",
        "",
        "```",
        cfg.command,
        "```",
        "",
        f"- Date (UTC): {date}. Wall time of the whole grid: {result.wall_seconds / 60:.1f} min "
        f"({done} runs; accelerator `{cfg.accelerator}`; {threads} torch thread(s)).",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}.",
        f"- Model: {model}; SGD lr {cfg.resolved_lr:g} (Nesterov momentum 0.9, weight decay "
        f"5e-4, cosine decay), batch {cfg.resolved_batch_size}, {setup}.",
        "- Noise: that fraction of the *training* labels is replaced by a different class; "
        f"validation and test labels are clean. Seeds: {' '.join(map(str, seeds))} (split, "
        "noise, initialisation, shuffling, mixing).",
        "- **acc best**: test accuracy of the checkpoint with the best `val/acc`; **acc last**: "
        "after the last epoch. NLL, ECE (15 bins), conf gap (mean max-softmax confidence − "
        "accuracy; negative = under-confident) and FGSM accuracy (ε in [0, 1] pixel units of the "
        "unnormalised image) are of the best checkpoint. OOD AUROC: how well max-softmax "
        "confidence separates the test split from an out-of-distribution set (pure-noise images; "
        "the left-out digit classes with `--classes`), 0.5 = chance. `+TS` arms divide the "
        "logits by a temperature fitted on the validation split (each checkpoint its own). "
        "Cells: mean ± sample std over seeds.",
        cut,
        "Arms:",
        "",
        arms,
        "",
        summary_table(result.rows, cfg),
        "",
        "![test accuracy vs label noise](accuracy_vs_noise.png)",
        "![FGSM accuracy vs ε](fgsm_vs_eps.png)",
        "![reliability diagrams](reliability.png)",
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text)


def _errorbar_lines(ax: Any, xs: list[float], series: dict[str, list[list[float]]]) -> None:
    """One errorbar line per arm; arms are shifted sideways a little so their bars do not hide."""
    span = (max(xs) - min(xs)) or 1.0
    for j, (arm, per_x) in enumerate(series.items()):
        shift = (j - (len(series) - 1) / 2) * 0.012 * span
        pts = [(x + shift, np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0)
               for x, v in zip(xs, per_x) if v]  # fmt: skip
        if pts:
            x, m, s = zip(*pts)
            ax.errorbar(x, m, yerr=s, marker="o", markersize=4, capsize=3, label=arm)


def plot_accuracy_vs_noise(rows: list[dict[str, Any]], cfg: CompareConfig, path: Path) -> None:
    """Test accuracy (best checkpoint and last epoch, mean ± std over seeds) against noise."""
    fig = _figure(9.0, 3.6)
    for i, (key, title) in enumerate((("best_acc", "best val/acc checkpoint"),
                                      ("last_acc", "last epoch"))):  # fmt: skip
        ax = fig.add_subplot(1, 2, i + 1)
        series = {
            arm: [[100 * r[key] for r in rows if r["arm"] == arm and r["noise"] == n]
                  for n in cfg.noise]
            for arm in cfg.arms
        }  # fmt: skip
        _errorbar_lines(ax, [100 * n for n in cfg.noise], series)
        ax.set_xlabel("training label noise (%)")
        ax.set_ylabel("clean test accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.dataset}: accuracy vs label noise (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_fgsm(rows: list[dict[str, Any]], cfg: CompareConfig, path: Path) -> None:
    """FGSM accuracy against ε (ε = 0: clean accuracy), one panel per noise level."""
    fig = _figure(4.5 * len(cfg.noise), 3.6)
    xs = [0.0, *cfg.eps]
    for i, noise in enumerate(cfg.noise):
        ax = fig.add_subplot(1, len(cfg.noise), i + 1)
        series = {}
        for arm in cfg.arms:
            runs = [r for r in rows if r["arm"] == arm and r["noise"] == noise]
            keys = ["best_acc"] + [f"best_fgsm@{e:g}" for e in cfg.eps]
            series[arm] = [[100 * r[k] for r in runs] for k in keys]
        _errorbar_lines(ax, xs, series)
        ax.set_xlabel("FGSM ε (pixel units)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"label noise {noise:.0%}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.dataset}: FGSM accuracy, best checkpoints (mean ± std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_reliability_grid(
    calibration: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]],
    cfg: CompareConfig,
    path: Path,
) -> None:
    """Reliability diagrams, one row per noise level and one column per arm, seeds pooled."""
    rows, cols = len(cfg.noise), len(cfg.arms)
    fig = _figure(2.6 * cols, 2.8 * rows)
    for i, noise in enumerate(cfg.noise):
        for j, arm in enumerate(cfg.arms):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            if (arm, noise) not in calibration:
                ax.set_axis_off()
                continue
            conf, hit = calibration[(arm, noise)]
            plot_reliability(ax, conf, hit, 15, title=f"{arm}, noise {noise:.0%}")
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run ``lightning-mixup-compare`` (also ``python -m lightning_mixup.evaluation.compare``).

    Args:
        argv: Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success, 2 on a bad argument (the message goes to stderr).
    """
    try:
        cfg = build_config(argv)
    except ValueError as err:
        print(f"lightning-mixup-compare: error: {err}", file=sys.stderr)
        return 2
    cfg.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    pl_logger = logging.getLogger("lightning.pytorch")
    level = pl_logger.level
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        pl_logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PossibleUserWarning)
            # Lightning 2.6 on torch ≥ 2.10 warns about torch's LeafSpec on every run.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
            result = run_grid(cfg)
    finally:
        torch.set_num_threads(threads)
        pl_logger.setLevel(level)
    write_csv(result.rows, cfg, cfg.out / "results.csv")
    write_summary(result, cfg, cfg.out / "summary.md")
    plot_accuracy_vs_noise(result.rows, cfg, cfg.out / "accuracy_vs_noise.png")
    plot_fgsm(result.rows, cfg, cfg.out / "fgsm_vs_eps.png")
    plot_reliability_grid(result.calibration, cfg, cfg.out / "reliability.png")
    print(summary_table(result.rows, cfg))
    print(f"\n{len(result.rows)} runs in {result.wall_seconds / 60:.1f} min; wrote {cfg.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
