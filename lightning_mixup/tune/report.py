"""What ``lightning-mixup tune`` leaves in ``--out``: summary.md, trials.csv and PNG plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_mixup.tune._study import save_png, write_atomically

__all__ = ["write_reports"]

#: The trials.csv columns: Optuna's own table of the study (one row per trial).
_CSV_ATTRS = ("number", "state", "value", "datetime_start", "datetime_complete", "duration",
              "params", "user_attrs")  # fmt: skip


def write_reports(study: optuna.Study, out: Path, monitor: str) -> str:
    """Write ``summary.md``, ``trials.csv`` and the plots into ``out``; return the summary text."""
    trials = study.get_trials(deepcopy=False)
    frame = study.trials_dataframe(attrs=_CSV_ATTRS)
    write_atomically(out / "trials.csv", frame.to_csv(index=False))
    notes = _plots(study, trials, out)
    text = _summary(study, trials, monitor, notes)
    write_atomically(out / "summary.md", text)
    return text


def _label(t: FrozenTrial) -> str:
    if t.user_attrs.get("baseline"):
        return "no mixing (baseline)"
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
    )


def _value(t: FrozenTrial) -> float:
    """A completed trial's value."""
    assert t.value is not None  # Optuna sets it on every completed trial of a one-objective study
    return t.value


def _summary(study: optuna.Study, trials: list[FrozenTrial], monitor: str, notes: list[str]) -> str:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    done.sort(key=_value, reverse=maximize)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    lines = [
        f"# lightning-mixup tune: study `{study.study_name}`",
        "",
        f"{monitor} ({'maximize' if maximize else 'minimize'}), value of the last validation epoch, "
        "mean over seeds. Trials: "
        + ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
        + ".",
        "",
    ]
    base = [t for t in done if t.user_attrs.get("baseline")]
    if done:
        best = done[0]
        lines.append(f"**Best:** trial {best.number}, {monitor}={best.value:.4f}: {_label(best)}")
    else:
        lines.append("**Best:** no trial completed yet.")
    if base:
        lines.append(
            f"**Baseline (no mixing):** trial {base[0].number}, {monitor}={base[0].value:.4f}"
        )
        mixed = [t for t in done if not t.user_attrs.get("baseline")]
        if mixed:
            gain = _value(mixed[0]) - _value(base[0])
            better = gain > 0 if maximize else gain < 0
            lines.append(
                f"**Best mixing vs baseline:** {gain:+.4f} ({'mixing helps' if better else 'mixing does not help'} on this run)"
            )
    else:
        lines.append("**Baseline (no mixing):** not completed.")
    lines += ["", "| rank | trial | value | arguments |", "|---|---|---|---|"]
    for rank, t in enumerate(done[:5], 1):
        lines.append(f"| {rank} | {t.number} | {t.value:.4f} | {_label(t)} |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _plots(study: optuna.Study, trials: list[FrozenTrial], out: Path) -> list[str]:
    """α scatter, optimisation history and (when it can be computed) parameter importances."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return ['plots skipped: matplotlib is not installed (pip install "lightning-mixup[tune]").']
    notes = []
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    base = [_value(t) for t in done if t.user_attrs.get("baseline")]
    mixed = [t for t in done if "alpha" in t.params]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([t.params["alpha"] for t in mixed], [_value(t) for t in mixed], label="trials")
    if base:
        ax.axhline(base[0], color="gray", linestyle="--", label="no mixing")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("alpha")
    ax.set_ylabel(study.user_attrs.get("monitor", "value"))
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "alpha.png", dpi=100)
    plt.close(fig)

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [t.number for t in done]
    ys = [_value(t) for t in done]
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if maximize else min(running, y))
        best.append(running)
    ax.scatter(xs, ys, label="trial")
    ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(study.user_attrs.get("monitor", "value"))
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "history.png", dpi=100)
    plt.close(fig)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few-trial accuracy warnings
            importances = optuna.importance.get_param_importances(study)
    except (ImportError, ValueError, RuntimeError) as err:
        notes.append(
            f"importances.png skipped: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        )
        return notes
    if importances:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.barh(list(importances), list(importances.values()))
        ax.set_xlabel("importance (Optuna default evaluator)")
        fig.tight_layout()
        save_png(fig, out / "importances.png", dpi=100)
        plt.close(fig)
    else:
        notes.append("importances.png skipped: no parameter is shared by all completed trials.")
    return notes
