"""``lightning-mixup compare`` on any LightningCLI config: options, arms, the study, the report."""

from __future__ import annotations

import csv
import datetime
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pd = pytest.importorskip("pandas")

import matplotlib.image  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import lightning_mixup.tune.compare as compare_module  # noqa: E402
from lightning_mixup import MixupCallback  # noqa: E402
from lightning_mixup.cli import console  # noqa: E402
from lightning_mixup.mixup_cli import main as cli_main  # noqa: E402
from lightning_mixup.tune import main_compare  # noqa: E402
from lightning_mixup.tune._options import _split  # noqa: E402
from lightning_mixup.tune._study import StudyOptions  # noqa: E402
from lightning_mixup.tune.compare import (  # noqa: E402
    ARMS,
    KEPT,
    CompareOptions,
    _Objective,
    load_arms,
    main,
    open_study,
    parse_options,
    plan,
    resolve,
)
from lightning_mixup.tune.compare_report import Grid, load_runs, summary_tables  # noqa: E402
from tests.cifar_files import checksum_lists, write_cifar10  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "compare_digits.yaml"
FOREIGN = Path(__file__).with_name("foreign.yaml")
#: The digits example, tiny: 2 epochs of 2 batches, a 4-channel CNN.
TINY = [
    f"--config={CONFIG}",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--model.init_args.backbone.init_args.width=4",
]
METRICS = ["test/acc", "test/nll", "test/ece", "test/conf_gap", "test/ood_auroc/noise"]
METRICS += [f"test/fgsm_acc@{e}" for e in ("0.02", "0.05", "0.1")]
FINISHED = (optuna.trial.TrialState.COMPLETE,)


@pytest.fixture(autouse=True)
def keep_threads():
    old = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == old  # main() restores what it changed


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def load(out: Path, name: str = "compare"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def runs_per_point(study, names: tuple[str, ...] = ("arm", "seed")) -> dict[tuple, list[int]]:
    """Trial numbers of the runs that really trained, per point (``names``)."""
    found: dict[tuple, list[int]] = {}
    for t in study.get_trials(states=FINISHED):
        if not t.user_attrs.get("duplicate_of"):
            found.setdefault(tuple(t.params[k] for k in names), []).append(t.number)
    return found


def worker(argv: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_mixup", "compare", *argv]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------- real grids
def test_tiny_grid_writes_csv_summary_and_plots_from_the_study(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "cutmix", "--grid", "data.label_noise=0.4", "--seeds", "0"]
    argv += ["--seed_keys", "data.seed", "--out", str(out), *TINY]
    assert console(["compare", *argv]) == 0

    columns, rows = read_rows(out / "results.csv")
    head = ["trial", "arm", "data.label_noise", "seed", "epochs", "best_epoch", "best:val/acc"]
    assert columns[:8] == [*head, "last:val/acc"] and columns[-1] == "train_seconds"
    assert set(columns[8:-1]) == {f"{w}:{m}" for w in ("best", "last") for m in METRICS}
    assert [(r["arm"], float(r["data.label_noise"]), int(r["seed"])) for r in rows] == [
        ("erm", 0.4, 0),
        ("cutmix", 0.4, 0),
    ]
    for r in rows:
        assert int(r["best_epoch"]) in (0, 1) and int(r["epochs"]) == 2
        for key in columns[6:-1]:
            value = float(r[key])
            assert (-1 <= value <= 1) if "conf_gap" in key else value >= 0, key
        assert float(r["best:test/acc"]) <= 1 and float(r["train_seconds"]) > 0

    # The rows are the study's records: one COMPLETE trial per run.
    study = load(out)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    by_arm = {t.params["arm"]: t for t in trials}
    for r in rows:
        run = by_arm[r["arm"]].user_attrs["run"]
        assert int(r["trial"]) == by_arm[r["arm"]].number
        assert run["best:test/acc"] == pytest.approx(float(r["best:test/acc"]), rel=1e-5)
        assert by_arm[r["arm"]].user_attrs["machine"].endswith("torch thread(s)")

    # Each run's config trains that run again: the arm's MixupCallback, its grid value and seed.
    cutmix = cli_main(
        ["--config", str(out / f"trial_{by_arm['cutmix'].number}" / "config.yaml")], run=False
    )
    mixers = [cb for cb in cutmix.trainer.callbacks if isinstance(cb, MixupCallback)]
    assert [(m.alpha, m.cutmix_alpha) for m in mixers] == [(0.0, 1.0)]
    assert cutmix.datamodule.label_noise == 0.4 and cutmix.config["seed_everything"] == 0

    summary = (out / "summary.md").read_text()
    assert "lightning-mixup compare --arms erm cutmix --grid data.label_noise=0.4" in summary
    assert "- Grid: 2 arms × data.label_noise (0.4) × seeds (0) = 2 runs" in summary
    assert "## The best checkpoint" in summary and "## The weights after the last epoch" in summary
    assert "| arm | data.label_noise | val/acc | " in summary
    assert "| `erm` | 0.4 |" in summary and "| `cutmix` | 0.4 |" in summary
    assert "- `cutmix`: MixupCallback(alpha=0.0, cutmix_alpha=1.0)" in summary
    assert "trials: complete 2" in summary and "runs finished**" not in summary
    for png in ("best.png", "last.png"):
        assert f"]({png})" in summary
        pixels = matplotlib.image.imread(out / png)
        assert pixels.ndim == 3 and pixels.shape[0] > 100
    printed = capsys.readouterr().out
    assert "run 2/2: " in printed and "2 of 2 runs finished" in printed

    # Rerunning the command trains nothing and reports the same rows.
    done = {t.number: t.datetime_complete for t in trials}
    assert main(argv) == 0
    assert {t.number: t.datetime_complete for t in load(out).get_trials()} == done
    assert read_rows(out / "results.csv")[1] == rows
    # Another config in the same study is refused before any training, naming the key.
    assert main([*argv, "--trainer.max_epochs=3"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"lightning-mixup compare: error: study 'compare' in sqlite:///{out / 'study.db'} was "
        "run with config key trainer.max_epochs 2, got 3, and has 2 finished or running runs; "
        "use another --out, --storage or --study_name."
    )
    assert len(load(out).get_trials()) == 2


@pytest.mark.slow
def test_a_config_of_a_module_this_package_does_not_ship(tmp_path):
    # The console script, on tests/tune/foreign.py's module: its own metric names, no
    # MixupCallback and no checkpoint monitor in the config.
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("lightning-mixup")
    argv = ["compare", "--config", str(FOREIGN), "--arms", "erm", "mixup", "--seeds", "0"]
    argv += ["--trainer.max_epochs=1", "--out", str(out)]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([script, *argv], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    columns, rows = read_rows(out / "results.csv")
    assert columns == [
        "trial", "arm", "seed", "epochs",
        "last:test/error", "last:test/loss", "last:test/margin", "train_seconds",
    ]  # fmt: skip
    assert [r["arm"] for r in rows] == ["erm", "mixup"]
    assert all(0 <= float(r["last:test/error"]) <= 1 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "| arm | test/error | test/loss | test/margin |" in summary
    assert "- `mixup`: MixupCallback()" in summary and "best checkpoint" not in summary
    assert (out / "last.png").is_file() and not (out / "best.png").exists()
    # The mixup arm mixed the module's own loss: its MixupCallback is in its config.
    mixup = next(r for r in rows if r["arm"] == "mixup")
    assert (
        "lightning_mixup.MixupCallback"
        in (out / f"trial_{mixup['trial']}" / "config.yaml").read_text()
    )


def test_time_budget_then_rerun_finishes_the_grid(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "mixup0.2", "--out", str(out), *TINY]
    # A budget already spent when the grid starts: no run starts, the report says so.
    assert main([*argv, "--max_minutes", "1e-9"]) == 0
    assert read_rows(out / "results.csv")[1] == []
    assert "**0 of 2 runs finished**" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert "(2 runs left: rerun the command to continue)" in printed
    assert "best.png skipped: no finished run has best test metrics." in printed
    assert not (out / "best.png").exists()

    assert main([*argv, "--max-minutes", "10"]) == 0  # the dashed spelling too
    trials = load(out).get_trials()
    assert sorted(runs_per_point(load(out))) == [("erm", 0), ("mixup0.2", 0)]
    assert len(trials) == 2 and "runs finished**" not in (out / "summary.md").read_text()
    assert main(argv) == 0  # nothing left: the trials are kept as they were
    assert [t.datetime_complete for t in load(out).get_trials()] == [
        t.datetime_complete for t in trials
    ]
    (out / "summary.md").unlink()
    assert main([*argv, "--report", "only"]) == 0  # the report again, nothing run
    assert "**0 of 2" not in (out / "summary.md").read_text() and len(load(out).get_trials()) == 2
    capsys.readouterr()
    # A study that is not there (a typo in --out) is named, not created empty and reported.
    typo = tmp_path / "otu"
    assert main(["--arms", "erm", "--out", str(typo), *TINY, "--report", "only"]) == 2
    assert "holds no study 'compare'; check `--out`" in capsys.readouterr().err
    assert not (typo / "summary.md").exists()


def test_a_failed_run_is_one_line_and_runs_again_with_the_next_command(
    tmp_path, monkeypatch, capfd
):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--seeds", "0", "1", "--out", str(out), *TINY]
    real = compare_module.run_one
    calls = []

    def flaky(plan, point, folder):
        calls.append(point["seed"])
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)\nsecond line")
        return real(plan, point, folder)

    monkeypatch.setattr(compare_module, "run_one", flaky)
    assert main(argv) == 1
    failed = [t for t in load(out).get_trials() if t.state.name == "FAIL"]
    assert [t.state.name for t in load(out).get_trials()] == ["COMPLETE", "FAIL"]
    log = out / f"trial_{failed[0].number}" / "error.log"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "failed with parameters" not in err  # Optuna's own log
    assert [line for line in err.splitlines() if "error" in line] == [
        f"lightning-mixup compare: error: trial {failed[0].number} failed: RuntimeError: out of "
        f"memory (simulated); full traceback in {log}"
    ]
    assert "Traceback" in log.read_text() and "second line" in log.read_text()
    assert failed[0].user_attrs["error"] == "RuntimeError: out of memory (simulated)"
    monkeypatch.setattr(compare_module, "run_one", real)
    assert main(argv) == 0
    study = load(out)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert {p: len(n) for p, n in runs_per_point(study).items()} == {("erm", 0): 1, ("erm", 1): 1}
    assert len(read_rows(out / "results.csv")[1]) == 2


def test_every_failed_point_is_queued_again_and_run_in_one_command(tmp_path):
    # Every point of a 3-run grid failed before (as after crashes): Optuna's grid sampler then
    # counts the grid as done and stops each optimize call after one trial; all three must run.
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--seeds", "0", "1", "2", "--out", str(out), *TINY]
    the_plan = plan(argv)
    out.mkdir()

    def crash(trial):
        for name, values in the_plan.grid.space.items():
            trial.suggest_categorical(name, values)
        raise RuntimeError("crashed (simulated)")

    open_study(the_plan).optimize(crash, n_trials=3, catch=(RuntimeError,))
    assert main(argv) == 0
    study = load(out)
    assert [t.state.name for t in study.get_trials()] == ["FAIL"] * 3 + ["COMPLETE"] * 3
    assert sorted(runs_per_point(study)) == [("erm", s) for s in (0, 1, 2)]


def test_a_second_trial_of_a_finished_point_steps_aside(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--out", str(out), *TINY]
    assert main(argv) == 0
    the_plan = plan(argv)
    study = open_study(the_plan)
    study.enqueue_trial({"arm": "erm", "seed": 0})
    study.optimize(_Objective(the_plan), n_trials=1)
    extra = study.get_trials()[-1]
    assert extra.state.name == "PRUNED" and extra.user_attrs["duplicate_of"] == 0
    assert "run" not in extra.user_attrs  # it did not train
    assert len(load_runs(study, the_plan.grid)) == 1


def test_a_study_with_no_finished_run_takes_the_corrected_settings(tmp_path, monkeypatch, capfd):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--out", str(out), *TINY]

    def crash(plan, point, folder):
        raise RuntimeError("crashed (simulated)")

    monkeypatch.setattr(compare_module, "run_one", crash)
    assert main([*argv, "--trainer.max_epochs=1"]) == 1
    assert [t.state.name for t in load(out).get_trials()] == ["FAIL"]
    monkeypatch.undo()
    capfd.readouterr()
    assert main(argv) == 0  # max_epochs 2 (TINY)
    assert (
        "study 'compare' finished no run with config key trainer.max_epochs 1; it now runs with "
        "config key trainer.max_epochs 2."
    ) in capfd.readouterr().out
    study = load(out)
    assert study.user_attrs["settings"]["config"]["trainer"]["max_epochs"] == 2
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE"]
    # A finished run now holds the settings: other ones are refused, an arm or a seed too.
    assert main([*argv, "--trainer.max_epochs=1"]) == 2
    assert (
        "was run with config key trainer.max_epochs 2, got 1, and has 1 " in capfd.readouterr().err
    )
    assert main([*argv, "--seeds", "1"]) == 2
    assert "was run with --seeds [0], got [1], and" in capfd.readouterr().err
    assert main([*argv, "--arms", "erm", "cutmix"]) == 2
    assert 'was run with --arms ["erm"], got ["erm", "cutmix"], and' in capfd.readouterr().err
    arms = tmp_path / "arms.yaml"
    arms.write_text("erm: {mixup: {alpha: 0.5}}\n")  # another `erm`
    assert main([*argv, "--arms_file", str(arms)]) == 2
    assert "was run with arm 'erm' mixup.alpha (none), got 0.5, and" in capfd.readouterr().err


@pytest.mark.slow
def test_two_workers_share_the_grid_and_run_each_point_once(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "cutmix", "--seeds", "0", "1", "2", "--out", str(out), *TINY]
    proc = worker([*argv, "--workers", "2"])
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    points = runs_per_point(load(out))
    assert len(points) == 6 and all(len(n) == 1 for n in points.values()), points
    assert len([line for line in log.splitlines() if line.startswith("run ")]) == 6
    assert len(read_rows(out / "results.csv")[1]) == 6
    assert "6 of 6 runs finished" in log


@pytest.mark.slow
def test_killed_worker_keeps_finished_runs_and_its_run_is_retried(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--seeds", *map(str, range(6)), "--out", str(out), *TINY]
    # Runs of a few seconds (all 19 training batches, 30 epochs), so the kill lands inside one.
    argv += ["--trainer.max_epochs=30", "--trainer.limit_train_batches=1.0"]
    argv += ["--heartbeat", "1", "--grace", "3"]
    first = worker([*argv, "--report", "no"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.1)
        assert first.poll() is None, "the worker ended before it could be killed"
        if not (out / "study.db").exists():
            continue
        try:
            trials = load(out).get_trials()
        except Exception:  # the study is being created
            continue
        # Kill during a run, 0.5 s or more after it started: Optuna writes a trial's first
        # heartbeat as it starts, and a trial killed before that write is never seen as stale.
        states = [t.state.name for t in trials]
        if "COMPLETE" in states and states[-1] == "RUNNING":
            age = datetime.datetime.now() - trials[-1].datetime_start
            if age.total_seconds() >= 0.5:
                break
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    study = load(out)
    kept = {t.number: t.datetime_complete for t in study.get_trials(states=FINISHED)}
    killed = [t.number for t in study.get_trials() if t.state.name == "RUNNING"]
    assert kept and len(killed) == 1, [t.state.name for t in study.get_trials()]

    time.sleep(4)  # longer than --grace: the killed run's heartbeat is stale
    second = worker(argv)
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log[-3000:]
    study = load(out)
    assert study.get_trials()[killed[0]].state.name == "FAIL"
    after = {t.number: t.datetime_complete for t in study.get_trials(states=FINISHED)}
    assert {n: after.get(n) for n in kept} == kept  # finished runs kept as they were
    points = runs_per_point(study)
    assert len(points) == 6 and all(len(n) == 1 for n in points.values()), points
    assert len(read_rows(out / "results.csv")[1]) == 6


@pytest.mark.slow
def test_the_cifar_example_config_runs_on_written_files(tmp_path, monkeypatch):
    written = write_cifar10(tmp_path / "c10")
    for name, value in checksum_lists(torchvision.datasets.CIFAR10, written).items():
        monkeypatch.setattr(torchvision.datasets.CIFAR10, name, value)
    out = tmp_path / "out"
    argv = ["--config", str(ROOT / "examples" / "cifar10.yaml"), "--arms", "erm", "mixup1.0"]
    argv += [f"--data.data_dir={written.root}", "--data.val_size=50", "--data.batch_size=8"]
    argv += ["--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    argv += ["--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]
    argv += ["--trainer.accelerator=cpu", "--out", str(out)]
    assert main(argv) == 0
    columns, rows = read_rows(out / "results.csv")
    assert [r["arm"] for r in rows] == ["erm", "mixup1.0"]
    assert {"best:val/acc", "best:test/acc", "last:test/acc"} <= set(columns)


# ---------------------------------------------------------------------------- the arms
def test_builtin_arms_resolve_against_the_configs_own_callback():
    given = {"alpha": 0.4, "ramp_epochs": 5, "stop_epoch": 35, "mix_at": ["backbone.layer1"]}
    given |= {"input_key": "image", "target_key": "label", "seed": 7}
    entry = {"class_path": "lightning_mixup.MixupCallback", "init_args": given}
    keys = {"input_key": "image", "target_key": "label"}
    assert resolve("erm", ARMS["erm"], entry, 30) is None
    assert resolve("mixup1.0", ARMS["mixup1.0"], entry, 30) == {**keys, "alpha": 1.0}
    # `mixup` is the config's own callback as written; the run's seed_everything seeds it.
    assert resolve("mixup", ARMS["mixup"], entry, 30) == {
        k: v for k, v in given.items() if k != "seed"
    }
    assert resolve("mixup", ARMS["mixup"], None, 30) == {}
    assert resolve("mixup_ramp", ARMS["mixup_ramp"], entry, 30)["ramp_epochs"] == 7
    assert resolve("mixup_ramp", ARMS["mixup_ramp"], None, 2)["ramp_epochs"] == 1
    assert resolve("manifold", ARMS["manifold"], entry, 30) == {
        **keys, "alpha": 1.0, "mix_at": ["backbone.layer1"],
    }  # fmt: skip
    assert resolve("mixup+TS", ARMS["mixup+TS"], entry, 30) == {**keys, "alpha": 1.0}
    assert ARMS["erm+TS"].callbacks == ({"class_path": "lightning_mixup.TemperatureScaling"},)
    for name, arm in ARMS.items():
        init_args = resolve(name, arm, entry, 30)
        if init_args is not None:
            MixupCallback(**init_args)
    assert ARMS["mixup_ramp"].mixup == {"alpha": 1.0, "ramp_epochs": "max_epochs // 4"}
    with pytest.raises(ValueError, match=r"arm 'manifold' mixes at hidden layers, which depend"):
        resolve("manifold", ARMS["manifold"], None, 30)
    with pytest.raises(ValueError, match=r"or define 'manifold' in `--arms_file`"):
        resolve("manifold", ARMS["manifold"], {"init_args": {"mix_at": "input"}}, 30)
    with pytest.raises(ValueError, match=r"quarter of `trainer.max_epochs`, got -1; set it"):
        resolve("mixup_ramp", ARMS["mixup_ramp"], None, -1)


def test_every_mixup_argument_is_kept_from_the_config_or_part_of_the_recipe():
    recipe = {
        "alpha", "cutmix_alpha", "switch_prob", "p", "mode", "label_smoothing", "ramp_start_epoch",
        "ramp_epochs", "ramp_shape", "ramp_target", "stop_epoch", "ramp_start_step", "ramp_steps",
        "stop_step", "seed", "mix_at", "keep_clean",
    }  # fmt: skip
    arguments = set(inspect.signature(MixupCallback).parameters)
    assert KEPT <= arguments and arguments - KEPT == recipe


def test_an_arms_file_adds_arms_and_replaces_builtin_ones(tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text(
        "manifold: {mixup: {alpha: 2.0, mix_at: [backbone.features.2]}}\n"
        "ts_only:\n  mixup: null\n  callbacks:\n    - class_path: lightning_mixup.TemperatureScaling\n"
    )
    assert set(load_arms(str(arms))) == {"manifold", "ts_only"}
    the_plan = plan(["--arms_file", str(arms), "--arms", "ts_only", "manifold", "erm", *TINY])
    assert the_plan.grid.arms == {
        "ts_only": "no MixupCallback + TemperatureScaling()",
        "manifold": "MixupCallback(alpha=2.0, mix_at=['backbone.features.2'])",
        "erm": "no MixupCallback",
    }
    out = tmp_path / "out"
    assert main(["--arms_file", str(arms), "--arms", "ts_only", "--out", str(out), *TINY]) == 0
    config = (out / "trial_0" / "config.yaml").read_text()
    assert "lightning_mixup.TemperatureScaling" in config and "MixupCallback" not in config


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"must map arm names to \{mixup: \{MixupCallback arguments\} or null, callbacks: "),
        ("a: 1", r"arm 'a': must be \{mixup: \{MixupCallback arguments\} or null, .*got 1\."),
        (
            "a: {mixup: {}, more: 1}",
            r"arm 'a': must be \{mixup: .*got \{'mixup': \{\}, 'more': 1\}",
        ),
        ("a: {mixup: 3}", r"arm 'a': must be \{mixup: .*got \{'mixup': 3\}\."),
        ("a: {mixup: null, callbacks: [x]}", r"arm 'a': must be \{mixup: .*'callbacks': \['x'\]\}"),
        ("a: {callbacks: []}", r"arm 'a': must be \{mixup: "),
        ("a: [", r"is not valid YAML: "),
    ],
)
def test_a_malformed_arms_file_is_one_line(tmp_path, text, match):
    path = tmp_path / "arms.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"`--arms_file` '{path}'.*{match}"):
        load_arms(str(path))


@pytest.mark.parametrize(
    ("arm", "match"),
    [
        ("{mixup: {alpha: -1}}", r"arm 'a': MixupCallback refused its arguments: `alpha` must be"),
        (
            "{mixup: {nope: 1}}",
            r"arm 'a': MixupCallback refused .*unexpected keyword argument 'nope'",
        ),
        (
            "{mixup: null, callbacks: [{class_path: nowhere.Nothing}]}",
            r"arm 'a': callback 'nowhere.Nothing' cannot be built: ",
        ),
    ],
)
def test_an_arm_that_its_callbacks_refuse_stops_the_command_before_the_study(tmp_path, arm, match):
    path = tmp_path / "arms.yaml"
    path.write_text(f"a: {arm}\n")
    with pytest.raises(ValueError, match=match):
        plan(["--arms_file", str(path), "--arms", "a", *TINY])


# ---------------------------------------------------------------------------- options
def test_compare_flags_go_to_jsonargparse_and_the_rest_to_lightningcli():
    kinds = {"seeds": "list", "arms": "list", "study_name": "value", "workers": "value"}
    kinds |= {"grid": "list", "prune": "bool"}
    argv = ["--config", "c.yaml", "--seeds", "0", "1", "--trainer.max_epochs", "3", "--study-name"]
    argv += ["s", "--arms=[erm]", "--grid", "data.x=1,2", "model.y=a", "--workers=2", "--data.z=1"]
    mine, rest = _split([*argv, "--no-prune", "--no-such"], kinds)
    assert mine == [
        '--seeds=["0", "1"]', "--study_name=s", "--arms=[erm]",
        '--grid=["data.x=1,2", "model.y=a"]', "--workers=2", "--prune=false",
    ]  # fmt: skip
    assert rest == ["--config", "c.yaml", "--trainer.max_epochs", "3", "--data.z=1", "--no-such"]


def test_defaults_are_written_once_in_the_options_dataclass():
    options, passthrough = parse_options(["--config", "c.yaml"])
    assert options == CompareOptions() and passthrough == ["--config", "c.yaml"]
    assert options.arms == ["erm", "mixup"] and options.seeds == [0] and options.test is None
    assert options.study_name == "compare" and options.report == "yes" and options.workers == 1
    study = StudyOptions()
    assert (options.heartbeat, options.grace, options.storage) == (study.heartbeat, None, None)
    assert options.storage_url == f"sqlite:///{Path('runs/compare') / 'study.db'}"
    grid = plan(["--grid", "data.label_noise=0,0.4", "data.batch_size=32", *TINY]).grid
    assert grid.grid == {"data.label_noise": [0, 0.4], "data.batch_size": [32]}
    assert grid.tests == ["last", "best"] and grid.monitor == "val/acc"
    # The arms as they run: their own arguments (a default too), the config's that differ.
    assert plan(["--arms", "mixup0.2", "mixup", *TINY]).grid.arms == {
        "mixup0.2": "MixupCallback(alpha=0.2)",
        "mixup": "MixupCallback(alpha=1.0, mix_at=['backbone.features.2', 'backbone.features.6'])",
    }
    assert plan(["--test", "last", *TINY]).grid.tests == ["last"]
    assert plan(["--config", str(FOREIGN)]).grid.tests == ["last"]  # no checkpoint monitor


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["--arms", "erm", "mixup3"],
            r"Unknown arm 'mixup3' in `--arms`; choose from erm, mixup, ",
        ),
        (["--arms", "erm", "erm"], r"`--arms` lists 'erm' twice"),
        (["--seeds", "0", "-1"], r"`--seeds` must be an integer >= 0, got -1"),
        (["--seeds", "1", "1"], r"`--seeds` lists 1 twice"),
        (["--seeds", "a"], r"`--seeds`: Expected a <class 'int'>. Got value: a"),
        (["--workers", "0"], r"`--workers` must be an integer >= 1, got 0"),
        (["--threads", "0"], r"`--threads` must be an integer >= 1, got 0"),
        (["--max_minutes", "0"], r"`--max_minutes` must be a positive number or None, got 0.0"),
        (["--heartbeat", "0"], r"`--heartbeat` must be an integer >= 1, got 0"),
        (
            ["--heartbeat", "5", "--grace", "5"],
            r"`--grace` must be longer than `--heartbeat` \(5\)",
        ),
        (["--report", "maybe"], r"`--report`: Expected a typing.Literal\['yes', 'no', 'only'\]"),
        (["--test", "worst"], r"`--test`: "),
        (["--grid", "data.label_noise"], r"`--grid` items are KEY=V1,V2,... with KEY a config key"),
        (["--grid", "a=1", "a=2"], r"`--grid` names 'a' twice"),
        (["--grid", "data.label_noise=0,0"], r"`--grid data.label_noise` lists 0 twice"),
        (["--grid", "seed_everything=1,2"], r"`--grid` 'seed_everything' is set for each run by"),
        (["--grid", "data.x=[0"], r"`--grid` 'data.x=\[0': the values are not valid YAML: "),
        (["--seed_keys", "seed_everything"], r"`--seed_keys` need not name seed_everything"),
        # Checked by building the config once per grid value, before the study is stamped.
        (
            ["--grid", "data.label_noise=0,2"],
            r"`--grid` data.label_noise=2: data \(DigitsDataModule\): `label_noise` must be",
        ),
        (["--trainer.max_epochs=x"], r"^the config: `--trainer.max_epochs`: Does not validate"),
        (["--trainer.accelerator=tpuu"], r"^the config cannot be built: ValueError: You selected"),
        (["--arms", "mixup_ramp", "--trainer.max_epochs=-1"], r"arm 'mixup_ramp' ramps over"),
    ],
)
def test_bad_arguments_are_one_line_before_the_study(argv, match):
    with pytest.raises(ValueError, match=match):
        plan([*TINY, *argv])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--arms", "manifold"], r"arm 'manifold' mixes at hidden layers, which depend on your"),
        (["--test", "best"], r"`--test best` needs a ModelCheckpoint with a `monitor` in the"),
    ],
)
def test_what_the_config_does_not_give_is_refused(argv, match):
    with pytest.raises(ValueError, match=match):
        plan(["--config", str(FOREIGN), *argv])


def test_main_reports_a_bad_argument_in_one_line_and_stamps_nothing(tmp_path, capfd):
    out = tmp_path / "o"
    assert main(["--grid", "data.label_noise=2", "--out", str(out), *TINY]) == 2
    assert one_line(capfd.readouterr().err) == (
        "lightning-mixup compare: error: `--grid` data.label_noise=2: data (DigitsDataModule): "
        "`label_noise` must be a number in [0, 1), got 2.0."
    )
    assert not out.exists()  # no study, no settings stamped
    bad = "postgresql://nobody@127.0.0.1:1/none"
    assert main(["--storage", bad, "--out", str(tmp_path / "p"), *TINY]) == 2
    assert f"lightning-mixup compare: error: cannot open storage {bad!r}" in capfd.readouterr().err


def test_out_under_a_regular_file_is_one_line(tmp_path, capfd):
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile / "out", afile):
        assert main(["--out", str(out), *TINY]) == 2
        err = one_line(capfd.readouterr().err)
        assert err.startswith(
            f"lightning-mixup compare: error: `--out` {str(out)!r}: cannot create"
        )


def test_missing_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pandas", None)
    assert main_compare(["--arms", "erm"]) == 2
    assert capsys.readouterr().err.strip() == (
        'lightning-mixup compare: error: pandas is not installed; pip install "lightning-mixup[tune]"'
    )


def test_help_from_the_console_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        console(["compare", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--arms_file" in out and "--workers" in out and "--grid" in out
    assert "mixup_ramp: MixupCallback(alpha=1.0, ramp_epochs=max_epochs // 4)" in out
    assert "go to LightningCLI" in out


# ---------------------------------------------------------------------------- the report
def test_summary_cells_are_mean_and_sample_std_over_seeds():
    grid = Grid(
        {"erm": "", "mixup1.0": ""}, {"data.label_noise": [0.0, 0.4]}, [0, 1], ["best"], "val/acc"
    )
    rows = pd.DataFrame(
        [
            {
                "arm": "erm",
                "data.label_noise": 0.0,
                "seed": 0,
                "best:test/acc": 0.9,
                "best:test/x": 2.0,
            },
            {
                "arm": "erm",
                "data.label_noise": 0.0,
                "seed": 1,
                "best:test/acc": 0.8,
                "best:test/x": 4.0,
            },
            {"arm": "mixup1.0", "data.label_noise": 0.0, "seed": 0, "best:test/acc": 0.95},
            {"arm": "erm", "data.label_noise": 0.4, "seed": 1, "best:test/acc": 0.5, "last:y": 1.0},
        ]
    )
    lines = summary_tables(rows, grid)["best"].splitlines()
    assert lines[0] == "| arm | data.label_noise | test/acc | test/x |"
    # (0.9, 0.8): mean 0.85, sample std 0.0707; fewer seeds than asked say how many.
    assert lines[2:] == [
        "| `erm` | 0.0 | 0.850 ± 0.071 | 3.000 ± 1.414 |",
        "| `mixup1.0` | 0.0 | 0.950 (n=1) | - |",
        "| `erm` | 0.4 | 0.500 (n=1) | - |",
    ]


def test_a_grid_value_of_null_keeps_its_runs_in_the_report_and_its_order():
    grid = Grid({"erm": ""}, {"model.x": [None, 1]}, [0, 1], ["last"], None)
    space = {
        name: optuna.distributions.CategoricalDistribution(v) for name, v in grid.space.items()
    }
    study = optuna.create_study()
    for x, seed, acc in ((1, 1, 0.8), (None, 1, 0.7), (1, 0, 0.9), (None, 0, 0.5)):
        point = {"arm": "erm", "model.x": x, "seed": seed}
        run = {"epochs": 1, "last:test/acc": acc}
        study.add_trial(
            optuna.trial.create_trial(
                params=point, distributions=space, value=1.0, user_attrs={"run": run}
            )
        )
    runs = load_runs(study, grid)
    # Seeds outermost, then the grid values in their order (null first), as for any value.
    assert list(runs["trial"]) == [3, 2, 1, 0]
    assert summary_tables(runs, grid)["last"].splitlines()[2:] == [
        "| `erm` | None | 0.600 ± 0.141 |",
        "| `erm` | 1 | 0.850 ± 0.071 |",
    ]


def test_a_password_in_the_storage_urls_query_is_hidden_too():
    from lightning_mixup.tune._study import TuneError, hide_password, open_storage

    url = "postgresql://mixup@127.0.0.1:1/study?password=secret&sslmode=disable"
    for given in (url, f"--storage={url}"):
        assert "secret" not in hide_password(given)
        assert "password=***" in hide_password(given) and "sslmode=disable" in hide_password(given)
    with pytest.raises(TuneError, match=r"cannot open storage '[^']*password=\*\*\*") as err:
        open_storage(url, 60, None)
    assert "secret" not in str(err.value)


def test_grid_values_are_yaml_and_a_date_stays_the_text_written():
    from lightning_mixup.tune.compare import _grid

    text = 'data.x=0,0.4,true,null,"a,b",a.b,[1, 2],2024-01-01,{day: 2024-01-02}'
    assert _grid([text], []) == {
        # LightningCLI reads a date as a string too; lists and mappings go on as JSON text.
        "data.x": [
            0,
            0.4,
            True,
            None,
            "a,b",
            "a.b",
            "[1, 2]",
            "2024-01-01",
            '{"day": "2024-01-02"}',
        ]
    }
