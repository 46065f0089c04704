"""``lightning-mixup tune``: an Optuna study over MixupCallback arguments for any LightningCLI config.

Each trial builds the user's config through :class:`~lightning_mixup.cli.MixupCLI` (``run=False``),
puts one :class:`~lightning_mixup.MixupCallback` with the trial's arguments into ``trainer.callbacks``
(replacing the arguments of the config's own one, else appending one), fits, and returns the
monitored metric of the **last** validation epoch (the mean over ``--seeds``).

Trial 0 of every study is a no-mixing baseline: enqueued with the user attribute ``baseline=True``,
it runs with no MixupCallback at all and has no parameters.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import optuna
from optuna.trial import TrialState

from lightning_mixup.tune._study import TuneError, add_study_arguments, open_storage
from lightning_mixup.tune.space import default_space, load_space, suggest

if TYPE_CHECKING:  # cli.py imports this module (at run time) for `tune`
    from lightning_mixup.cli import MixupCLI

__all__ = ["Refused", "TuneError", "run"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Refused(Exception):
    """MixupCallback refused a trial's combination of arguments: that trial fails, the study goes on."""


#: Refused trials in a row after which the worker stops: the space is then mostly invalid.
_MAX_REFUSED = 5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-mixup tune",
        allow_abbrev=False,
        description=(
            "Tune MixupCallback arguments with Optuna on your own LightningCLI config. Options not "
            "listed here (--config, --trainer.*, --model.*, --data.*) go to LightningCLI unchanged; "
            "write them as --key=value."
        ),
    )
    p.add_argument(
        "--n-trials",
        type=int,
        default=20,
        help="Target total of COMPLETE+PRUNED trials in the study (baseline included); rerunning continues up to it.",
    )
    p.add_argument(
        "--monitor",
        default="val/acc",
        help="Metric logged by the model, read after each validation epoch.",
    )
    p.add_argument("--direction", choices=("maximize", "minimize"), default="maximize")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="Seeds per trial; the objective is the mean.",
    )
    p.add_argument("--space", help="YAML search space (replaces the default one).")
    p.add_argument(
        "--out", default="runs/tune", help="Folder for trial_<n>/, summary.md, trials.csv, plots."
    )
    p.add_argument("--no-prune", action="store_true", help="Turn off the MedianPruner.")
    add_study_arguments(p, study_name="lightning-mixup", what="trial")
    p.add_argument(
        "--print-best-config",
        metavar="FILE",
        help="Write the config with the best MixupCallback arguments filled in.",
    )
    p.add_argument("--sampler-seed", type=int, default=None, help="Seed of the TPE sampler.")
    return p


def run(argv: Sequence[str]) -> int:
    """Run ``lightning-mixup tune`` with ``argv`` (the arguments after ``tune``); the exit status."""
    args, passthrough = _parser().parse_known_args(list(argv))
    try:
        return _run(args, passthrough)
    except (TuneError, ValueError) as err:
        print(f"lightning-mixup tune: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, passthrough: list[str]) -> int:
    if args.n_trials < 1:
        raise ValueError(f"`--n-trials` must be at least 1, got {args.n_trials!r}.")
    if args.heartbeat < 1:
        raise ValueError(f"`--heartbeat` must be at least 1 second, got {args.heartbeat!r}.")
    space = load_space(args.space) if args.space else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(
        args.storage or f"sqlite:///{out / 'study.db'}", args.heartbeat, args.grace
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.NopPruner()
        if args.no_prune
        else optuna.pruners.MedianPruner(n_startup_trials=5)
    )
    study = optuna.create_study(
        storage=storage,
        study_name=args.study_name,
        direction=args.direction,
        pruner=pruner,
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
        load_if_exists=True,
    )
    if study.direction.name.lower() != args.direction:
        raise TuneError(
            f"study {args.study_name!r} exists with direction {study.direction.name.lower()}, got --direction {args.direction}."
        )
    known = study.user_attrs.get("monitor")
    if known is None:
        study.set_user_attr("monitor", args.monitor)
    elif known != args.monitor:
        raise TuneError(
            f"study {args.study_name!r} was run with --monitor {known!r}, got {args.monitor!r}; use another --study-name."
        )
    if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial({}, user_attrs={"baseline": True})

    objective = _Objective(args, passthrough, space, out)
    heartbeat = isinstance(storage, optuna.storages.RDBStorage)
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    todo = _missing(study, args.n_trials, count_running=heartbeat)
    if todo > 0:
        # No n_trials: refused trials do not count, so _Progress stops the worker once the study
        # has enough finished trials.
        study.optimize(
            objective,
            callbacks=[_Progress(args.n_trials, heartbeat)],
            gc_after_trial=True,
            catch=(Refused,),
        )
    from lightning_mixup.tune.report import write_reports

    text = write_reports(study, out, args.monitor)
    print(text)
    if args.print_best_config:
        _print_best_config(study, passthrough, Path(args.print_best_config))
        print(f"best config written to {args.print_best_config}")
    return 0


def _missing(study: optuna.Study, n_trials: int, count_running: bool) -> int:
    """How many more trials this worker may start so that the study reaches ``n_trials``.

    Trials running in other workers count as done (they will finish, or be failed by the
    heartbeat and retried), so concurrent workers stop together without overshooting, which
    ``MaxTrialsCallback`` (it counts finished trials only) allows by up to one trial per worker.
    Journal storage has no heartbeat, so its running trials are not counted.
    """
    states = (*_FINISHED, TrialState.RUNNING) if count_running else _FINISHED
    return n_trials - len(study.get_trials(deepcopy=False, states=states))


class _Progress:
    """Prints one line per finished trial and stops the worker when the study has enough trials."""

    def __init__(self, n_trials: int, count_running: bool) -> None:
        self.n_trials, self.count_running = n_trials, count_running
        self.refused = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=_FINISHED))
        try:
            best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "-"
        kind = "baseline" if trial.user_attrs.get("baseline") else _fmt_params(trial.params)
        if trial.state == TrialState.COMPLETE:
            value = f"value={trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            value = f"pruned at epoch {trial.last_step}"
        elif "refused" in trial.user_attrs:
            value = f"refused by MixupCallback ({trial.user_attrs['refused']})"
        else:
            value = trial.state.name.lower()
        print(
            f"trial {done}/{self.n_trials} #{trial.number} {value} best so far={best} [{kind}]",
            flush=True,
        )
        self.refused = self.refused + 1 if "refused" in trial.user_attrs else 0
        if self.refused >= _MAX_REFUSED:
            raise TuneError(
                f"MixupCallback refused {self.refused} trials in a row, the last with: "
                f"{trial.user_attrs['refused']} Narrow `--space` to valid combinations."
            )
        if _missing(study, self.n_trials, self.count_running) <= 0:
            study.stop()


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class _Report(pl.Callback):
    """Reads ``monitor`` after each validation epoch, reports it to Optuna and prunes.

    A small own callback: Optuna's ``PyTorchLightningPruningCallback`` targets ``pytorch_lightning``.
    With ``max_epochs`` known it prunes only in the second half of the run (mixing trials learn
    slowly at first, so early epochs say little about the last one) and never at the last epoch
    (the trial is then done: its value is the result).
    """

    def __init__(
        self, monitor: str, trial: optuna.Trial | None, prune: bool, max_epochs: int | None = None
    ) -> None:
        self.monitor, self.trial, self.prune = monitor, trial, prune
        self.window: tuple[int, int | None] = (0, None)
        if max_epochs is not None and max_epochs > 0:
            self.window = (max_epochs // 2, max_epochs - 1)
        self.last: float | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the epoch's value; raise when the metric is missing or the trial is pruned."""
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise TuneError(
                f"`--monitor` {self.monitor!r} is not logged by the model; it logs "
                f"{', '.join(sorted(metrics)) or 'nothing'}."
            )
        self.last = float(metrics[self.monitor])
        if self.trial is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(self.last, epoch)
        first, last = self.window
        in_window = first <= epoch and (last is None or epoch < last)
        if self.prune and in_window and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


class _Objective:
    def __init__(
        self, args: argparse.Namespace, passthrough: list[str], space: dict | None, out: Path
    ) -> None:
        self.args, self.passthrough, self.space, self.out = args, passthrough, space, out

    def __call__(self, trial: optuna.Trial) -> float:
        baseline = bool(trial.user_attrs.get("baseline"))
        if baseline and _earlier_baseline(trial):
            # A concurrent worker enqueued a second baseline: run it as an ordinary trial.
            trial.set_user_attr("baseline", False)
            baseline = False
        params: dict[str, Any] | None = None
        values = []
        seeds = self.args.seeds
        for i, seed in enumerate(seeds):
            root = self.out / f"trial_{trial.number}"
            if len(seeds) > 1:
                root = root / f"seed_{seed}"
            cli = _build(self.passthrough, seed, root)
            if params is None and not baseline:
                space = (
                    self.space if self.space is not None else default_space(cli.trainer.max_epochs)
                )
                params = suggest(trial, space)
            try:
                _set_mixup(cli, None if baseline else params)
            except (ValueError, TypeError) as err:
                trial.set_user_attr("refused", str(err))
                raise Refused(str(err)) from None
            _write_config(cli, root / "config.yaml", None if baseline else params)
            # The baseline reports no epochs: the pruner compares mixing trials with each other
            # (plain training learns faster early, which would prune most mixing trials at once).
            reporting = trial if i == 0 and not baseline else None
            epochs = cli.trainer.max_epochs
            report = _Report(self.args.monitor, reporting, not self.args.no_prune, epochs)
            cli.trainer.callbacks.append(report)  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            if report.last is None:
                raise TuneError(
                    f"trial {trial.number} ran no validation epoch, so {self.args.monitor!r} was never read."
                )
            trial.set_user_attr(f"value_seed_{seed}", report.last)
            values.append(report.last)
        value = sum(values) / len(values)
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{self.args.monitor} is {value}")
        return value


def _earlier_baseline(trial: optuna.Trial) -> bool:
    study = trial.study
    return any(
        t.user_attrs.get("baseline") and t.number < trial.number and t.state != TrialState.FAIL
        for t in study.get_trials(deepcopy=False)
    )


def _build(passthrough: list[str], seed: int | None, root: Path | None) -> MixupCLI:
    from lightning_mixup.cli import MixupCLI, main

    extra = []
    if seed is not None:
        extra.append(f"--seed_everything={seed}")
    if root is not None:
        extra.append(f"--trainer.default_root_dir={root}")
    with warnings.catch_warnings():
        # ``lightning-mixup tune ...`` is in sys.argv while we pass our own list on purpose.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run")
        cli = main([*passthrough, *extra], run=False, save_config_callback=None)
    assert isinstance(cli, MixupCLI)  # the passthrough never starts with `tune`/`compare`
    return cli


def _mixup_entries(config: dict) -> tuple[list[dict], list[int]]:
    """The config's ``trainer.callbacks`` as a list, and the indices of its MixupCallback entries."""
    from lightning_mixup.callback import MixupCallback

    callbacks = config.get("trainer", {}).get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    found = []
    for i, entry in enumerate(callbacks):
        path = entry.get("class_path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or "." not in path:
            continue
        module, name = path.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, MixupCallback):
            found.append(i)
    if len(found) > 1:
        raise TuneError(
            f"the config has {len(found)} MixupCallbacks in trainer.callbacks; tune needs at most one."
        )
    return list(callbacks), found


def _set_mixup(cli: Any, params: dict[str, Any] | None) -> None:
    """Replace (or add, or for ``None`` remove) the trainer's MixupCallback."""
    from lightning_mixup.callback import MixupCallback

    callbacks, found = _mixup_entries(cli.config.as_dict())
    old = [cb for cb in cli.trainer.callbacks if isinstance(cb, MixupCallback)]
    for cb in old:
        cli.trainer.callbacks.remove(cb)
    if params is None:
        return
    if found:
        init_args = dict(callbacks[found[0]].get("init_args") or {})
        cls = type(old[0]) if old else MixupCallback
    else:
        init_args, cls = {}, MixupCallback
    init_args.update(params)
    cli.trainer.callbacks.append(cls(**init_args))


def _config_with(config: dict, params: dict[str, Any] | None) -> dict:
    """``config`` (``as_dict``) with the MixupCallback entry set to ``params`` (removed for None)."""
    config = {k: v for k, v in config.items() if k != "config"}
    callbacks, found = _mixup_entries(config)
    if params is None:
        callbacks = [c for i, c in enumerate(callbacks) if i not in found]
    elif found:
        entry = dict(callbacks[found[0]])
        entry["init_args"] = {**(entry.get("init_args") or {}), **params}
        callbacks[found[0]] = entry
    else:
        callbacks.append({"class_path": "lightning_mixup.MixupCallback", "init_args": dict(params)})
    config["trainer"] = {**config.get("trainer", {}), "callbacks": callbacks}
    return config


def _write_config(cli: Any, path: Path, params: dict[str, Any] | None) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_config_with(_dumped(cli), params), sort_keys=False))


def _dumped(cli: Any) -> dict:
    """The CLI's config as plain YAML data, as jsonargparse writes it (callables as import paths)."""
    import yaml

    return yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))


def _print_best_config(study: optuna.Study, passthrough: list[str], path: Path) -> None:
    """Write the user's full config (their overrides applied) with the best trial's arguments."""
    try:
        best = study.best_trial
    except ValueError:
        raise TuneError("no trial completed, so there is no best config to write.") from None
    cli = _build(passthrough, None, None)
    params = None if best.user_attrs.get("baseline") else dict(best.params)
    path.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    header = (
        f"# lightning-mixup tune: best trial #{best.number} of study {study.study_name!r}, "
        f"{study.user_attrs.get('monitor')}={best.value:.4f}"
        + (" (the no-mixing baseline: no MixupCallback)" if params is None else "")
        + "\n"
    )
    path.write_text(header + yaml.safe_dump(_config_with(_dumped(cli), params), sort_keys=False))
