"""``lightning-mixup compare``: mixing arms × label-noise levels × seeds as an Optuna grid study.

Each run trains :class:`~lightning_mixup.SoftLabelClassifier` (``SmallCNN`` on scikit-learn's
digits by default, ``PreActResNet18`` on CIFAR) with one *arm*, a ``MixupCallback``
configuration or none (``+TS`` arms add ``TemperatureScaling``), on training labels with a given
fraction of symmetric noise; on the digits, ``OODEval`` also measures out-of-distribution
detection (pure noise, and the left-out classes with ``--classes``). The Trainer keeps the
checkpoint with the best ``val/acc`` (validation labels are clean). Both the last-epoch weights and
the best checkpoint are then tested with
:class:`~lightning_mixup.evaluation.robustness.AdversarialEval` (FGSM, ε in [0, 1] pixel units).

The grid is one Optuna study (``GridSampler`` over ``arm``, ``noise``, ``seed``) in the same kind
of storage as ``lightning-mixup tune``: ``sqlite:///<out>/study.db`` by default, any Optuna URL with
``--storage``. A trial is one run; its metrics are the trial's user attributes. So the command can
be stopped and rerun (finished runs are kept, the rest run), ``--workers N`` runs N local worker
processes on the study, and workers on other machines join with the same ``--storage`` and
``--study-name``. A killed worker loses only its running run, which is retried once its heartbeat
has been silent for ``--grace`` seconds.

Output folder (``--out``), written from the study's records:

- ``results.csv``: one row per finished run (arm, noise, seed, best epoch, and for the best and
  last weights: accuracy, NLL, ECE, confidence gap, FGSM accuracy per ε);
- ``summary.md``: mean ± std over seeds per arm × noise, with the command, versions and times;
- ``accuracy_vs_noise.png``, ``fgsm_vs_eps.png`` and ``reliability.png`` (one diagram per arm and
  noise level, pooled over seeds, best checkpoints).

Example::

    lightning-mixup compare --out runs/compare --workers 2  # the default 54-run digits grid
    lightning-mixup compare --arms erm mixup1.0 --noise 0.4 --seeds 0 --epochs 5
    lightning-mixup compare --dataset cifar10 --data-dir ~/data --accelerator gpu --epochs 200
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import optuna
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from optuna.trial import FrozenTrial, TrialState

from lightning_mixup.callback import MixupCallback
from lightning_mixup.classification.models import PreActResNet18, SmallCNN
from lightning_mixup.classification.module import SoftLabelClassifier
from lightning_mixup.evaluation.calibration import TemperatureScaling
from lightning_mixup.evaluation.ood import OODEval
from lightning_mixup.evaluation.robustness import AdversarialEval

if TYPE_CHECKING:  # the datamodules load when a run builds one
    from lightning_mixup.classification.data import _ClassificationDataModule
from lightning_mixup.tune._study import (
    TuneError,
    add_study_arguments,
    hide_password,
    open_storage,
)

__all__ = ["ARMS", "CompareConfig", "build_config", "main", "open_study", "run_one"]

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


_POINT = ("arm", "noise", "seed")


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
    classes: list[int] | None = None
    limit_train_batches: float | int | None = None
    limit_val_batches: float | int | None = None
    limit_test_batches: float | int | None = None
    # How and where it runs; not part of what a run computes.
    out: Path = Path("runs/compare")
    storage: str | None = None
    study_name: str = "compare"
    workers: int = 1
    heartbeat: int = 60
    grace: int | None = None
    report: bool = True
    report_only: bool = False
    max_minutes: float | None = None
    accelerator: str = "cpu"
    threads: int | None = 1
    num_workers: int | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        """The command line as typed, any password in a storage URL shown as ``***``."""
        return shlex.join(["lightning-mixup", "compare", *map(hide_password, self.argv)])

    @property
    def storage_url(self) -> str:
        """``--storage``, or the study database in ``--out``."""
        return self.storage or f"sqlite:///{self.out / 'study.db'}"

    @property
    def settings(self) -> dict[str, Any]:
        """What decides a run's numbers: workers joining one study must agree on all of it."""
        keys = ("dataset", "data_dir", "val_size", "arms", "noise", "seeds", "epochs", "batch_size",
                "lr", "width", "eps", "pgd_steps", "classes", "limit_train_batches",
                "limit_val_batches", "limit_test_batches")  # fmt: skip
        return {k: v for k, v in asdict(self).items() if k in keys}

    @property
    def points(self) -> list[tuple[str, float, int]]:
        """Every run of the grid as ``(arm, noise, seed)``."""
        return [(a, n, s) for a in self.arms for n in self.noise for s in self.seeds]

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
        prog="lightning-mixup compare",
        description="Train a grid of MixUp/CutMix arms × label-noise levels × seeds and compare "
        "clean accuracy, calibration and FGSM robustness. The grid is an Optuna study: rerun the "
        "command to continue it, or start more workers on it. Writes results.csv, summary.md "
        "and PNG plots to --out.",
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
        help="start no new run after this many minutes (per worker); the summary says what ran",
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
    g = p.add_argument_group("study (Optuna)")
    add_study_arguments(g, study_name="compare", what="run")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes on the study, each with --threads threads (default 1)",
    )
    g.add_argument(
        "--no-report", action="store_true", help="run, but leave the report to another command"
    )
    g.add_argument(
        "--report-only", action="store_true", help="run nothing; write the report of the study"
    )
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
    for flag, value in (("--workers", a.workers), ("--heartbeat", a.heartbeat)):
        if value < 1:
            raise ValueError(f"`{flag}` must be an integer >= 1, got {value!r}.")
    if a.grace is not None and a.grace <= a.heartbeat:
        raise ValueError(
            f"`--grace` must be longer than `--heartbeat` ({a.heartbeat}), got {a.grace!r}."
        )
    if a.report_only and a.no_report:
        raise ValueError("`--report-only` and `--no-report` together would do nothing.")
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
        classes=None if a.classes is None else list(a.classes),
        storage=a.storage,
        study_name=a.study_name,
        workers=a.workers,
        heartbeat=a.heartbeat,
        grace=a.grace,
        report=not a.no_report,
        report_only=a.report_only,
        argv=argv,
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
def _datamodule(cfg: CompareConfig, noise: float, seed: int) -> _ClassificationDataModule:
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
            # None is the Trainer's default (every batch)
            limit_train_batches=cfg.limit_train_batches,
            limit_val_batches=cfg.limit_val_batches,
            limit_test_batches=cfg.limit_test_batches,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        train_seconds = time.perf_counter() - start
        last_val = float(trainer.callback_metrics["val/acc"])
        trainer.test(model, datamodule=dm, verbose=False)
        last = _metrics(trainer, "last", cfg.eps, cfg.pgd_steps > 0, cfg.ood_sets)
        best_path = checkpoint.best_model_path
        best_epoch = int(Path(best_path).stem.split("-")[1])
        best_score = checkpoint.best_model_score
        assert best_score is not None  # set with best_model_path at the first validation
        best_val = float(best_score)
        trainer.test(model, datamodule=dm, ckpt_path=best_path, verbose=False)
        best = _metrics(trainer, "best", cfg.eps, cfg.pgd_steps > 0, cfg.ood_sets)
    row: dict[str, Any] = {
        "arm": arm,
        "noise": noise,
        "seed": seed,
        "epochs": cfg.epochs,
        "best_epoch": best_epoch,
        "best_val_acc": best_val,
        "last_val_acc": last_val,
        **best,
        **last,
        "train_seconds": round(train_seconds, 2),
    }
    return RunResult(row, adversarial.confidences.numpy(), adversarial.correct.numpy())


# ---------------------------------------------------------------------------- the study
def open_study(cfg: CompareConfig) -> optuna.Study:
    """The grid study in ``cfg.storage_url``, created or joined.

    Raises:
        TuneError: When the storage cannot be opened, or the study was made with other settings
            (its runs would not be comparable with this command's).
    """
    storage = open_storage(cfg.storage_url, cfg.heartbeat, cfg.grace)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.study_name,
        direction="maximize",
        # A fixed seed gives every worker the same shuffled grid (Optuna's advice for workers).
        sampler=optuna.samplers.GridSampler(
            dict(zip(_POINT, (cfg.arms, cfg.noise, cfg.seeds))), seed=0
        ),
        pruner=optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    known = study.user_attrs.get("settings")
    if known is None:
        study.set_user_attr("settings", cfg.settings)
    elif known != cfg.settings:
        key = next(k for k in cfg.settings if known.get(k) != cfg.settings[k])
        flag = "--" + key.replace("_", "-")
        raise TuneError(
            f"study {cfg.study_name!r} in {hide_password(cfg.storage_url)} was run with {flag} {known.get(key)!r}, "
            f"got {cfg.settings[key]!r}; use another --out, --storage or --study-name."
        )
    return study


def _point(t: FrozenTrial) -> tuple | None:
    """The grid point ``(arm, noise, seed)`` of a trial: its parameters, or those it was given."""
    params = t.params if all(k in t.params for k in _POINT) else t.system_attrs.get("fixed_params")
    return None if not params else tuple(params[k] for k in _POINT)


def _untaken(trials: list[FrozenTrial], cfg: CompareConfig) -> list[tuple]:
    """Grid points that no trial has finished, is running or waits to run, in grid order."""
    taken = {
        _point(t)
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        and not t.user_attrs.get("duplicate_of")
    }
    return [p for p in cfg.points if p not in taken]


def _work_left(trials: list[FrozenTrial], cfg: CompareConfig) -> bool:
    """Whether a worker has something to start: a queued trial, or a point nobody has taken."""
    return any(t.state == TrialState.WAITING for t in trials) or bool(_untaken(trials, cfg))


class _Objective:
    """One trial = one run of :func:`run_one`; its row and calibration data: user attribute ``run``."""

    def __init__(self, cfg: CompareConfig) -> None:
        self.cfg = cfg

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.cfg
        point = (
            trial.suggest_categorical("arm", cfg.arms),
            trial.suggest_categorical("noise", cfg.noise),
            trial.suggest_categorical("seed", cfg.seeds),
        )
        # A second trial of one point can only come from workers racing at the end of the grid
        # (or two restarts re-queueing one failed run): the lowest-numbered one runs, the others
        # step aside, so no run is done twice.
        for t in trial.study.get_trials(deepcopy=False):
            if (
                t.number < trial.number
                and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
                and _point(t) == point
                and not t.user_attrs.get("duplicate_of")
            ):
                trial.set_user_attr("duplicate_of", t.number)
                raise optuna.TrialPruned(f"run {point} is trial {t.number}'s")
        result = run_one(cfg, *point)
        run = {k: v for k, v in result.row.items() if k not in _POINT}
        run["confidences"] = [round(float(c), 6) for c in result.confidences]
        run["correct"] = [int(h) for h in result.correct]
        trial.set_user_attr("run", run)  # one write: the row and the calibration data
        return float(result.row["best_val_acc"])


class _Progress:
    """One line per trial; stops the worker when every point is finished or taken by a worker."""

    def __init__(self, cfg: CompareConfig) -> None:
        self.cfg = cfg

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        arm, noise, seed = _point(trial) or ("?", math.nan, -1)
        what = f"{arm} noise={noise:g} seed={seed} (trial {trial.number})"
        trials = study.get_trials(deepcopy=False)
        if trial.state == TrialState.COMPLETE:
            done = sum(t.state == TrialState.COMPLETE and "run" in t.user_attrs for t in trials)
            a = trial.user_attrs["run"]
            print(
                f"run {done}/{len(self.cfg.points)}: {what}: best val/acc {a['best_val_acc']:.4f}, "
                f"test acc {a['best_acc']:.4f} (trained in {a['train_seconds']:.1f} s)",
                flush=True,
            )
        elif trial.user_attrs.get("duplicate_of") is not None:
            print(f"skipped {what}: trial {trial.user_attrs['duplicate_of']} runs it", flush=True)
        else:
            print(f"{what}: {trial.state.name.lower()}", flush=True)
        if not _work_left(trials, self.cfg):
            study.stop()


def _work(cfg: CompareConfig, study: optuna.Study) -> None:
    """Run grid points in this process until none is left to start (or ``--max-minutes``)."""
    if isinstance(study._storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed worker's run: FAIL + a retry
    deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
    while True:
        # A run that failed and is not queued again yet (a crash in an earlier command, or a
        # second heartbeat failure) is queued again, so every point left is one never started.
        untaken = set(_untaken(study.get_trials(deepcopy=False), cfg))
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            point = _point(t)
            if point is not None and point in untaken:  # once per point, however often it failed
                untaken.discard(point)
                study.enqueue_trial(dict(zip(_POINT, point)), skip_if_exists=False)
        if not _work_left(study.get_trials(deepcopy=False), cfg):
            return
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            return
        # GridSampler stops this call once every point has been tried, even with queued runs
        # still waiting: the loop then calls it again.
        study.optimize(
            _Objective(cfg), timeout=timeout, callbacks=[_Progress(cfg)], gc_after_trial=True
        )


def _work_here(cfg: CompareConfig, study: optuna.Study) -> None:
    """:func:`_work` with ``--threads`` torch threads and Lightning's info lines muted."""
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
            _work(cfg, study)
    finally:
        torch.set_num_threads(threads)
        pl_logger.setLevel(level)


def _work_with_helpers(cfg: CompareConfig, study: optuna.Study) -> int:
    """Work here beside ``cfg.workers - 1`` worker processes; 1 if one of them failed, else 0."""
    cmd = [sys.executable, "-m", "lightning_mixup", "compare", *cfg.argv]
    cmd += ["--workers", "1", "--no-report"]
    helpers = [subprocess.Popen(cmd) for _ in range(cfg.workers - 1)]
    try:
        _work_here(cfg, study)
        codes = [p.wait() for p in helpers]
    except BaseException:
        for p in helpers:
            p.terminate()
        raise
    return 1 if any(codes) else 0


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-mixup compare`` with ``argv`` (the arguments after ``compare``).

    Returns:
        0 on success, 1 when a worker process failed, 2 on a bad argument or a study that cannot
        be opened or joined (the message goes to stderr).
    """
    try:
        cfg = build_config(argv)
        cfg.out.mkdir(parents=True, exist_ok=True)
        study = open_study(cfg)
    except (ValueError, TuneError) as err:
        print(f"lightning-mixup compare: error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    status = 0
    if not cfg.report_only:
        status = _work_with_helpers(cfg, study)
    seconds = time.perf_counter() - start
    if not cfg.report:
        return status
    from lightning_mixup.tune.compare_report import summary_table, write_reports

    runs = write_reports(study, cfg)
    print(summary_table(runs, cfg))
    left = len(cfg.points) - len(runs)
    print(
        f"\n{len(runs)} of {len(cfg.points)} runs finished; this command took "
        f"{seconds / 60:.1f} min; wrote {cfg.out}/"
        + (f" ({left} runs left: rerun the command to continue)" if left else "")
    )
    return status
