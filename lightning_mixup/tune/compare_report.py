"""What ``lightning-mixup compare`` writes into ``--out``: results.csv, summary.md and the plots.

The metrics are whatever the config's module and callbacks log at test time: nothing here knows
their names.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning
import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from lightning_mixup.tune._study import hide_password, save_png, write_atomically

__all__ = ["Grid", "load_runs", "summary_tables", "write_report"]

#: What each tested set of weights is, for the summary's headings.
_TESTED = {"last": "the weights after the last epoch", "best": "the best checkpoint"}


@dataclass
class Grid:
    """The runs of a comparison: every arm × every combination of grid values × every seed.

    Attributes:
        arms: Each arm's name and what it trains with, in the order of the report.
        grid: Each config key varied and its values (scalars; JSON text for lists and mappings).
        seeds: The seeds.
        tests: The weights tested after fitting, in order: ``last`` and/or ``best``.
        monitor: The metric of the config's checkpoint callback (what ``best`` is best in).
    """

    arms: dict[str, str]
    grid: dict[str, list[Any]]
    seeds: list[int]
    tests: list[str]
    monitor: str | None

    @property
    def names(self) -> tuple[str, ...]:
        """The names of a point's coordinates: ``arm``, the grid keys, ``seed``."""
        return ("arm", *self.grid, "seed")

    @property
    def space(self) -> dict[str, list[Any]]:
        """Each coordinate's values, for Optuna's grid sampler."""
        return {"arm": list(self.arms), **self.grid, "seed": list(self.seeds)}

    @property
    def points(self) -> list[tuple[Any, ...]]:
        """Every run as ``(arm, *grid values, seed)``, arms outermost."""
        return list(itertools.product(*self.space.values()))


def point_of(trial: FrozenTrial, names: tuple[str, ...]) -> tuple[Any, ...] | None:
    """A trial's point: its parameters, or those it was queued with (None: neither yet)."""
    params = trial.params
    if not all(k in params for k in names):
        params = trial.system_attrs.get("fixed_params") or {}
    return tuple(params[k] for k in names) if all(k in params for k in names) else None


def load_runs(study: optuna.Study, grid: Grid) -> pd.DataFrame:
    """The finished runs of the study, one row each: the point, then what the run recorded.

    One run per point (the lowest trial number), seeds outermost, then the grid values, then the
    arms in ``grid``'s order. Columns: ``trial``, the point's names, then the recorded values in
    the order the first run holding each recorded it.
    """
    records = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        point = point_of(t, grid.names)
        if "run" in t.user_attrs and point is not None:
            records.append(
                {"trial": t.number, **dict(zip(grid.names, point)), **t.user_attrs["run"]}
            )
    columns = ["trial", *grid.names]
    frame = pd.DataFrame(records, columns=columns if not records else None)
    if frame.empty:
        return frame
    frame = frame.sort_values("trial").drop_duplicates(list(grid.names))
    points = itertools.product(grid.seeds, itertools.product(*grid.grid.values()), grid.arms)
    order = {(arm, *values, seed): i for i, (seed, values, arm) in enumerate(points)}
    keys = [
        order.get(tuple(map(_none, row)), math.inf)
        for row in frame[list(grid.names)].itertuples(index=False)
    ]
    return (
        frame.assign(_order=keys)
        .sort_values("_order")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _none(value: Any) -> Any:
    """A grid value as the grid holds it: pandas reads a ``null`` one as NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _given(values: list[Any], shown: Any) -> Any:
    """The grid value that pandas ``shown`` (NaN for null, ``1.0`` for 1 beside a null) stands for."""
    return next((v for v in values if v == _none(shown)), shown)


def _stats(runs: pd.DataFrame, grid: Grid, which: str) -> pd.DataFrame:
    """Mean, sample std and count over seeds of each ``which:`` metric, by grid point and arm.

    Rows in report order (grid values outermost, arms as listed), those with no run left out.
    """
    metrics = [c for c in runs.columns if c.startswith(f"{which}:")]
    if not metrics:
        return pd.DataFrame()
    keys = [*grid.grid, "arm"]
    stats = runs.groupby(keys, sort=False, dropna=False)[metrics].agg(["mean", "std", "count"])
    order = [(*v, a) for v in itertools.product(*grid.grid.values()) for a in grid.arms]
    index = pd.MultiIndex.from_tuples(order, names=keys) if grid.grid else pd.Index(grid.arms)
    return stats.reindex(index).dropna(how="all")


def _cell(mean: float, std: float, count: float, n_seeds: int) -> str:
    if not count:
        return "-"
    text = f"{mean:.3f}" + (f" ± {std:.3f}" if count > 1 else "")
    return text + (f" (n={count:.0f})" if count < n_seeds else "")


def summary_tables(runs: pd.DataFrame, grid: Grid) -> dict[str, str]:
    """One Markdown table per tested set of weights: mean ± sample std over seeds of every metric.

    A row per combination of grid values and arm; a cell that fewer seeds than asked for have
    finished, or where a run logged NaN, says how many values it holds (``n=``); a single value
    shows alone.
    """
    tables = {}
    for which in grid.tests:
        stats = _stats(runs, grid, which)
        metrics = list(stats.columns.unique(0))  # the columns are (metric, statistic)
        head = ["arm", *grid.grid, *(m.split(":", 1)[1] for m in metrics)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, row in stats.iterrows():
            *values, arm = key if isinstance(key, tuple) else (key,)
            cells = [
                _cell(row[(m, "mean")], row[(m, "std")], row[(m, "count")], len(grid.seeds))
                for m in metrics
            ]
            shown = [str(_given(grid.grid[k], v)) for k, v in zip(grid.grid, values)]
            lines.append("| " + " | ".join([f"`{arm}`", *shown, *cells]) + " |")
        tables[which] = "\n".join(lines)
    return tables


def _times(study: optuna.Study, runs: pd.DataFrame) -> str:
    done = [t for t in study.get_trials(deepcopy=False) if t.number in set(runs["trial"])]
    if not done:
        return "no run finished yet"
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    busy = sum((t.duration.total_seconds() for t in done if t.duration), 0.0)
    return (
        f"first run started {first:%Y-%m-%d %H:%M}, last finished {last:%Y-%m-%d %H:%M} (local "
        f"time of the workers), {busy / 60:.1f} min of runs in all"
    )


def machine() -> str:
    """This machine as the summary names it: OS, CPUs, torch threads, GPU if any."""
    text = (
        f"{platform.platform()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)"
    )
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def _summary(study: optuna.Study, runs: pd.DataFrame, grid: Grid, command: str, url: str) -> str:
    trials = study.get_trials(deepcopy=False)
    states = pd.Series([t.state.name.lower() for t in trials], dtype=str)
    counts = ", ".join(f"{k} {v}" for k, v in states.value_counts().items()) or "none"
    machines = sorted({t.user_attrs["machine"] for t in trials if "machine" in t.user_attrs})
    axes = " × ".join(
        [f"{len(grid.arms)} arms"]
        + [f"{key} ({', '.join(map(str, values))})" for key, values in grid.grid.items()]
        + [f"seeds ({' '.join(map(str, grid.seeds))})"]
    )
    tested = "; ".join(
        f"**{w}**: {_TESTED[w]}" + (f" (by `{grid.monitor}`)" if w == "best" else "")
        for w in grid.tests
    )
    lines = [
        "# lightning-mixup compare",
        "",
        "```",
        command,
        "```",
        "",
        f"- Written (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M}, from study "
        f"`{study.study_name}` in `{hide_password(url)}` (trials: {counts}). Runs: "
        f"{_times(study, runs)}.",
        f"- Machines: {'; '.join(machines) or 'none yet'}.",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, optuna {optuna.__version__}.",
        f"- Grid: {axes} = {len(grid.points)} runs; each run's full config is "
        "`trial_<n>/config.yaml` (`lightning-mixup fit --config` trains it again).",
        f"- Tested: {tested}. Cells: mean ± sample std over seeds of what the model and its "
        "callbacks logged at test time.",
    ]
    if len(runs) < len(grid.points):
        lines.append(
            f"\n**{len(runs)} of {len(grid.points)} runs finished** (`--max_minutes`, a stopped "
            "command, a failed run, or workers still running: rerun the command to continue); "
            "each cell covers the seeds that finished."
        )
    lines += ["", "Arms:", "", *(f"- `{a}`: {d}" for a, d in grid.arms.items())]
    for which, table in summary_tables(runs, grid).items():
        heading = _TESTED[which][0].upper() + _TESTED[which][1:]
        lines += ["", f"## {heading}", "", table, "", f"![{which}]({which}.png)"]
    return "\n".join(lines) + "\n"


def _plot(runs: pd.DataFrame, grid: Grid, which: str, path: Path) -> None:
    """A panel per metric: bars of the mean over seeds (± std) per arm, one per grid point."""
    from matplotlib.figure import Figure

    stats = _stats(runs, grid, which)
    metrics = list(stats.columns.unique(0))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    levels = list(range(len(grid.grid)))
    for i, metric in enumerate(metrics):
        mean, std = (stats[(metric, s)] for s in ("mean", "std"))
        if levels:  # a column per grid point
            mean, std = (x.unstack(levels).reindex(list(grid.arms)) for x in (mean, std))
        ax = fig.add_subplot(rows, cols, i + 1)
        mean.plot.bar(ax=ax, yerr=std.fillna(0), capsize=2, rot=45, legend=i == 0 and bool(levels))
        ax.set_title(metric.split(":", 1)[1], fontsize=10)
        ax.set_xlabel("")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{_TESTED[which]}: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def write_report(
    study: optuna.Study, grid: Grid, out: Path, command: str, url: str
) -> tuple[pd.DataFrame, list[str]]:
    """Write ``results.csv``, ``summary.md`` and ``<which>.png`` (tables first) into ``out``.

    A plot that fails to draw is skipped, an older file of that name removed.

    Returns:
        The runs, and one line per plot skipped.
    """
    runs = load_runs(study, grid)
    write_atomically(out / "results.csv", runs.to_csv(index=False, float_format="%.6g"))
    write_atomically(out / "summary.md", _summary(study, runs, grid, command, url))
    notes = []
    for which in grid.tests:
        path = out / f"{which}.png"
        if runs.empty or not any(c.startswith(f"{which}:") for c in runs.columns):
            path.unlink(missing_ok=True)
            notes.append(f"{path.name} skipped: no finished run has {which} test metrics.")
            continue
        try:
            _plot(runs, grid, which, path)
        except Exception as err:  # a plot must never cost the report
            path.unlink(missing_ok=True)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            notes.append(f"{path.name} skipped: drawing it failed: {type(err).__name__}: {first}")
    return runs, notes
