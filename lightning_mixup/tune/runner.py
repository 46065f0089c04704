"""``lightning-mixup tune``: an Optuna study over MixupCallback arguments for any LightningCLI config.

A trial fits the config with the trial's MixupCallback; its value is the monitored metric of the
last validation epoch (mean over ``--seeds``). Trial 0 (user attribute ``baseline``) has no
MixupCallback. The guide: ``docs/tuning.md``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import optuna
from optuna.trial import TrialState

from lightning_mixup.tune._config import (
    build,
    config_with,
    dumped,
    mixup_class,
    mixup_entry,
    place,
    write_config,
)
from lightning_mixup.tune._options import parse
from lightning_mixup.tune._study import (
    StudyOptions,
    TrialFailed,
    TuneError,
    check_heartbeat,
    check_seeds,
    fail_stale,
    failed,
    make_folder,
    quiet_failed_trials,
    stamp,
    write_atomically,
)
from lightning_mixup.tune.report import label, write_plots, write_summary
from lightning_mixup.tune.space import default_space, load_space, suggest

__all__ = ["Refused", "TrialFailed", "TuneError", "TuneOptions", "run"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Refused(Exception):
    """MixupCallback refused a trial's combination of arguments: that trial fails, the study goes on."""


#: Refused trials in a row after which the worker stops: the space is then mostly invalid.
_MAX_REFUSED = 5


@dataclass
class TuneOptions(StudyOptions):
    """The options of ``lightning-mixup tune``; every other flag goes to LightningCLI.

    Args:
        n_trials: Target total of COMPLETE+PRUNED trials in the study (baseline included);
            rerunning continues up to it.
        monitor: Metric logged by the model, read after each validation epoch.
        direction: Whether a larger or a smaller ``--monitor`` is better.
        seeds: Seeds per trial; the objective is the mean.
        space: YAML search space (replaces the default one).
        out: Folder for trial_<n>/, summary.md, trials.csv and the plots.
        prune: Prune unpromising trials (Optuna's MedianPruner); ``--no-prune`` turns it off.
        print_best_config: A YAML file to write the config with the best MixupCallback arguments
            filled in to.
        sampler_seed: Seed of the TPE sampler.
    """

    n_trials: int = 20
    monitor: str = "val/acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    seeds: list[int] = field(default_factory=lambda: [0])
    space: str | None = None
    out: str = "runs/tune"
    prune: bool = True
    print_best_config: str | None = None
    sampler_seed: int | None = None


def run(argv: Sequence[str]) -> int:
    """Run ``lightning-mixup tune`` with ``argv`` (the arguments after ``tune``); the exit status."""
    description = (
        "Tune MixupCallback arguments with Optuna on your own LightningCLI config. Flags not "
        "listed here (--config, --trainer.*, --model.*, --data.*) go to LightningCLI; the flags "
        "below may be spelt with dashes too (--n-trials), lists as `--seeds 0 1`."
    )
    try:
        options, passthrough = parse(TuneOptions, argv, "lightning-mixup tune", description)
        return _run(options, passthrough)
    except (TuneError, ValueError, TrialFailed) as err:
        print(f"lightning-mixup tune: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, TrialFailed) else 2


def _run(args: TuneOptions, passthrough: list[str]) -> int:
    from lightning_mixup import _checks

    _checks.integer("--n_trials", args.n_trials, 1)
    check_seeds(args.seeds)
    check_heartbeat(args.heartbeat, args.grace)
    space = load_space(args.space) if args.space else None
    out = Path(args.out)
    if args.print_best_config:
        best = Path(args.print_best_config)
        make_folder("--print_best_config", best.parent, given=best)
    storage = args.open_storage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.NopPruner()
        if not args.prune
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
    heartbeat = isinstance(storage, optuna.storages.RDBStorage)
    fail_stale(study)
    stamp(study, {"monitor": args.monitor}, args.storage_url, "trial")
    # A failed baseline (say with a --monitor typo, or a crash) is queued again: the summary
    # compares mixing with it. A killed worker's baseline is queued again by the heartbeat's
    # retry, with its user attributes, so it is not FAIL-only then.
    if not _baselines(study):
        study.enqueue_trial({}, user_attrs={"baseline": True})

    objective = _Objective(args, passthrough, space, out)
    todo = _missing(study, args.n_trials, count_running=heartbeat)
    if todo > 0:
        # No n_trials: refused trials do not count, so _Progress stops the worker once the study
        # has enough finished trials.
        with quiet_failed_trials():
            study.optimize(
                objective,
                callbacks=[_Progress(args.n_trials, heartbeat)],
                gc_after_trial=True,
                catch=(Refused,),
            )
    # The summary and the best config first: a plot that fails must not cost them.
    text = write_summary(study, out, args.monitor)
    print(text)
    if args.print_best_config:
        _print_best_config(study, passthrough, Path(args.print_best_config), args.monitor)
        print(f"best config written to {args.print_best_config}")
    for note in write_plots(study, out, args.monitor, text):
        print(note)
    return 0


def _missing(study: optuna.Study, n_trials: int, count_running: bool) -> int:
    """How many more trials this worker may start so that the study reaches ``n_trials``.

    Running trials count as done where a heartbeat fails them if their worker dies.
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
        kind = "baseline" if trial.user_attrs.get("baseline") else label(trial)
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


class _Report(pl.Callback):
    """Reads ``monitor`` after each validation epoch, reports it to Optuna and prunes.

    Optuna's own pruning callback targets ``pytorch_lightning``. With ``max_epochs`` known this
    one prunes only in the second half of the run (mixing learns slowly at first), never at its end.
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
        self, args: TuneOptions, passthrough: list[str], space: dict | None, out: Path
    ) -> None:
        self.args, self.passthrough, self.space, self.out = args, passthrough, space, out

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial; a failure is recorded (``error`` user attribute, ``error.log``)."""
        try:
            return self._run(trial)
        except (optuna.TrialPruned, Refused, TuneError):
            raise  # said in one line by _Progress, or by run() (TuneError: a bad setting)
        except Exception as err:
            raise failed(trial, err, self.out / f"trial_{trial.number}") from err

    def _run(self, trial: optuna.Trial) -> float:
        baseline = bool(trial.user_attrs.get("baseline"))
        if baseline and any(n < trial.number for n in _baselines(trial.study)):
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
            cli = build(self.passthrough, seed, root)
            if params is None and not baseline:
                space = (
                    self.space if self.space is not None else default_space(cli.trainer.max_epochs)
                )
                params = suggest(trial, space)
            init_args = _with_params(cli.config.as_dict(), params)
            try:
                place(cli.trainer, None if init_args is None else mixup_class(cli)(**init_args))
            except (ValueError, TypeError) as err:
                trial.set_user_attr("refused", str(err))
                raise Refused(str(err)) from None
            write_config(cli, root / "config.yaml", init_args)
            # The baseline reports no epochs: the pruner compares mixing trials with each other
            # (plain training learns faster early, which would prune most mixing trials at once).
            reporting = trial if i == 0 and not baseline else None
            epochs = cli.trainer.max_epochs
            report = _Report(self.args.monitor, reporting, self.args.prune, epochs)
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


def _baselines(study: optuna.Study) -> list[int]:
    """The numbers of the study's baseline trials that did not fail."""
    trials = study.get_trials(deepcopy=False)
    return [t.number for t in trials if t.user_attrs.get("baseline") and t.state != TrialState.FAIL]


def _with_params(config: dict, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The config's MixupCallback arguments with the trial's ``params`` (None: no MixupCallback)."""
    if params is None:
        return None
    entry = mixup_entry(config)
    return {**((entry or {}).get("init_args") or {}), **params}


def _print_best_config(
    study: optuna.Study, passthrough: list[str], path: Path, monitor: str
) -> None:
    """Write the user's full config (their overrides applied) with the best trial's arguments."""
    try:
        best = study.best_trial
    except ValueError:
        raise TuneError("no trial completed, so there is no best config to write.") from None
    cli = build(passthrough)
    params = None if best.user_attrs.get("baseline") else dict(best.params)
    import yaml

    header = (
        f"# lightning-mixup tune: best trial #{best.number} of study {study.study_name!r}, "
        f"{monitor}={best.value:.4f}"
        + (" (the no-mixing baseline: no MixupCallback)" if params is None else "")
        + "\n"
    )
    config = dumped(cli)
    text = header + yaml.safe_dump(
        config_with(config, _with_params(config, params)), sort_keys=False
    )
    make_folder("--print_best_config", path.parent, given=path)
    try:
        write_atomically(path, text)
    except OSError as err:
        raise TuneError(
            f"`--print_best_config` {str(path)!r} cannot be written: {err.strerror or err}."
        ) from None
