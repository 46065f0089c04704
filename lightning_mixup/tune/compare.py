"""``lightning-mixup compare``: mixing arms × config values × seeds on your own LightningCLI config.

Each run fits one point of the grid (an arm, one value of each ``--grid`` key, a seed), tests it
and keeps what the model logs at test time; the grid is one Optuna study, as ``tune``'s. The
guide: ``docs/tuning.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from optuna.trial import FrozenTrial, TrialState

from lightning_mixup import _checks
from lightning_mixup.callback import MixupCallback
from lightning_mixup.mixup_cli import ConfigError, MixupCLI
from lightning_mixup.tune._config import (
    build,
    dumped,
    mixup_class,
    mixup_entry,
    place,
    write_config,
)
from lightning_mixup.tune._options import parse, parse_error
from lightning_mixup.tune._study import (
    StudyOptions,
    TrialFailed,
    TuneError,
    check_heartbeat,
    check_seeds,
    distinct,
    fail_stale,
    failed,
    hide_password,
    logger_level,
    one_line,
    quiet_failed_trials,
    stamp,
)
from lightning_mixup.tune.compare_report import Grid, machine, point_of, write_report
from lightning_mixup.tune.space import read_yaml

__all__ = ["ARMS", "KEPT", "Arm", "CompareOptions", "main"]

#: Stands for ``max(1, trainer.max_epochs // 4)`` in a built-in arm.
_QUARTER = "max_epochs // 4"
#: Stands for the config's own MixupCallback ``mix_at`` in a built-in arm.
_CONFIG_MIX_AT = "the config's mix_at"


@dataclass(frozen=True)
class Arm:
    """One arm: a MixupCallback setting (or none) and the callbacks it adds to the Trainer.

    Attributes:
        mixup: ``MixupCallback`` arguments over the config's :data:`KEPT` ones; None trains with
            no MixupCallback.
        callbacks: Callbacks the arm adds right after its MixupCallback, as ``class_path`` /
            ``init_args`` entries.
        as_configured: Start from *all* the arguments of the config's own MixupCallback.
    """

    mixup: dict[str, Any] | None
    callbacks: tuple[dict[str, Any], ...] = ()
    as_configured: bool = False


_TS = ({"class_path": "lightning_mixup.TemperatureScaling"},)

#: The built-in arms. ``mixup`` is the config's own MixupCallback as written (``MixupCallback()``
#: when it has none); ``mixup_ramp`` ramps the mixing probability over a quarter of the epochs;
#: ``manifold`` (Manifold Mixup) mixes at the hidden layers named by the config's MixupCallback
#: ``mix_at``; ``regmixup`` trains on each clean batch and its mixed copy (Pinto et al., NeurIPS
#: 2022) with the large α the paper recommends; ``+TS`` arms add ``TemperatureScaling``.
ARMS: dict[str, Arm] = {
    "erm": Arm(None),
    "mixup": Arm({}, as_configured=True),
    "mixup0.2": Arm({"alpha": 0.2}),
    "mixup1.0": Arm({"alpha": 1.0}),
    "cutmix": Arm({"alpha": 0.0, "cutmix_alpha": 1.0}),
    "mixup_ramp": Arm({"alpha": 1.0, "ramp_epochs": _QUARTER}),
    "manifold": Arm({"alpha": 1.0, "mix_at": _CONFIG_MIX_AT}),
    "regmixup": Arm({"alpha": 10.0, "keep_clean": True}),
    "mixup+TS": Arm({"alpha": 1.0}, _TS),
    "erm+TS": Arm(None, _TS),
}

#: The config's MixupCallback arguments every arm keeps: those that fit the callback to the
#: batches and the loss (with `min_visible`, the rule for a detection dataset's cut boxes). The
#: others (the mixing recipe) are the arm's, or MixupCallback's defaults.
KEPT = frozenset(
    {"num_classes", "input_key", "target_key", "same_on_all_ranks", "skip_nonfinite", "name",
     "ignore_index", "mask_key", "mask_marks", "targets", "criterion", "min_visible"}
)  # fmt: skip


@dataclass
class CompareOptions(StudyOptions):
    """The options of ``lightning-mixup compare``; every other flag goes to LightningCLI.

    Args:
        arms: The arms to train, by name: the built-in ones or those of ``--arms_file``.
        arms_file: A YAML file of your own arms, ``NAME: {mixup: {MixupCallback arguments} or
            null, callbacks: [class_path entries]}``; a name of a built-in arm replaces it.
        seeds: The seeds: each run sets ``seed_everything`` (and so MixupCallback's draws) to its
            seed.
        seed_keys: Config keys that take the run's seed too, as ``--KEY=SEED`` (e.g.
            ``data.seed``, the split and label-noise seed of the digits datamodule).
        grid: Config keys to vary, each ``KEY=V1,V2,...`` with KEY as on LightningCLI's command
            line (``data.label_noise=0,0.4``) and the values in YAML; the runs are every arm ×
            every combination of values × every seed.
        test: What to test after fitting: ``last`` (the weights after the last epoch) and
            ``best`` (the best checkpoint of the config's ModelCheckpoint, which needs a
            ``monitor``). Default: both when the config's ModelCheckpoint has a monitor, else
            ``last``.
        out: Folder for trial_<n>/ (each run's config, logs, checkpoints), results.csv,
            summary.md and the plots.
        study_name: The study's name in the storage.
        workers: Worker processes on this machine, this one included.
        threads: torch CPU threads per worker (default: torch's own number divided among the
            workers).
        max_minutes: Start no new run after this many minutes (per worker).
        report: ``yes``: write the report once the runs are done; ``no``: leave it to another
            command; ``only``: run nothing and write the report of the study.
    """

    arms: list[str] = field(default_factory=lambda: ["erm", "mixup"])
    arms_file: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    seed_keys: list[str] = field(default_factory=list)
    grid: list[str] = field(default_factory=list)
    test: list[Literal["last", "best"]] | None = None
    out: str = "runs/compare"
    study_name: str = "compare"
    workers: int = 1
    threads: int | None = None
    max_minutes: float | None = None
    report: Literal["yes", "no", "only"] = "yes"

    def check(self) -> None:
        """Check the values that no config is needed for (a ``ValueError`` naming the flag)."""
        for name in ("arms", "seed_keys", "grid", "test"):
            distinct(f"--{name}", getattr(self, name) or [])
        if not self.arms:
            raise ValueError("`--arms` must name at least one arm, got [].")
        check_seeds(self.seeds)
        _checks.integer("--workers", self.workers, 1)
        if self.threads is not None:
            _checks.integer("--threads", self.threads, 1)
        _checks.optional_number("--max_minutes", self.max_minutes, 0, open_low=True)
        check_heartbeat(self.heartbeat, self.grace)


# ---------------------------------------------------------------------------- command line
def parse_options(argv: Sequence[str]) -> tuple[CompareOptions, list[str]]:
    """The options in ``argv`` (checked) and the arguments that go to LightningCLI.

    Raises:
        ValueError: On a value jsonargparse cannot read or :meth:`CompareOptions.check` refuses.
        SystemExit: For ``--help``.
    """
    arms = "; ".join(f"{name}: {describe(arm)}" for name, arm in ARMS.items())
    description = (
        "Train every arm x grid point x seed on your own LightningCLI config and compare what the "
        "model logs at test time (mean +/- std over seeds). The grid is an Optuna study: rerun "
        "the command to continue it, or start more workers on it. Flags not listed here "
        "(--config, --trainer.*, --model.*, --data.*) go to LightningCLI; the flags below may be "
        f"spelt with dashes too (--study-name), lists as `--seeds 0 1 2`. Built-in arms: {arms}."
    )
    options, passthrough = parse(CompareOptions, argv, "lightning-mixup compare", description)
    options.check()
    return options, passthrough


# ---------------------------------------------------------------------------- arms
def describe(arm: Arm, init_args: dict[str, Any] | None = None) -> str:
    """``MixupCallback(alpha=1.0) + TemperatureScaling()``: an arm, or its ``init_args`` in a run.

    Shown: the arm's own arguments, and those of the config that differ from the defaults.
    """
    import inspect

    if arm.mixup is None:
        text = "no MixupCallback"
    else:
        defaults = inspect.signature(MixupCallback).parameters
        given = arm.mixup if init_args is None else init_args
        shown = {
            k: v
            for k, v in given.items()
            if k in arm.mixup or k not in defaults or defaults[k].default != v
        }
        text = "MixupCallback(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"
        if arm.as_configured and init_args is None:
            text = "the config's own MixupCallback as written (MixupCallback() if it has none)"
    for spec in arm.callbacks:
        args = ", ".join(f"{k}={v}" for k, v in (spec.get("init_args") or {}).items())
        text += f" + {str(spec['class_path']).rsplit('.', 1)[-1]}({args})"
    return text


def load_arms(path: str) -> dict[str, Arm]:
    """The arms of an ``--arms_file``; a file or an arm of another shape is a one-line ``ValueError``."""
    raw = read_yaml("--arms_file", Path(path))
    shape = "{mixup: {MixupCallback arguments} or null, callbacks: [{class_path: ...}, ...]}"
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"`--arms_file` {path!r} must map arm names to {shape}, got {raw!r}.")
    arms = {}
    for name, spec in raw.items():
        callbacks = (spec.get("callbacks") or []) if isinstance(spec, dict) else None
        if not (
            isinstance(spec, dict)
            and "mixup" in spec
            and set(spec) <= {"mixup", "callbacks"}
            and (spec["mixup"] is None or isinstance(spec["mixup"], dict))
            and isinstance(callbacks, list)
            and all(isinstance(c, dict) and isinstance(c.get("class_path"), str) for c in callbacks)
        ):
            raise ValueError(
                f"`--arms_file` {path!r}, arm {name!r}: must be {shape}, got {spec!r}."
            )
        arms[str(name)] = Arm(spec["mixup"], tuple(callbacks))
    return arms


def resolve(
    name: str, arm: Arm, entry: dict[str, Any] | None, max_epochs: int | None
) -> dict[str, Any] | None:
    """The MixupCallback arguments of arm ``name`` for a run (None: no MixupCallback).

    ``entry`` is the config's MixupCallback entry (or None), ``max_epochs`` the Trainer's.

    Raises:
        ValueError: When the arm needs what the config does not give: ``manifold`` hidden layers
            to mix at, ``mixup_ramp`` a number of epochs.
    """
    if arm.mixup is None:
        return None
    given = dict((entry or {}).get("init_args") or {})
    init_args = {k: v for k, v in given.items() if arm.as_configured or k in KEPT}
    init_args.pop("seed", None)  # the run's seed_everything seeds the draws
    for key, value in arm.mixup.items():
        if value == _QUARTER:
            if max_epochs is None or max_epochs < 1:
                raise ValueError(
                    f"arm {name!r} ramps over a quarter of `trainer.max_epochs`, got "
                    f"{max_epochs!r}; set it, or define {name!r} in `--arms_file`."
                )
            value = max(1, max_epochs // 4)
        elif value == _CONFIG_MIX_AT:
            value = given.get("mix_at", "input")
            if value in ("input", ["input"]):
                raise ValueError(
                    f"arm {name!r} mixes at hidden layers, which depend on your model: name them "
                    "as `mix_at` in the config's MixupCallback (e.g. mix_at: [backbone.layer1, "
                    f"backbone.layer2]), or define {name!r} in `--arms_file`, e.g. {name}: "
                    "{mixup: {alpha: 1.0, mix_at: [backbone.layer1, backbone.layer2]}}."
                )
        init_args[key] = value
    return init_args


def _arm_callbacks(name: str, arm: Arm) -> list[Any]:
    callbacks = []
    for spec in arm.callbacks:
        try:
            callbacks.append(instantiate_class((), spec))
        except Exception as err:
            raise ValueError(
                f"arm {name!r}: callback {spec['class_path']!r} cannot be built: {one_line(err)}"
            ) from None
    return callbacks


def _mixup(
    name: str, cli: MixupCLI, arm: Arm
) -> tuple[MixupCallback | None, dict[str, Any] | None]:
    """Arm ``name``'s MixupCallback for the built ``cli`` (the config's class), and its arguments."""
    init_args = resolve(name, arm, mixup_entry(cli.config.as_dict()), cli.trainer.max_epochs)
    if init_args is None:
        return None, None
    try:
        return mixup_class(cli)(**init_args), init_args
    except (ValueError, TypeError) as err:
        raise ValueError(f"arm {name!r}: MixupCallback refused its arguments: {err}") from None


# ---------------------------------------------------------------------------- the plan
def _grid(items: Sequence[str], seed_keys: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid`` as {key: values}; lists and mappings kept as their JSON text."""
    import yaml

    class GridLoader(yaml.SafeLoader):
        """As LightningCLI reads a value: a date stays the text written (and JSON can hold it)."""

        yaml_implicit_resolvers = {
            first: [(tag, rule) for tag, rule in tags if tag != "tag:yaml.org,2002:timestamp"]
            for first, tags in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not eq or not key or not text.strip():
            raise ValueError(
                "`--grid` items are KEY=V1,V2,... with KEY a config key as on LightningCLI's "
                f"command line (e.g. data.label_noise=0,0.4), got {item!r}."
            )
        if key in grid:
            raise ValueError(f"`--grid` names {key!r} twice.")
        if key in ("seed_everything", "trainer.default_root_dir", *seed_keys):
            raise ValueError(
                f"`--grid` {key!r} is set for each run by compare (the seed, or the trial "
                "folder); vary the seeds with `--seeds`."
            )
        try:
            values = yaml.load(f"[{text}]", Loader=GridLoader)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(
                f"`--grid` {item!r}: the values are not valid YAML: {problem}."
            ) from None
        values = [
            v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for v in values
        ]
        distinct(f"--grid {key}", values)
        grid[key] = values
    return grid


def _as_arg(key: str, value: Any) -> str:
    """``--KEY=VALUE`` for LightningCLI (YAML/JSON text for anything but a string)."""
    return f"--{key}={value if isinstance(value, str) else json.dumps(value)}"


@dataclass
class _Plan:
    """A checked comparison: the grid, what each run is given, and what the study is stamped with."""

    options: CompareOptions
    argv: list[str]
    passthrough: list[str]
    arms: dict[str, Arm]
    grid: Grid
    settings: dict[str, Any]

    def args(self, point: dict[str, Any]) -> list[str]:
        """LightningCLI's arguments of a run: the user's, its grid values, its seed keys."""
        values = [_as_arg(k, point[k]) for k in self.grid.grid]
        seeds = [_as_arg(k, point["seed"]) for k in self.options.seed_keys]
        return [*self.passthrough, *values, *seeds]

    @property
    def command(self) -> str:
        """The command line as typed, any password in a storage URL shown as ``***``."""
        return shlex.join(["lightning-mixup", "compare", *map(hide_password, self.argv)])


def plan(argv: Sequence[str]) -> _Plan:
    """Parse the command line and check it against the config, before any study is touched.

    The config is built once for each grid value (with the other keys at their first value and
    the first seed), and every arm's callbacks with it, so that a value any run would refuse stops
    the command now, in one line, and the corrected command can run in the same ``--out``.

    Raises:
        ValueError: Naming the flag, the arm or the grid value, and the problem.
    """
    options, passthrough = parse_options(argv)
    known = dict(ARMS)
    if options.arms_file is not None:
        known.update(load_arms(options.arms_file))
    for name in options.arms:
        if name not in known:
            raise ValueError(
                f"Unknown arm {name!r} in `--arms`; choose from {', '.join(known)}, or define it "
                "in `--arms_file`."
            )
    arms = {name: known[name] for name in options.arms}
    grid = _grid(options.grid, options.seed_keys)
    if "seed_everything" in options.seed_keys:
        raise ValueError("`--seed_keys` need not name seed_everything: runs set it to their seed.")
    first = {k: v[0] for k, v in grid.items()}
    # The first point has every key at its first value; each other one changes one key's value.
    points = [first, *({**first, k: v} for k, values in grid.items() for v in values[1:])]
    described: dict[str, str] = {}
    for point in points:
        changed = {k: v for k, v in point.items() if v != first[k]} or first
        where = "`--grid` " + ", ".join(f"{k}={v}" for k, v in changed.items()) + ": "
        where = where if grid else ""
        args = [_as_arg(k, v) for k, v in point.items()]
        args += [_as_arg(k, options.seeds[0]) for k in options.seed_keys]
        cli = _built([*passthrough, *args], options.seeds[0], where)
        if point is first:
            base = cli  # what the study is stamped with
        for name, arm in arms.items():
            try:
                init_args = _mixup(name, cli, arm)[1]
                _arm_callbacks(name, arm)
            except ValueError as err:
                raise ValueError(f"{where}{err}") from None
            described.setdefault(name, describe(arm, init_args))  # as at the first point
    monitor = getattr(base.trainer.checkpoint_callback, "monitor", None)
    tests = options.test or (["last", "best"] if monitor else ["last"])
    if "best" in tests and not monitor:
        raise ValueError(
            "`--test best` needs a ModelCheckpoint with a `monitor` in the config's "
            "trainer.callbacks (the best checkpoint is the best in that metric); add one, or "
            "use `--test last`."
        )
    # A change is named by its first key: the flags, then the arms, then the config.
    settings = {"grid": grid, "seeds": options.seeds, "seed_keys": options.seed_keys}
    settings |= {"test": tests, "arms": options.arms}
    settings["arm"] = {n: dataclasses.asdict(a) for n, a in arms.items()}
    settings["config"] = dumped(base)
    order: list[str] = [t for t in ("last", "best") if t in tests]
    grid_ = Grid(described, grid, list(options.seeds), order, monitor)
    return _Plan(options, list(argv), passthrough, arms, grid_, settings)


def _built(args: list[str], seed: int | None, where: str = "") -> MixupCLI:
    """:func:`build` with every way the config can fail as one ``ValueError`` line."""
    try:
        with _lightning_quiet():
            return build(args, seed, exit_on_error=False)
    except ConfigError as err:
        raise ValueError(f"{where}{err}") from None
    except argparse.ArgumentError as err:
        raise ValueError(f"{where}the config: {parse_error(err)}") from None
    except Exception as err:  # the Trainer's MisconfigurationException, an import error, ...
        raise ValueError(f"{where}the config cannot be built: {one_line(err)}") from None


@contextlib.contextmanager
def _lightning_quiet() -> Iterator[None]:
    """Lightning's info lines, its warnings about small data and torch's LeafSpec one muted."""
    with (
        logger_level("lightning.pytorch", logging.WARNING),
        logger_level("lightning.fabric", logging.WARNING),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", PossibleUserWarning)
        # Lightning 2.6 on torch >= 2.10 warns about torch's LeafSpec on every run.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
        yield


# ---------------------------------------------------------------------------- one run
def run_one(plan: _Plan, point: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Fit one point of the grid in ``folder`` and test it; the values the run records."""
    cli = build(plan.args(point), point["seed"], folder)
    mixup, init_args = _mixup(point["arm"], cli, plan.arms[point["arm"]])
    arm = plan.arms[point["arm"]]
    place(cli.trainer, mixup, _arm_callbacks(point["arm"], arm))
    write_config(cli, folder / "config.yaml", init_args, arm.callbacks)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"epochs": trainer.current_epoch}
    monitor = plan.grid.monitor
    if "best" in plan.grid.tests:
        ckpt: Any = trainer.checkpoint_callback  # a ModelCheckpoint with a monitor (see plan)
        stored = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False, mmap=True)
        row["best_epoch"] = int(stored["epoch"])
        row[f"best:{monitor}"] = float(ckpt.best_model_score)
    if monitor is not None and monitor in trainer.callback_metrics:
        row[f"last:{monitor}"] = float(trainer.callback_metrics[monitor])
    for which in plan.grid.tests:
        path = "best" if which == "best" else None
        for logged in trainer.test(model, datamodule=data, ckpt_path=path, verbose=False):
            row.update({f"{which}:{k}": float(v) for k, v in logged.items()})
    row["train_seconds"] = round(seconds, 2)
    return row


# ---------------------------------------------------------------------------- the study
def open_study(plan: _Plan) -> optuna.Study:
    """The grid study in ``--storage``, created or joined, its settings stamped (a TuneError)."""
    o = plan.options
    storage = o.open_storage()
    if o.report == "only" and o.study_name not in optuna.get_all_study_names(storage):
        raise TuneError(
            f"`--report only` reports a study that exists, but {hide_password(o.storage_url)} "
            f"holds no study {o.study_name!r}; check `--out`, `--storage` and `--study_name`."
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=o.study_name,
        direction="minimize",  # a trial's value is its training time: the grid has no objective
        # A fixed seed gives every worker the same shuffled grid (Optuna's advice for workers).
        sampler=optuna.samplers.GridSampler(plan.grid.space, seed=0),
        pruner=optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    stamp(study, plan.settings, o.storage_url, "run")
    return study


def _untaken(trials: list[FrozenTrial], plan: _Plan) -> list[tuple[Any, ...]]:
    """Grid points that no trial has finished, is running or waits to run, in grid order."""
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    taken = {
        point_of(t, plan.grid.names)
        for t in trials
        if t.state in states and not t.user_attrs.get("duplicate_of")
    }
    return [p for p in plan.grid.points if p not in taken]


def _work_left(trials: list[FrozenTrial], plan: _Plan) -> bool:
    """Whether a worker has something to start: a queued trial, or a point nobody has taken."""
    return any(t.state == TrialState.WAITING for t in trials) or bool(_untaken(trials, plan))


class _Objective:
    """One trial = one run of :func:`run_one`; its values: the user attribute ``run``."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def __call__(self, trial: optuna.Trial) -> float:
        names = self.plan.grid.names
        point = {
            name: trial.suggest_categorical(name, self.plan.grid.space[name]) for name in names
        }
        # A second trial of one point can only come from workers racing at the end of the grid
        # (or two restarts re-queueing one failed run): the lowest-numbered one runs, the others
        # step aside, so no run is done twice.
        for t in trial.study.get_trials(deepcopy=False):
            if (
                t.number < trial.number
                and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
                and point_of(t, names) == tuple(point.values())
                and not t.user_attrs.get("duplicate_of")
            ):
                trial.set_user_attr("duplicate_of", t.number)
                raise optuna.TrialPruned(f"run {point} is trial {t.number}'s")
        folder = Path(self.plan.options.out) / f"trial_{trial.number}"
        trial.set_user_attr("machine", machine())
        try:
            row = run_one(self.plan, point, folder)
        except Exception as err:
            raise failed(trial, err, folder) from err
        trial.set_user_attr("run", row)
        return float(row["train_seconds"])


class _Progress:
    """One line per trial; stops the worker when every point is finished or taken by a worker."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        names = self.plan.grid.names
        arm, *values = point_of(trial, names) or ("?",) * len(names)
        shown = " ".join(f"{k}={v}" for k, v in zip(names[1:], values))
        what = f"{arm} {shown} (trial {trial.number})"
        trials = study.get_trials(deepcopy=False)
        if trial.state == TrialState.COMPLETE:
            done = sum(t.state == TrialState.COMPLETE and "run" in t.user_attrs for t in trials)
            run = trial.user_attrs["run"]
            which, monitor = self.plan.grid.tests[-1], self.plan.grid.monitor  # best, if tested
            tested = [k for k in run if k.startswith(f"{which}:") and k != f"{which}:{monitor}"]
            first = f"{tested[0]} {run[tested[0]]:.4f}, " if tested else ""
            print(
                f"run {done}/{len(self.plan.grid.points)}: {what}: {first}trained in "
                f"{run['train_seconds']:.1f} s",
                flush=True,
            )
        elif trial.user_attrs.get("duplicate_of") is not None:
            print(f"skipped {what}: trial {trial.user_attrs['duplicate_of']} runs it", flush=True)
        if not _work_left(trials, self.plan):
            study.stop()


def _work(plan: _Plan, study: optuna.Study) -> None:
    """Run grid points in this process until none is left to start (or ``--max_minutes``)."""
    fail_stale(study)
    minutes = plan.options.max_minutes
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    names = plan.grid.names
    while True:
        # A run that failed and is not queued again yet (a crash in an earlier command, or a
        # second heartbeat failure) is queued again, so every point left is one never started.
        untaken = set(_untaken(study.get_trials(deepcopy=False), plan))
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            point = point_of(t, names)
            if point in untaken:  # once per point, however often it failed
                untaken.discard(point)
                study.enqueue_trial(dict(zip(names, point)), skip_if_exists=False)
        if not _work_left(study.get_trials(deepcopy=False), plan):
            return
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            return
        # GridSampler stops this call once every point has been tried, even with queued runs
        # still waiting: the loop then calls it again.
        with quiet_failed_trials():
            study.optimize(
                _Objective(plan), timeout=timeout, callbacks=[_Progress(plan)], gc_after_trial=True
            )


def _work_with_helpers(plan: _Plan, study: optuna.Study) -> int:
    """Work here beside ``--workers`` - 1 worker processes; 1 if one of them failed, else 0."""
    before = torch.get_num_threads()
    threads = plan.options.threads or max(1, before // plan.options.workers)
    cmd = [sys.executable, "-m", "lightning_mixup", "compare", *plan.argv]
    cmd += ["--workers", "1", "--threads", str(threads), "--report", "no"]
    helpers = [subprocess.Popen(cmd) for _ in range(plan.options.workers - 1)]
    try:
        torch.set_num_threads(threads)
        with _lightning_quiet():
            _work(plan, study)
    except (TrialFailed, TuneError):
        for p in helpers:  # this worker stops; the others finish what they can
            p.wait()
        raise
    except BaseException:
        for p in helpers:
            p.terminate()
        raise
    finally:
        torch.set_num_threads(before)
    return 1 if any(p.wait() for p in helpers) else 0


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-mixup compare`` with ``argv`` (the arguments after ``compare``).

    Returns:
        0 on success; 1 when a run failed (here or in a worker process; the next command runs it
        again); 2 on a bad argument or config, or a study that cannot be opened or joined. Each
        problem is one line on standard error.
    """
    argv = list(sys.argv[2:] if argv is None else argv)
    try:
        the_plan = plan(argv)
        study = open_study(the_plan)
    except (ValueError, TuneError) as err:
        print(f"lightning-mixup compare: error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    status = 0
    if the_plan.options.report != "only":
        try:
            status = _work_with_helpers(the_plan, study)
        except (TrialFailed, TuneError) as err:
            print(f"lightning-mixup compare: error: {err}", file=sys.stderr)
            status = 1
    if the_plan.options.report == "no":
        return status
    out = Path(the_plan.options.out)
    runs, notes = write_report(
        study, the_plan.grid, out, the_plan.command, the_plan.options.storage_url
    )
    print((out / "summary.md").read_text(), *notes, sep="\n")
    left = len(the_plan.grid.points) - len(runs)
    print(
        f"{len(runs)} of {len(the_plan.grid.points)} runs finished; this command took "
        f"{(time.perf_counter() - start) / 60:.1f} min; wrote {out}/"
        + (f" ({left} runs left: rerun the command to continue)" if left else "")
    )
    return status
