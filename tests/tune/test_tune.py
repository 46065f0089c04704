"""``lightning-mixup tune``: real Optuna studies on sqlite over the digits example, kept tiny."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from lightning_mixup.cli import console  # noqa: E402
from lightning_mixup.cli import main as cli_main  # noqa: E402
from lightning_mixup.tune import main  # noqa: E402
from lightning_mixup.tune.space import load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "examples" / "digits.yaml")
TINY = [
    f"--config={CONFIG}",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
]


@pytest.fixture
def optuna_log():
    """What Optuna logs during the test (its own handler may hold a stream pytest replaced)."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("optuna").addHandler(handler)
    yield stream
    logging.getLogger("optuna").removeHandler(handler)


def _load(out: Path) -> "optuna.Study":
    return optuna.load_study(study_name="lightning-mixup", storage=f"sqlite:///{out / 'study.db'}")


def _finished(study):
    return study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )


def test_two_trial_study_then_resume(tmp_path, capsys):
    out = tmp_path / "tune"
    best = tmp_path / "best.yaml"
    argv = [*TINY, "--n-trials", "2", "--out", str(out), "--print-best-config", str(best)]
    assert console(["tune", *argv]) == 0
    printed = capsys.readouterr().out
    assert "trial 1/2 #0" in printed and "[baseline]" in printed and "trial 2/2 #1" in printed
    for name in ("trials.csv", "summary.md", "alpha.png", "history.png"):
        assert (out / name).is_file(), name
    assert (out / "trial_0" / "config.yaml").is_file() and (out / "trial_1").is_dir()
    summary = (out / "summary.md").read_text()
    assert "Baseline (no mixing)" in summary and "| 1 |" in summary
    assert len((out / "trials.csv").read_text().splitlines()) == 3
    study = _load(out)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["baseline"] is True and trials[0].params == {}
    assert 0.05 <= trials[1].params["alpha"] <= 4.0
    # Only mixing trials feed the pruner: the baseline reports no epochs.
    assert trials[0].intermediate_values == {} and list(trials[1].intermediate_values) == [0]
    # The best config is a valid LightningCLI config.
    text = best.read_text()
    assert text.startswith("# lightning-mixup tune: best trial")
    cli = cli_main(["--config", str(best), "--trainer.logger=false"], run=False)
    from lightning_mixup import MixupCallback

    n_mix = sum(isinstance(cb, MixupCallback) for cb in cli.trainer.callbacks)
    assert n_mix == (0 if study.best_trial.number == 0 else 1)

    # Resume: the same command with a larger target runs exactly one more trial.
    done = {t.number: t.datetime_complete for t in trials}
    argv[argv.index("--n-trials") + 1] = "3"
    argv = argv[: argv.index("--print-best-config")]
    assert main(argv) == 0
    trials = _load(out).get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.number: t.datetime_complete for t in trials[:2]} == done
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert (out / "trial_2" / "config.yaml").is_file()
    # Already at the target: nothing runs.
    assert main(argv) == 0
    assert len(_load(out).get_trials()) == 3


def _worker(out: Path, n: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_mixup", "tune", *TINY, "--n-trials", str(n)]
    cmd += ["--out", str(out), *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    out = tmp_path / "tune"
    workers = [_worker(out, 4), _worker(out, 4)]
    logs = [w.communicate(timeout=240)[0] for w in workers]
    for w, log in zip(workers, logs):
        assert w.returncode == 0, log[-3000:]
    trials = _load(out).get_trials()
    assert len(_finished(_load(out))) == 4, [(t.number, t.state.name) for t in trials]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{t.number}" for t in trials]
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    # Every trial is reported by exactly one worker: no trial is run twice.
    reported = [line for log in logs for line in log.splitlines() if "/4 #" in line]
    assert len(reported) == 4, logs


def _open(url: str) -> str:
    from lightning_mixup.tune._study import open_storage

    try:
        open_storage(url, 60, None)
    except Exception as err:  # the test reports any failure by name
        return f"{type(err).__name__}: {err}"
    return "ok"


@pytest.mark.slow
def test_workers_opening_a_new_database_together_all_get_it(tmp_path):
    # Six processes create one new sqlite study database at once, three times: they race to
    # create its tables and version rows (before the retry, 5 of 30 openings failed here).
    import multiprocessing

    urls = [f"sqlite:///{tmp_path / f'db{k}' / 'study.db'}" for k in range(3)]
    for url in urls:
        Path(url[len("sqlite:///") :]).parent.mkdir()
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        results = pool.map(_open, [url for url in urls for _ in range(6)])
    assert results == ["ok"] * 18, results


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(tmp_path):
    out = tmp_path / "tune"
    check_killed_worker_is_retried(out, lambda: _load(out))


def check_killed_worker_is_retried(out: Path, load, *storage: str) -> None:
    """Kill a 3-trial worker in its second trial; the next run fails that trial and retries it.

    ``load()`` reads the study back; ``storage`` are the workers' ``--storage`` arguments.
    """
    beat = [*storage, "--heartbeat", "1", "--grace", "2"]
    worker = _worker(out, 3, *beat)
    deadline = time.monotonic() + 120
    # config.yaml is written once the trial (and its heartbeat) has started, before training.
    while not (out / "trial_1" / "config.yaml").exists():
        assert worker.poll() is None, worker.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    before = {t.number: (t.state.name, t.datetime_complete) for t in load().get_trials()}
    assert before[0][0] == "COMPLETE" and before[1][0] == "RUNNING", before
    time.sleep(2.5)  # past the grace period
    worker = _worker(out, 3, *beat)
    log = worker.communicate(timeout=240)[0]
    assert worker.returncode == 0, log
    trials = load().get_trials()
    assert trials[0].datetime_complete == before[0][1]  # finished work kept
    assert trials[1].state.name == "FAIL"  # the dead worker's trial, failed by the heartbeat
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == trials[1].params  # the same arguments again
    assert len(_finished(load())) == 3
    assert not [t for t in trials if t.state.name == "RUNNING"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.parametrize("journal", [False, True])
def test_a_silent_trial_is_failed_and_queued_again_before_any_new_trial(tmp_path, journal):
    # The command's own look for dead workers' trials (before it starts one), not Optuna's at
    # the start of each trial: with nothing left to start, a command never reaches the latter.
    from lightning_mixup.tune._study import fail_stale, open_storage

    url = f"journal:{tmp_path / 'j.log'}" if journal else f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=open_storage(url, 1, 2))
    trial = study.ask({"alpha": optuna.distributions.FloatDistribution(0.1, 1.0)})
    if not journal:
        study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # past the grace period, in SQLite's whole seconds too
    fail_stale(study)
    states = [t.state.name for t in study.get_trials()]
    if journal:  # no heartbeat: the trial cannot be told from a slow one, and stays
        assert states == ["RUNNING"]
    else:
        assert states == ["FAIL", "WAITING"]
        retry = study.get_trials()[1]
        assert retry.system_attrs["failed_trial"] == 0 and retry.params == trial.params


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_space_file_is_checked(tmp_path):
    space = load_space(_space(tmp_path, "alpha: {type: float, low: 0.1, high: 2, log: true}\n"))
    assert space == {"alpha": {"type": "float", "low": 0.1, "high": 2, "log": True}}
    with pytest.raises(ValueError, match=r"key 'alfa': not an argument of MixupCallback"):
        load_space(_space(tmp_path, "alfa: {type: float, low: 0.1, high: 2}\n"))
    with pytest.raises(ValueError, match=r"key 'alpha': empty range.*low=2, high=0.5"):
        load_space(_space(tmp_path, "alpha: {type: float, low: 2, high: 0.5}\n"))
    with pytest.raises(ValueError, match=r"key 'cutmix_alpha': `choices` must be a non-empty list"):
        load_space(_space(tmp_path, "cutmix_alpha: {type: categorical}\n"))
    with pytest.raises(
        ValueError, match=r"`type` must be float, int or categorical, got 'uniform'"
    ):
        load_space(_space(tmp_path, "alpha: {type: uniform, low: 0, high: 1}\n"))
    with pytest.raises(ValueError, match=r"log range needs `low` > 0"):
        load_space(_space(tmp_path, "alpha: {type: float, low: 0, high: 1, log: true}\n"))


def test_errors_stop_before_training(tmp_path, capsys):
    out = tmp_path / "tune"
    bad = _space(tmp_path, "alfa: {type: float, low: 0.1, high: 2}\n")
    assert main([*TINY, "--out", str(out), "--space", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-mixup tune: error:") and "'alfa'" in err
    assert not list(out.glob("trial_*"))

    url = "sqlite:////nonexistent/dir/x.db"
    assert main([*TINY, "--out", str(out), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert f"cannot open storage {url!r}" in err and "unable to open database file" in err
    assert not list(out.glob("trial_*"))


def test_a_refused_combination_fails_its_trial_and_the_study_goes_on(tmp_path, capfd, optuna_log):
    out = tmp_path / "tune"
    # alpha=0 without CutMix is refused by MixupCallback; alpha=1 is fine.
    space = _space(
        tmp_path,
        "alpha: {type: categorical, choices: [0.0, 1.0]}\n"
        "cutmix_alpha: {type: categorical, choices: [0.0]}\n",
    )
    argv = [*TINY, "--out", str(out), "--space", space, "--n-trials", "3", "--sampler-seed", "0"]
    assert main(argv) == 0
    captured = capfd.readouterr()
    printed = captured.out
    # One line per refused trial, and not Optuna's traceback of it.
    assert "Traceback" not in printed + captured.err + optuna_log.getvalue()
    trials = _load(out).get_trials()
    refused = [t for t in trials if "refused" in t.user_attrs]
    assert refused and all(t.state.name == "FAIL" and t.params["alpha"] == 0 for t in refused)
    assert "`alpha`" in refused[0].user_attrs["refused"]
    assert "refused by MixupCallback (" in printed
    assert len(_finished(_load(out))) == 3
    assert not any((out / f"trial_{t.number}" / "checkpoints").exists() for t in refused)

    # Only refused combinations: the worker stops after five in a row, with the reason.
    only = _space(tmp_path, "alpha: {type: categorical, choices: [0.0]}\n")
    argv = [*TINY, "--out", str(tmp_path / "t2"), "--space", only, "--n-trials", "3"]
    assert main(argv) == 2
    err = _error_line(capfd.readouterr().err)
    assert "MixupCallback refused 5 trials in a row, the last with:" in err
    assert "Narrow `--space` to valid combinations." in err


def test_monitor_never_logged_lists_logged_names_and_can_be_corrected(tmp_path, capfd, optuna_log):
    out = tmp_path / "tune"
    assert main([*TINY, "--out", str(out), "--monitor", "val/accuracy", "--n-trials", "3"]) == 2
    captured = capfd.readouterr()
    err = _error_line(captured.err)
    assert "Traceback" not in captured.out + optuna_log.getvalue()  # nor Optuna's own
    assert "`--monitor` 'val/accuracy' is not logged by the model; it logs" in err
    assert "val/acc" in err and "val/nll" in err
    assert sorted(p.name for p in out.glob("trial_*")) == ["trial_0"]  # stopped after one epoch

    # No trial finished with the typo: the corrected command takes the new setting.
    assert main([*TINY, "--out", str(out), "--n-trials", "1"]) == 0
    assert (
        "study 'lightning-mixup' finished no trial with --monitor val/accuracy; "
        "it now runs with --monitor val/acc."
    ) in capfd.readouterr().out
    study = _load(out)
    assert study.user_attrs["settings"] == {"monitor": "val/acc"}
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE"]
    assert study.get_trials()[1].user_attrs["baseline"] is True  # the failed baseline, again
    # Now a trial finished with it: another --monitor is refused.
    assert main([*TINY, "--out", str(out), "--n-trials", "1", "--monitor", "val/nll"]) == 2
    assert _error_line(capfd.readouterr().err) == (
        f"lightning-mixup tune: error: study 'lightning-mixup' in sqlite:///{out / 'study.db'} "
        "was run with --monitor val/acc, got val/nll, and has 1 finished or running trial; use "
        "another --out, --storage or --study_name."
    )


def test_package_import_stays_light():
    code = "import sys, lightning_mixup, lightning_mixup.tune; print('optuna' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr


def test_missing_optuna_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["--n-trials", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        'lightning-mixup tune: error: optuna is not installed; pip install "lightning-mixup[tune]"'
    )


def test_seeds_space_and_journal_storage(tmp_path, capsys):
    out = tmp_path / "tune"
    space = _space(
        tmp_path,
        "alpha: {type: float, low: 0.2, high: 0.3}\np: {type: categorical, choices: [0.5]}\n",
    )
    journal = tmp_path / "journal.log"
    argv = [*TINY, "--out", str(out), "--n-trials", "2", "--seeds", "0", "1", "--space", space]
    assert main([*argv, "--storage", f"journal:{journal}", "--no-prune"]) == 0
    study = optuna.load_study(
        study_name="lightning-mixup",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
    )
    baseline, mixed = study.get_trials()
    assert mixed.params.keys() == {"alpha", "p"} and 0.2 <= mixed.params["alpha"] <= 0.3
    for t in (baseline, mixed):
        seeds = [t.user_attrs["value_seed_0"], t.user_attrs["value_seed_1"]]
        assert t.value == pytest.approx(sum(seeds) / 2)
        assert (out / f"trial_{t.number}" / "seed_1" / "config.yaml").is_file()
    written = (out / "trial_1" / "seed_0" / "config.yaml").read_text()
    assert "lightning_mixup.MixupCallback" in written and "p: 0.5" in written
    assert "MixupCallback" not in (out / "trial_0" / "seed_0" / "config.yaml").read_text()


class _FakeTrial:
    def __init__(self, prune):
        self.reported, self.prune = [], prune

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.prune


def test_report_callback_reports_and_prunes():
    from types import SimpleNamespace

    import torch

    from lightning_mixup.tune.runner import _Report

    trainer = SimpleNamespace(
        sanity_checking=False, current_epoch=3, callback_metrics={"val/acc": torch.tensor(0.5)}
    )
    trial = _FakeTrial(prune=False)
    report = _Report("val/acc", trial, prune=True)
    report.on_validation_end(trainer, None)
    assert trial.reported == [(3, 0.5)] and report.last == 0.5
    with pytest.raises(optuna.TrialPruned, match="epoch 3"):
        _Report("val/acc", _FakeTrial(prune=True), prune=True).on_validation_end(trainer, None)
    _Report("val/acc", _FakeTrial(prune=True), prune=False).on_validation_end(trainer, None)
    # With max_epochs known, epoch 3 is prunable in runs of 5 to 7 epochs only: not in the
    # first half (8+ epochs), and not at the last epoch (4 epochs). It is reported either way.
    for max_epochs, pruned in ((4, False), (5, True), (7, True), (8, False)):
        fake = _FakeTrial(prune=True)
        report = _Report("val/acc", fake, prune=True, max_epochs=max_epochs)
        if pruned:
            with pytest.raises(optuna.TrialPruned):
                report.on_validation_end(trainer, None)
        else:
            report.on_validation_end(trainer, None)
        assert fake.reported == [(3, 0.5)], max_epochs
    trainer.sanity_checking = True
    _Report("nope", trial, prune=True).on_validation_end(trainer, None)  # sanity check: skipped


def test_config_with_replaces_appends_or_removes_the_callback():
    from lightning_mixup.tune._config import config_with
    from lightning_mixup.tune.runner import _with_params

    def _config_with(config, params):
        return config_with(config, _with_params(config, params))

    ckpt = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {}}
    mix = {
        "class_path": "lightning_mixup.MixupCallback",
        "init_args": {"alpha": 0.4, "ramp_epochs": 5},
    }
    config = {"config": ["x.yaml"], "trainer": {"callbacks": [ckpt, mix]}}
    out = _config_with(config, {"alpha": 1.5})
    assert "config" not in out
    assert out["trainer"]["callbacks"][1]["init_args"] == {"alpha": 1.5, "ramp_epochs": 5}
    assert _config_with(config, None)["trainer"]["callbacks"] == [ckpt]
    added = _config_with({"trainer": {"callbacks": [ckpt]}}, {"alpha": 2.0})["trainer"]["callbacks"]
    assert added == [
        ckpt,
        {"class_path": "lightning_mixup.MixupCallback", "init_args": {"alpha": 2.0}},
    ]
    assert config["trainer"]["callbacks"][1]["init_args"]["alpha"] == 0.4  # input untouched
    # compare's arms: the arguments replaced whole, the arm's callbacks right after them.
    ts = {"class_path": "lightning_mixup.TemperatureScaling"}
    out = config_with(config, {"alpha": 1.0}, [ts])["trainer"]["callbacks"]
    assert out == [ckpt, {**mix, "init_args": {"alpha": 1.0}}, ts]
    assert config_with(config, None, [ts])["trainer"]["callbacks"] == [ckpt, ts]


# ---------------------------------------------------------------------------- the report
def _one_line(text: str) -> str:
    """The single line of ``text`` (fails when there are more, as a traceback would make)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _error_line(text: str) -> str:
    """The command's one error line in ``text``, which also holds Lightning's info lines."""
    assert "Traceback" not in text and "failed with parameters" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("lightning-mixup tune: error")]
    assert len(lines) == 1, text
    return lines[0]


def _study_of(out: Path, trials: list) -> "optuna.Study":
    """A finished study in ``<out>/study.db``, as a run of ``tune`` leaves it (no training)."""
    out.mkdir(parents=True)
    study = optuna.create_study(
        storage=f"sqlite:///{out / 'study.db'}", study_name="lightning-mixup", direction="maximize"
    )
    study.add_trials(trials)
    return study


def _trial(value, alpha=None, state="COMPLETE"):
    dist = optuna.distributions.FloatDistribution(0.05, 4.0, log=True)
    params, dists = ({}, {}) if alpha is None else ({"alpha": alpha}, {"alpha": dist})
    pruned = state == "PRUNED"
    return optuna.trial.create_trial(
        state=getattr(optuna.trial.TrialState, state),
        value=None if pruned else value,
        params=params,
        distributions=dists,
        user_attrs={"baseline": True} if alpha is None else {},
        intermediate_values={0: value} if pruned else None,
    )


def _image(path: Path):
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100, path
    return pixels


def test_one_trial_study_gets_its_report_and_best_config(tmp_path, capfd):
    out, best = tmp_path / "tune", tmp_path / "best.yaml"
    argv = [*TINY, "--n-trials", "1", "--out", str(out), "--print-best-config", str(best)]
    assert main(argv) == 0
    printed = capfd.readouterr().out
    assert "**Best:** trial 0, val/acc=" in (out / "summary.md").read_text()
    assert len((out / "trials.csv").read_text().splitlines()) == 2
    assert best.read_text().startswith("# lightning-mixup tune: best trial #0")
    assert "alpha.png skipped: no completed trial has an `alpha`" in printed
    assert "importances.png skipped: " in printed
    _image(out / "history.png")
    assert not (out / "alpha.png").exists() and not (out / "importances.png").exists()
    summary = (out / "summary.md").read_text()
    assert "![optimization history](history.png)" in summary
    assert "- alpha.png skipped: no completed trial has an `alpha`" in summary


def test_space_without_alpha_gets_its_report(tmp_path, capfd):
    out = tmp_path / "tune"
    space = _space(tmp_path, "p: {type: float, low: 0.5, high: 1.0}\n")
    assert main([*TINY, "--n-trials", "2", "--out", str(out), "--space", space]) == 0
    printed = capfd.readouterr().out
    assert "alpha.png skipped: no completed trial has an `alpha`" in printed
    assert "**Best mixing vs baseline:**" in (out / "summary.md").read_text()
    _image(out / "history.png")


def test_study_whose_mixing_trials_were_all_pruned_gets_its_report(tmp_path, capfd):
    import matplotlib

    out, best = tmp_path / "tune", tmp_path / "best.yaml"
    _study_of(out, [_trial(0.5), _trial(0.2, 1.0, "PRUNED"), _trial(0.1, 0.3, "PRUNED")])
    matplotlib.use("Agg")  # as the report does (headless): alone, this test would see it change
    style = dict(matplotlib.rcParams)
    # The study already holds 3 finished trials: nothing trains, the report is written.
    argv = [*TINY, "--n-trials", "3", "--out", str(out), "--print-best-config", str(best)]
    assert main(argv) == 0
    printed = capfd.readouterr().out
    summary = (out / "summary.md").read_text()
    assert "Trials: complete 1, pruned 2." in summary
    assert "**Best:** trial 0, val/acc=0.5000: no mixing (baseline)" in summary
    # The header names the monitored metric (the study stamps it in its settings).
    assert best.read_text().startswith(
        "# lightning-mixup tune: best trial #0 of study 'lightning-mixup', val/acc=0.5000 "
        "(the no-mixing baseline: no MixupCallback)\n"
    )
    assert "alpha.png skipped: no completed trial has an `alpha`" in printed
    assert "importances.png skipped: fewer than 2 completed mixing trials" in printed
    _image(out / "history.png")
    assert dict(matplotlib.rcParams) == style  # Optuna's plot style does not leak out


def test_plots_come_from_optuna_and_a_failing_one_costs_nothing_else(tmp_path, capfd, monkeypatch):
    from optuna.visualization import matplotlib as optuna_plots

    out, best = tmp_path / "tune", tmp_path / "best.yaml"
    trials = [_trial(0.5), _trial(0.6, 1.0), _trial(0.7, 0.2), _trial(0.55, 2.0)]
    cutmix = optuna.distributions.CategoricalDistribution([0.0, 1.0])
    for t, c in zip(trials[1:], (0.0, 1.0, 0.0)):
        t.params["cutmix_alpha"], t.distributions["cutmix_alpha"] = c, cutmix
    _study_of(out, trials)
    argv = [*TINY, "--n-trials", "4", "--out", str(out), "--print-best-config", str(best)]
    assert main(argv) == 0
    assert not [line for line in capfd.readouterr().out.splitlines() if "skipped" in line]
    for name in ("history.png", "importances.png", "alpha.png"):
        _image(out / name)
    assert (
        "**Best:** trial 2, val/acc=0.7000: alpha=0.2, cutmix_alpha=1"
        in (out / "summary.md").read_text()
    )

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas (simulated)")

    monkeypatch.setattr(optuna_plots, "plot_optimization_history", broken)
    for name in ("summary.md", "trials.csv", "history.png"):
        (out / name).unlink()
    best.unlink()
    assert main(argv) == 0
    printed = capfd.readouterr().out
    assert "history.png skipped: drawing it failed: RuntimeError: no canvas (simulated)" in printed
    assert (out / "summary.md").is_file() and (out / "trials.csv").is_file()
    assert best.read_text().startswith("# lightning-mixup tune: best trial #2")
    assert not (out / "history.png").exists()
    _image(out / "alpha.png")


def test_without_matplotlib_the_report_says_so_in_one_line(tmp_path, capfd, monkeypatch):
    out = tmp_path / "tune"
    _study_of(out, [_trial(0.5), _trial(0.6, 1.0)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*TINY, "--n-trials", "2", "--out", str(out)]) == 0
    note = 'plots skipped: matplotlib is not installed (pip install "lightning-mixup[tune]").'
    assert note in capfd.readouterr().out
    assert f"- {note}" in (out / "summary.md").read_text()
    assert not list(out.glob("*.png"))


# ---------------------------------------------------------------------------- bad input
def test_missing_or_broken_space_file_is_one_line(tmp_path, capfd):
    out = tmp_path / "tune"
    missing = tmp_path / "nope.yaml"
    assert main([*TINY, "--out", str(out), "--space", str(missing)]) == 2
    err = _one_line(capfd.readouterr().err)
    assert err == f"lightning-mixup tune: error: `--space` {str(missing)!r}: no such file."
    broken = _space(tmp_path, "alpha: {type: float, low: 0.1\ncutmix_alpha: 1\n")
    assert main([*TINY, "--out", str(out), "--space", broken]) == 2
    err = _one_line(capfd.readouterr().err)
    assert f"`--space` {broken!r} is not valid YAML" in err and "line 2" in err
    with pytest.raises(ValueError, match=r"`--space` '.*nope.yaml': no such file\."):
        load_space(missing)
    with pytest.raises(ValueError, match=r"is a folder, not a file"):
        load_space(tmp_path)
    assert not out.exists()


def test_out_under_a_regular_file_is_one_line(tmp_path, capfd):
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile / "tune", afile):
        assert main([*TINY, "--out", str(out)]) == 2
        err = _one_line(capfd.readouterr().err)
        assert err.startswith(f"lightning-mixup tune: error: `--out` {str(out)!r}: cannot create")
    best = afile / "best.yaml"
    argv = [*TINY, "--out", str(tmp_path / "t"), "--print-best-config", str(best)]
    assert main(argv) == 2
    err = _one_line(capfd.readouterr().err)
    assert err.startswith(f"lightning-mixup tune: error: `--print_best_config` {str(best)!r}")
    assert not (tmp_path / "t" / "trial_0").exists()  # refused before any training


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--grace", "-1"], r"`--grace` must be longer than `--heartbeat` \(60\), got -1\."),
        (["--grace", "60"], r"`--grace` must be longer than `--heartbeat` \(60\), got 60\."),
        (["--heartbeat", "0"], r"`--heartbeat` must be an integer >= 1, got 0\."),
        (["--n-trials", "0"], r"`--n_trials` must be an integer >= 1, got 0\."),
        (
            ["--direction", "up"],
            r"`--direction`: Expected a typing.Literal\['maximize', 'minimize'\]",
        ),
        (["--seeds", "x"], r"`--seeds`: Expected a <class 'int'>. Got value: x"),
        # As compare's: an empty list failed the baseline on a division by zero, -1 in Lightning.
        (["--seeds=[]"], r"`--seeds` must hold at least one seed, got \[\]\."),
        (["--seeds", "0", "-1"], r"`--seeds` must be an integer >= 0, got -1\."),
        (["--seeds", "1", "1"], r"`--seeds` lists 1 twice\."),
    ],
)
def test_bad_study_flags_are_named_before_the_storage_opens(tmp_path, capfd, extra, match):
    out = tmp_path / "tune"
    assert main([*TINY, "--out", str(out), *extra]) == 2
    err = _one_line(capfd.readouterr().err)
    assert re.search(match, err), err
    assert not out.exists()


@pytest.mark.slow
def test_failed_trial_is_one_line_with_its_traceback_in_a_file(tmp_path):
    # The baseline completes; the mixing trial fails in `fit` (MixupCallback's setup refuses a
    # layer the model does not have). Run as a user runs it, to see the terminal.
    out = tmp_path / "tune"
    space = _space(tmp_path, "mix_at: {type: categorical, choices: [backbone.nope]}\n")
    worker = _worker(out, 2, "--space", space)
    printed = worker.communicate(timeout=240)[0]
    assert worker.returncode == 1, printed
    log = out / "trial_1" / "error.log"
    line = _error_line(printed)
    assert line.startswith(
        "lightning-mixup tune: error: trial 1 failed: ValueError: `mix_at` names 'backbone.nope'"
    )
    assert line.endswith(f"; full traceback in {log}")
    text = log.read_text()
    assert text.startswith("Traceback (most recent call last):")
    assert "in bind\n" in text and text.rstrip().splitlines()[-1].startswith("ValueError: `mix_at`")
    trial = _load(out).get_trials()[1]
    assert trial.state.name == "FAIL" and trial.user_attrs["error"].startswith(
        "ValueError: `mix_at`"
    )
