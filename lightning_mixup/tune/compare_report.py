"""What ``lightning-mixup compare`` writes into ``--out``, from the study's records.

``results.csv`` (one row per finished run), ``summary.md`` (mean ± sample std over seeds per arm ×
noise, with the command, versions and times) and three PNG plots. pandas does the table and the
statistics; matplotlib draws.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from lightning_mixup.evaluation.visual import _figure, plot_reliability
from lightning_mixup.tune._study import hide_password, save_png, write_atomically
from lightning_mixup.tune.compare import _METRICS, _POINT, TS_SUFFIX, CompareConfig, _describe

__all__ = ["load_runs", "summary_table", "write_reports"]


def _columns(cfg: CompareConfig) -> list[str]:
    per = list(_METRICS) + [f"fgsm@{e:g}" for e in cfg.eps]
    if cfg.pgd_steps > 0:
        per += [f"pgd@{e:g}" for e in cfg.eps]
    per += [f"ood_{name}" for name in cfg.ood_sets]
    head = ["arm", "noise", "seed", "epochs", "best_epoch", "best_val_acc", "last_val_acc"]
    return head + [f"best_{c}" for c in per] + [f"last_{c}" for c in per] + ["train_seconds"]


def load_runs(study: optuna.Study, cfg: CompareConfig) -> pd.DataFrame:
    """The finished runs of the study, one row each, seeds outermost as the grid is listed.

    Columns: those of ``results.csv``, then ``trial`` (the trial number), ``confidences`` and
    ``correct`` (the best checkpoint's test max-softmax confidences and hits).
    """
    columns = [*_columns(cfg), "trial", "confidences", "correct"]
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    records = [{**t.params, **t.user_attrs["run"], "trial": t.number}
               for t in trials if "run" in t.user_attrs]  # fmt: skip
    frame = pd.DataFrame(records, columns=columns)
    frame = frame.drop_duplicates(list(_POINT))  # one run per point: the lowest trial number
    frame["arm"] = pd.Categorical(frame["arm"], categories=cfg.arms, ordered=True)
    frame = frame.sort_values(["seed", "noise", "arm"], ignore_index=True)
    frame["arm"] = frame["arm"].astype(str)
    return frame


def summary_table(runs: pd.DataFrame, cfg: CompareConfig) -> str:
    """The Markdown table: mean ± sample std over seeds per arm × noise."""
    eps_cols = [f"FGSM ε={e:g} (%)" for e in cfg.eps]
    pgd_cols = [f"PGD-{cfg.pgd_steps} ε={e:g} (%)" for e in cfg.eps] if cfg.pgd_steps else []
    head = ["arm", "noise", "acc best (%)", "acc last (%)", "NLL", "ECE", "conf gap"]
    head += eps_cols + pgd_cols + [f"OOD AUROC {name.replace('_', ' ')}" for name in cfg.ood_sets]
    # (column, scale, decimals, signed)
    cells = [("best_acc", 100, 1, False), ("last_acc", 100, 1, False), ("best_nll", 1, 3, False),
             ("best_ece", 1, 3, False), ("best_conf_gap", 1, 3, True)]  # fmt: skip
    cells += [(f"best_fgsm@{e:g}", 100, 1, False) for e in cfg.eps]
    cells += [(f"best_pgd@{e:g}", 100, 1, False) for e in cfg.eps] if cfg.pgd_steps else []
    cells += [(f"best_ood_{name}", 1, 3, False) for name in cfg.ood_sets]
    stats = runs.groupby(["arm", "noise"])[[c[0] for c in cells]].agg(["mean", "std"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in cfg.arms:
        for noise in cfg.noise:
            if (arm, noise) not in stats.index:
                continue
            row = stats.loc[(arm, noise), :]
            text = [f"`{arm}`", f"{noise:.0%}"]
            for key, scale, digits, signed in cells:
                mean, std = row[(key, "mean")] * scale, row[(key, "std")] * scale
                cell = f"{mean:{'+' if signed else ''}.{digits}f}"
                text.append(cell if pd.isna(std) else f"{cell} ± {std:.{digits}f}")
            lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines)


def _times(study: optuna.Study, runs: pd.DataFrame) -> str:
    done = [t for t in study.get_trials(deepcopy=False) if t.number in set(runs["trial"])]
    if not done:
        return "no run finished yet"
    spans = [
        (t.datetime_start, t.datetime_complete)
        for t in done
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    first = min(start for start, _ in spans)
    last = max(end for _, end in spans)
    busy = sum((end - start).total_seconds() for start, end in spans)
    return (
        f"first run started {first:%Y-%m-%d %H:%M}, last finished {last:%Y-%m-%d %H:%M} (local "
        f"time of the workers), {busy / 60:.1f} min of runs in all"
    )


def write_summary(study: optuna.Study, runs: pd.DataFrame, cfg: CompareConfig, path: Path) -> None:
    """Write ``summary.md``: setup, the table, the plots, and what is missing from the grid."""
    model = (
        f"SmallCNN(width={cfg.width})" if cfg.digits else "PreActResNet18"
    ) + " + SoftLabelClassifier"
    arms = "\n".join(
        f"- `{a}`: {_describe(cfg.arm_kwargs(a))}"
        + (" + TemperatureScaling()" if a.endswith(TS_SUFFIX) else "")
        for a in cfg.arms
    )
    states = pd.Series([t.state.name.lower() for t in study.get_trials(deepcopy=False)])
    counts = ", ".join(f"{k} {v}" for k, v in states.value_counts().items())
    missing = (
        f"\n**{len(runs)} of {len(cfg.points)} runs finished** (`--max-minutes`, a stopped "
        "command, or workers still running: rerun the command to continue); each cell covers "
        "the seeds that finished.\n"
        if len(runs) < len(cfg.points)
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
    setup = f"{cfg.epochs} epochs" + (f", {limits}" if limits else "")
    lines = [
        f"# lightning-mixup compare: {cfg.dataset}",
        "",
        "```",
        cfg.command,
        "```",
        "",
        f"- Written (UTC): {date}, from study `{cfg.study_name}` in `{hide_password(cfg.storage_url)}` "
        f"(trials: {counts}). Runs: {_times(study, runs)}; accelerator `{cfg.accelerator}`, "
        f"{cfg.threads or torch.get_num_threads()} torch thread(s) per worker.",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, optuna {optuna.__version__}.",
        f"- Model: {model}; SGD lr {cfg.resolved_lr:g} (Nesterov momentum 0.9, weight decay "
        f"5e-4, cosine decay), batch {cfg.resolved_batch_size}, {setup}.",
        "- Noise: that fraction of the *training* labels is replaced by a different class; "
        f"validation and test labels are clean. Seeds: {' '.join(map(str, cfg.seeds))} (split, "
        "noise, initialisation, shuffling, mixing).",
        "- **acc best**: test accuracy of the checkpoint with the best `val/acc`; **acc last**: "
        "after the last epoch. NLL, ECE (15 bins), conf gap (mean max-softmax confidence − "
        "accuracy; negative = under-confident) and FGSM accuracy (ε in [0, 1] pixel units of the "
        "unnormalised image) are of the best checkpoint. OOD AUROC: how well max-softmax "
        "confidence separates the test split from an out-of-distribution set (pure-noise images; "
        "the left-out digit classes with `--classes`), 0.5 = chance. `+TS` arms divide the "
        "logits by a temperature fitted on the validation split (each checkpoint its own). "
        "Cells: mean ± sample std over seeds.",
        missing,
        "Arms:",
        "",
        arms,
        "",
        summary_table(runs, cfg),
        "",
        "![test accuracy vs label noise](accuracy_vs_noise.png)",
        "![FGSM accuracy vs ε](fgsm_vs_eps.png)",
        "![reliability diagrams](reliability.png)",
        "",
    ]
    write_atomically(path, "\n".join(lines))


def _errorbars(
    ax: Any, xs: list[float], arms: dict[str, pd.DataFrame], xlabel: str, ylabel: str, title: str
) -> None:
    """One panel with its labels and grid: an errorbar line per arm, shifted apart.

    ``arms`` maps each arm to a frame whose rows are the x values and columns mean/std.
    """
    span = (max(xs) - min(xs)) or 1.0
    for j, (arm, stats) in enumerate(arms.items()):
        shift = (j - (len(arms) - 1) / 2) * 0.012 * span
        x = [x + shift for x in xs]
        ax.errorbar(x, stats["mean"], yerr=stats["std"].fillna(0), marker="o", markersize=4,
                    capsize=3, label=arm)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _save_panels(fig: Any, title: str, path: Path) -> None:
    """The arms' legend on the first panel, the figure's title, then the PNG."""
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def plot_accuracy_vs_noise(runs: pd.DataFrame, cfg: CompareConfig, path: Path) -> None:
    """Test accuracy (best checkpoint and last epoch, mean ± std over seeds) against noise."""
    fig = _figure(9.0, 3.6)
    for i, (key, title) in enumerate((("best_acc", "best val/acc checkpoint"),
                                      ("last_acc", "last epoch"))):  # fmt: skip
        ax = fig.add_subplot(1, 2, i + 1)
        stats = (100 * runs.set_index(["arm", "noise"])[key]).groupby(["arm", "noise"])
        stats = stats.agg(["mean", "std"]).reindex(
            pd.MultiIndex.from_product([cfg.arms, cfg.noise], names=["arm", "noise"])
        )
        arms = {a: stats.loc[a] for a in cfg.arms}
        noise = [100 * n for n in cfg.noise]
        _errorbars(ax, noise, arms, "training label noise (%)", "clean test accuracy (%)", title)
    _save_panels(fig, f"{cfg.dataset}: accuracy vs label noise (mean ± std over seeds)", path)


def plot_fgsm(runs: pd.DataFrame, cfg: CompareConfig, path: Path) -> None:
    """FGSM accuracy against ε (ε = 0: clean accuracy), one panel per noise level."""
    fig = _figure(4.5 * len(cfg.noise), 3.6)
    keys = ["best_acc"] + [f"best_fgsm@{e:g}" for e in cfg.eps]
    for i, noise in enumerate(cfg.noise):
        ax = fig.add_subplot(1, len(cfg.noise), i + 1)
        at = runs[runs["noise"] == noise]
        series = {}
        for arm in cfg.arms:
            values = 100 * at.loc[at["arm"] == arm, keys]
            series[arm] = pd.DataFrame({"mean": values.mean(), "std": values.std()})
        title = f"label noise {noise:.0%}"
        _errorbars(ax, [0.0, *cfg.eps], series, "FGSM ε (pixel units)", "test accuracy (%)", title)
    _save_panels(fig, f"{cfg.dataset}: FGSM accuracy, best checkpoints (mean ± std)", path)


def plot_reliability_grid(runs: pd.DataFrame, cfg: CompareConfig, path: Path) -> None:
    """Reliability diagrams, one row per noise level and one column per arm, seeds pooled."""
    rows, cols = len(cfg.noise), len(cfg.arms)
    fig = _figure(2.6 * cols, 2.8 * rows)
    for i, noise in enumerate(cfg.noise):
        for j, arm in enumerate(cfg.arms):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            cell = runs[(runs["arm"] == arm) & (runs["noise"] == noise)]
            if cell.empty:
                ax.set_axis_off()
                continue
            conf = np.concatenate([np.asarray(c, dtype=np.float64) for c in cell["confidences"]])
            hit = np.concatenate([np.asarray(h, dtype=bool) for h in cell["correct"]])
            plot_reliability(ax, conf, hit, 15, title=f"{arm}, noise {noise:.0%}")
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    save_png(fig, path)


def write_reports(study: optuna.Study, cfg: CompareConfig) -> pd.DataFrame:
    """Write ``results.csv``, ``summary.md`` and the three plots into ``cfg.out``; the runs."""
    runs = load_runs(study, cfg)
    text = runs[_columns(cfg)].to_csv(index=False, float_format="%.6g")
    write_atomically(cfg.out / "results.csv", text)
    write_summary(study, runs, cfg, cfg.out / "summary.md")
    if not runs.empty:
        plot_accuracy_vs_noise(runs, cfg, cfg.out / "accuracy_vs_noise.png")
        plot_fgsm(runs, cfg, cfg.out / "fgsm_vs_eps.png")
        plot_reliability_grid(runs, cfg, cfg.out / "reliability.png")
    return runs
