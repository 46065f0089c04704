"""What ``lightning-mixup tune`` leaves in ``--out``: summary.md, trials.csv and Optuna's plots."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_mixup.tune._study import one_line, save_png, write_atomically

__all__ = ["label", "write_plots", "write_summary"]

#: The trials.csv columns: Optuna's own table of the study (one row per trial).
_CSV_ATTRS = ("number", "state", "value", "datetime_start", "datetime_complete", "duration",
              "params", "user_attrs")  # fmt: skip


def write_summary(study: optuna.Study, out: Path, monitor: str) -> str:
    """Write ``trials.csv`` and ``summary.md`` into ``out``; return the summary text."""
    trials = study.get_trials(deepcopy=False)
    frame = study.trials_dataframe(attrs=_CSV_ATTRS)
    write_atomically(out / "trials.csv", frame.to_csv(index=False))
    text = _summary(study, trials, monitor)
    write_atomically(out / "summary.md", text)
    return text


def write_plots(study: optuna.Study, out: Path, monitor: str, summary: str) -> list[str]:
    """Draw ``history.png``, ``importances.png`` and ``alpha.png`` into ``out``, headless.

    A plot with nothing to show, or that fails, is skipped (an older file of that name removed);
    ``summary.md`` is then rewritten as ``summary`` plus a "Plots" section.

    Returns:
        One line per plot skipped, saying why.
    """
    drawn: list[str] = []
    notes: list[str] = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append(
            'plots skipped: matplotlib is not installed (pip install "lightning-mixup[tune]").'
        )
    else:
        for name, caption, draw in _plots(study, monitor):
            reason = _draw(draw, out / name, matplotlib, plt)
            if reason is None:
                drawn.append(f"![{caption}]({name})")
            else:
                (out / name).unlink(missing_ok=True)  # an older plot would no longer be true
                notes.append(f"{name} skipped: {reason}")
    lines = [summary.rstrip("\n"), "", "## Plots", "", *drawn, *(f"- {n}" for n in notes)]
    write_atomically(out / "summary.md", "\n".join(lines) + "\n")
    return notes


def _draw(draw: Callable[[], Any], path: Path, matplotlib: Any, plt: Any) -> str | None:
    """Save what ``draw()`` plots to ``path``; None, or why nothing was saved."""
    import numpy as np

    before = set(plt.get_fignums())
    try:
        # Optuna's plots set their own style (ggplot): keep it inside this plot.
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API and few-trial warnings
            result = draw()
            if isinstance(result, str):
                return result
            fig = np.ravel(result)[0].figure  # one Axes, or an array of them
            fig.tight_layout()
            save_png(fig, path, dpi=100)
            return None
    except Exception as err:  # a plot must never cost the report
        return f"drawing it failed: {one_line(err)}"
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def _plots(study: optuna.Study, monitor: str) -> list[tuple[str, str, Callable[[], Any]]]:
    """``(file name, caption, draw)``; ``draw()`` returns the Axes, or why there is nothing to draw."""
    from optuna.visualization import matplotlib as optuna_plots

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    mixed = [t for t in done if not t.user_attrs.get("baseline")]
    base = [t for t in done if t.user_attrs.get("baseline")]

    def history() -> Any:
        if not done:
            return "no trial completed."
        return optuna_plots.plot_optimization_history(study, target_name=monitor)

    def importances() -> Any:
        names = sorted({name for t in mixed for name in t.params})
        if len(mixed) < 2:
            return f"fewer than 2 completed mixing trials ({len(mixed)})."
        if len(names) < 2:
            return f"one parameter searched ({', '.join(names) or 'none'}): nothing to rank."
        return optuna_plots.plot_param_importances(study, params=names, target_name=monitor)

    def alpha() -> Any:
        if not any("alpha" in t.params for t in mixed):
            return (
                "no completed trial has an `alpha` (the space has none, or every trial with one "
                "was pruned or failed)."
            )
        from matplotlib.axes import Axes

        ax = optuna_plots.plot_slice(study, params=["alpha"], target_name=monitor)
        if base and isinstance(ax, Axes):  # one parameter plotted: one Axes
            line = ax.axhline(value(base[0]), color="gray", linestyle="--")
            ax.legend([line], ["no mixing (baseline)"], loc="best")
        return ax

    return [
        ("history.png", "optimization history", history),
        ("importances.png", "parameter importances", importances),
        ("alpha.png", "alpha", alpha),
    ]


def value(t: FrozenTrial) -> float:
    """The objective value of a completed trial (Optuna types it as optional)."""
    if t.value is None:
        raise ValueError(f"trial {t.number} has no value (state {t.state.name})")
    return t.value


def label(t: FrozenTrial) -> str:
    """A trial's arguments, ``alpha=1.529, cutmix_alpha=1``, or ``no mixing (baseline)``."""
    if t.user_attrs.get("baseline"):
        return "no mixing (baseline)"
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
    )


def _summary(study: optuna.Study, trials: list[FrozenTrial], monitor: str) -> str:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    done.sort(key=value, reverse=maximize)
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
        lines.append(f"**Best:** trial {best.number}, {monitor}={best.value:.4f}: {label(best)}")
    else:
        lines.append("**Best:** no trial completed yet.")
    if base:
        lines.append(
            f"**Baseline (no mixing):** trial {base[0].number}, {monitor}={base[0].value:.4f}"
        )
        mixed = [t for t in done if not t.user_attrs.get("baseline")]
        if mixed:
            gain = value(mixed[0]) - value(base[0])
            better = gain > 0 if maximize else gain < 0
            lines.append(
                f"**Best mixing vs baseline:** {gain:+.4f} ({'mixing helps' if better else 'mixing does not help'} on this run)"
            )
    else:
        lines.append("**Baseline (no mixing):** not completed.")
    lines += ["", "| rank | trial | value | arguments |", "|---|---|---|---|"]
    for rank, t in enumerate(done[:5], 1):
        lines.append(f"| {rank} | {t.number} | {t.value:.4f} | {label(t)} |")
    return "\n".join(lines) + "\n"
