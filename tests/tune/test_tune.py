"""``lightning-mixup tune``: real Optuna studies on sqlite over the digits example, kept tiny."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

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
    assert cli_main(["tune", *argv]) == 0
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
    from lightning_mixup.tune.runner import open_storage

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


def test_a_refused_combination_fails_its_trial_and_the_study_goes_on(tmp_path, capsys):
    out = tmp_path / "tune"
    # alpha=0 without CutMix is refused by MixupCallback; alpha=1 is fine.
    space = _space(
        tmp_path,
        "alpha: {type: categorical, choices: [0.0, 1.0]}\n"
        "cutmix_alpha: {type: categorical, choices: [0.0]}\n",
    )
    argv = [*TINY, "--out", str(out), "--space", space, "--n-trials", "3", "--sampler-seed", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
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
    err = capsys.readouterr().err
    assert "MixupCallback refused 5 trials in a row, the last with:" in err
    assert "Narrow `--space` to valid combinations." in err


def test_monitor_never_logged_lists_logged_names(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main([*TINY, "--out", str(out), "--monitor", "val/accuracy", "--n-trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "`--monitor` 'val/accuracy' is not logged by the model; it logs" in err
    assert "val/acc" in err and "val/nll" in err
    assert sorted(p.name for p in out.glob("trial_*")) == ["trial_0"]  # stopped after one epoch


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
    from lightning_mixup.tune.runner import _config_with

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
