"""``lightning-mixup compare``: argument checks, the study behind the grid, the report, real runs."""

from __future__ import annotations

import csv
import datetime
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
from lightning_mixup.cli import main as cli_main  # noqa: E402
from lightning_mixup.tune import main_compare  # noqa: E402
from lightning_mixup.tune.compare import (  # noqa: E402
    ARMS,
    CompareConfig,
    _Objective,
    build_config,
    main,
    open_study,
)
from lightning_mixup.tune.compare_report import load_runs, summary_table  # noqa: E402
from tests.cifar_files import checksum_lists, write_cifar10  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--seeds", "0",
    "--epochs", "2",
    "--limit-train-batches", "2",
    "--limit-val-batches", "1",
    "--limit-test-batches", "1",
    "--width", "4",
]  # fmt: skip
PNGS = ("accuracy_vs_noise.png", "fgsm_vs_eps.png", "reliability.png")
EPS = ("0.02", "0.05", "0.1")
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


def runs_per_point(study) -> dict[tuple, list[int]]:
    """Trial numbers of the runs that really trained, per (arm, noise, seed)."""
    found: dict[tuple, list[int]] = {}
    for t in study.get_trials(states=FINISHED):
        if not t.user_attrs.get("duplicate_of"):
            point = (t.params["arm"], t.params["noise"], t.params["seed"])
            found.setdefault(point, []).append(t.number)
    return found


def worker(argv: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_mixup", "compare", *argv]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


# ---------------------------------------------------------------------------- real grids
def test_tiny_grid_writes_csv_summary_and_plots_from_the_study(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "cutmix", "--noise", "0.4", "--out", str(out), *TINY]
    assert cli_main(["compare", *argv]) == 0

    columns, rows = read_rows(out / "results.csv")
    per = ["acc", "nll", "ece", "conf_gap", *(f"fgsm@{e}" for e in EPS), "ood_noise"]
    assert columns == [
        "arm", "noise", "seed", "epochs", "best_epoch", "best_val_acc", "last_val_acc",
        *(f"best_{c}" for c in per), *(f"last_{c}" for c in per), "train_seconds",
    ]  # fmt: skip
    assert [(r["arm"], float(r["noise"]), int(r["seed"])) for r in rows] == [
        ("erm", 0.4, 0),
        ("cutmix", 0.4, 0),
    ]
    for r in rows:
        assert int(r["best_epoch"]) in (0, 1) and int(r["epochs"]) == 2
        for key in [f"best_{c}" for c in per] + [f"last_{c}" for c in per]:
            value = float(r[key])
            assert (-1 <= value <= 1) if "conf_gap" in key else value >= 0
        assert 0 <= float(r["best_acc"]) <= 1 and 0 <= float(r["last_val_acc"]) <= 1

    # The rows are the study's records: one COMPLETE trial per run, value = best val/acc.
    study = load(out)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    by_arm = {t.params["arm"]: t for t in trials}
    for r in rows:
        t = by_arm[r["arm"]]
        assert t.value == pytest.approx(float(r["best_val_acc"]), rel=1e-5)
        run = t.user_attrs["run"]
        assert run["best_acc"] == pytest.approx(float(r["best_acc"]), rel=1e-5)
        assert len(run["confidences"]) == len(run["correct"]) > 0

    summary = (out / "summary.md").read_text()
    assert "lightning-mixup compare --arms erm cutmix --noise 0.4" in summary
    assert "| arm | noise | acc best (%) | acc last (%) | NLL | ECE | conf gap |" in summary
    assert "| `erm` | 40% |" in summary and "| `cutmix` | 40% |" in summary
    assert "MixupCallback(alpha=0.0, cutmix_alpha=1.0)" in summary
    assert "trials: complete 2" in summary and "runs finished**" not in summary
    for png in PNGS:
        assert f"]({png})" in summary
        pixels = matplotlib.image.imread(out / png)
        assert pixels.ndim == 3 and pixels.shape[0] > 100
        assert (out / png).stat().st_size < 300_000
    printed = capsys.readouterr().out
    assert printed.count("run ") >= 2 and "run 2/2: " in printed
    assert "| `cutmix` | 40% |" in printed and "2 of 2 runs finished" in printed

    # Rerunning the command trains nothing and reports the same rows.
    done = {t.number: t.datetime_complete for t in trials}
    assert main(argv) == 0
    assert {t.number: t.datetime_complete for t in load(out).get_trials()} == done
    assert read_rows(out / "results.csv")[1] == rows
    # Another grid in the same study is refused before any training, naming the flag.
    assert main([*argv, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "lightning-mixup compare: error: study 'compare'" in err
    assert "was run with --epochs 2, got 3; use another --out" in err
    assert len(load(out).get_trials()) == 2


def test_time_budget_then_rerun_finishes_the_grid(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "mixup0.2", "--noise", "0", "--out", str(out), *TINY]
    # A budget already spent when the grid starts: no run starts, the report says so.
    assert main([*argv, "--max-minutes", "1e-9"]) == 0
    assert read_rows(out / "results.csv")[1] == []
    assert "**0 of 2 runs finished**" in (out / "summary.md").read_text()
    assert "(2 runs left: rerun the command to continue)" in capsys.readouterr().out
    assert not (out / "reliability.png").exists()

    assert main([*argv, "--max-minutes", "10"]) == 0
    trials = load(out).get_trials()
    assert sorted(runs_per_point(load(out))) == [("erm", 0.0, 0), ("mixup0.2", 0.0, 0)]
    assert len(trials) == 2 and "runs finished**" not in (out / "summary.md").read_text()
    assert main(argv) == 0  # nothing left: the trials are kept as they were
    assert [t.datetime_complete for t in load(out).get_trials()] == [
        t.datetime_complete for t in trials
    ]


def test_a_failed_run_is_run_again_by_the_next_command(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--noise", "0", "--seeds", "0", "1", "--out", str(out), *TINY[2:]]
    real = compare_module.run_one
    calls = []

    def flaky(cfg, arm, noise, seed):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(cfg, arm, noise, seed)

    monkeypatch.setattr(compare_module, "run_one", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        main(argv)
    states = [t.state.name for t in load(out).get_trials()]
    assert states == ["COMPLETE", "FAIL"]
    monkeypatch.setattr(compare_module, "run_one", real)
    assert main(argv) == 0
    study = load(out)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert {p: len(n) for p, n in runs_per_point(study).items()} == {
        ("erm", 0.0, 0): 1,
        ("erm", 0.0, 1): 1,
    }
    assert len(read_rows(out / "results.csv")[1]) == 2


def test_every_failed_point_is_queued_again_and_run_in_one_command(tmp_path):
    # Every point of a 3-run grid failed before (as after crashes): Optuna's grid sampler then
    # counts the grid as done and stops each optimize call after one trial; all three must run.
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--noise", "0", "--seeds", "0", "1", "2", "--out", str(out)]
    argv += TINY[2:]
    cfg = build_config(argv)
    out.mkdir()

    def crash(trial):
        for name, values in (("arm", cfg.arms), ("noise", cfg.noise), ("seed", cfg.seeds)):
            trial.suggest_categorical(name, values)
        raise RuntimeError("crashed (simulated)")

    open_study(cfg).optimize(crash, n_trials=3, catch=(RuntimeError,))
    assert main(argv) == 0
    study = load(out)
    assert [t.state.name for t in study.get_trials()] == ["FAIL"] * 3 + ["COMPLETE"] * 3
    assert sorted(runs_per_point(study)) == [("erm", 0.0, s) for s in (0, 1, 2)]


def test_a_second_trial_of_a_finished_point_steps_aside(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--noise", "0", "--out", str(out), *TINY]
    assert main(argv) == 0
    cfg = build_config(argv)
    study = open_study(cfg)
    study.enqueue_trial({"arm": "erm", "noise": 0.0, "seed": 0})
    study.optimize(_Objective(cfg), n_trials=1)
    extra = study.get_trials()[-1]
    assert extra.state.name == "PRUNED" and extra.user_attrs["duplicate_of"] == 0
    assert "run" not in extra.user_attrs  # it did not train
    assert len(load_runs(study, cfg)) == 1


@pytest.mark.slow
def test_two_workers_share_the_grid_and_run_each_point_once(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "cutmix", "--noise", "0", "--seeds", "0", "1", "2"]
    argv += ["--out", str(out), *TINY[2:], "--workers", "2"]
    proc = worker(argv)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-3000:]
    study = load(out)
    points = runs_per_point(study)
    assert len(points) == 6 and all(len(n) == 1 for n in points.values()), points
    assert len([line for line in log.splitlines() if line.startswith("run ")]) == 6
    assert len(read_rows(out / "results.csv")[1]) == 6
    assert "6 of 6 runs finished" in log


@pytest.mark.slow
def test_killed_worker_keeps_finished_runs_and_its_run_is_retried(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--noise", "0", "--seeds", *map(str, range(6)), "--out", str(out)]
    # Runs of about 2 s (all 19 training batches, 30 epochs), so the kill lands inside one.
    argv += [*TINY[2:], "--epochs", "30", "--limit-train-batches", "1.0"]
    argv += ["--heartbeat", "1", "--grace", "3"]
    first = worker([*argv, "--no-report"])
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


def test_cifar_grid_runs_on_written_files(tmp_path, monkeypatch):
    written = write_cifar10(tmp_path / "c10")
    for name, value in checksum_lists(torchvision.datasets.CIFAR10, written).items():
        monkeypatch.setattr(torchvision.datasets.CIFAR10, name, value)
    out = tmp_path / "out"
    args = ["--dataset", "cifar10", "--data-dir", str(written.root), "--val-size", "50"]
    args += ["--batch-size", "8", "--num-workers", "0", "--arms", "mixup1.0", "--noise", "0.2"]
    args += ["--eps", "0.03", "--pgd-steps", "1"]
    assert main([*args, "--out", str(out), *TINY, "--epochs", "1"]) == 0
    columns, rows = read_rows(out / "results.csv")
    assert len(rows) == 1 and rows[0]["arm"] == "mixup1.0"
    assert {"best_fgsm@0.03", "best_pgd@0.03", "last_pgd@0.03"} <= set(columns)
    assert "PGD-1 ε=0.03 (%)" in (out / "summary.md").read_text()
    assert "PreActResNet18" in (out / "summary.md").read_text()


def test_manifold_and_calibration_arms_with_held_out_classes(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "manifold", "regmixup", "erm+TS", "--noise", "0"]
    argv += ["--classes", "0", "1", "2", "3", "4"]
    assert main([*argv, "--out", str(out), *TINY]) == 0
    columns, rows = read_rows(out / "results.csv")
    assert [r["arm"] for r in rows] == ["manifold", "regmixup", "erm+TS"]
    assert {"best_ood_unseen_classes", "best_ood_noise", "last_ood_noise"} <= set(columns)
    assert all(0 <= float(r["best_ood_unseen_classes"]) <= 1 for r in rows)
    summary = (out / "summary.md").read_text()
    want = "MixupCallback(alpha=1.0, mix_at=['backbone.features.2', 'backbone.features.6'])"
    assert want in summary
    assert "- `erm+TS`: no mixing + TemperatureScaling()" in summary
    assert "- `regmixup`: MixupCallback(alpha=10.0, keep_clean=True)" in summary
    assert "OOD AUROC unseen classes | OOD AUROC noise |" in summary
    with pytest.raises(ValueError, match="`--classes` works with `--dataset digits` only"):
        build_config(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--classes", "0", "1"])


# ---------------------------------------------------------------------------- configuration
def test_defaults_are_the_documented_grid():
    cfg = build_config([])
    assert cfg.arms == [
        "erm", "mixup0.2", "mixup1.0", "cutmix", "mixup_ramp", "manifold", "regmixup", "mixup+TS",
        "erm+TS",
    ]  # fmt: skip
    assert cfg.noise == [0.0, 0.4] and cfg.seeds == [0, 1, 2]
    assert len(cfg.points) == 54 and len(set(cfg.points)) == 54
    assert cfg.eps == [0.02, 0.05, 0.1] and cfg.out == Path("runs/compare")
    assert cfg.resolved_batch_size == 64 and cfg.resolved_lr == 0.05 and cfg.threads == 1
    assert cfg.storage_url == f"sqlite:///{Path('runs/compare') / 'study.db'}"
    assert cfg.workers == 1 and cfg.study_name == "compare"
    # Where and how it runs is not part of what the runs compute.
    assert build_config(["--workers", "2", "--out", "x", "--threads", "2"]).settings == cfg.settings


def test_every_arm_builds_a_valid_callback():
    cfg = CompareConfig(epochs=30)
    assert cfg.arm_kwargs("erm") is None
    for arm in ARMS:
        kwargs = cfg.arm_kwargs(arm)
        if kwargs is not None:
            MixupCallback(**kwargs)
    assert cfg.arm_kwargs("mixup_ramp") == {"alpha": 1.0, "ramp_epochs": 7}
    assert CompareConfig(epochs=2).arm_kwargs("mixup_ramp")["ramp_epochs"] == 1
    assert ARMS["mixup_ramp"]["ramp_epochs"] is None  # the table itself is not modified
    assert cfg.arm_kwargs("manifold")["mix_at"] == ["backbone.features.2", "backbone.features.6"]
    assert CompareConfig(dataset="cifar10").arm_kwargs("manifold")["mix_at"] == [
        "backbone.layer1",
        "backbone.layer2",
    ]
    assert ARMS["manifold"]["mix_at"] is None


def test_limits_follow_lightnings_int_count_float_fraction_rule():
    cfg = build_config(["--limit-train-batches", "2", "--limit-val-batches", "0.5"])
    assert cfg.limit_train_batches == 2 and isinstance(cfg.limit_train_batches, int)
    assert cfg.limit_val_batches == 0.5 and isinstance(cfg.limit_val_batches, float)
    assert build_config(["--limit-test-batches", "1.0"]).limit_test_batches == 1.0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--arms", "erm", "mixup3"], r"Unknown arm 'mixup3' in `--arms`; choose from erm, "),
        (["--arms", "erm", "erm"], r"`--arms` lists 'erm' twice"),
        (["--noise", "0", "0"], r"`--noise` lists 0.0 twice"),
        (["--noise", "1.0"], r"`--noise` values must be in \[0, 1\), got 1.0"),
        (["--noise", "-0.1"], r"`--noise` values must be in \[0, 1\), got -0.1"),
        (["--seeds", "0", "-1"], r"`--seeds` must be non-negative integers, got -1"),
        (["--seeds", "1", "1"], r"`--seeds` lists 1 twice"),
        (["--eps", "-0.05"], r"`--eps` values must be non-negative numbers .*got -0.05"),
        (["--eps", "0.1", "0.10"], r"`--eps` lists '0.1' twice"),
        (["--epochs", "0"], r"`--epochs` must be an integer >= 1, got 0"),
        (["--width", "0"], r"`--width` must be an integer >= 1, got 0"),
        (["--pgd-steps", "-1"], r"`--pgd-steps` must be an integer >= 0, got -1"),
        (["--threads", "-2"], r"`--threads` must be an integer >= 0, got -2"),
        (["--val-size", "0"], r"`--val-size` must be an integer >= 1, got 0"),
        (["--batch-size", "0"], r"`--batch-size` must be a positive number, got 0"),
        (["--lr", "-1"], r"`--lr` must be a positive number, got -1.0"),
        (["--max-minutes", "0"], r"`--max-minutes` must be a positive number, got 0.0"),
        (["--limit-train-batches", "0"], r"`--limit-train-batches` must be a positive number"),
        (["--num-workers", "-1"], r"`--num-workers` must be an integer >= 0, got -1"),
        (["--dataset", "mnist"], r"`--dataset` must be one of digits, cifar10, cifar100, got"),
        (["--dataset", "cifar100"], r"`--dataset cifar100` needs `--data-dir`"),
        (["--workers", "0"], r"`--workers` must be an integer >= 1, got 0"),
        (["--heartbeat", "0"], r"`--heartbeat` must be an integer >= 1, got 0"),
        (
            ["--heartbeat", "5", "--grace", "5"],
            r"`--grace` must be longer than `--heartbeat` \(5\)",
        ),
        (["--report-only", "--no-report"], r"`--report-only` and `--no-report` together"),
        (["--grace", "-1"], r"`--grace` must be longer than `--heartbeat` \(60\), got -1\."),
        # Checked by building what every run builds, before the study is stamped with them.
        (["--classes", "11"], r"`--classes` must hold digits, integers in 0..9, got 11 in \[11\]"),
        (["--classes", "3"], r"`--classes` must hold at least 2 digits, got \[3\]"),
        (["--accelerator", "tpuu"], r"`--accelerator` 'tpuu' cannot be used: "),
        (
            ["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"],
            r"`--data-dir` '/nonexistent/cifar' is not a folder",
        ),
    ],
)
def test_bad_arguments_are_rejected(argv, match):
    with pytest.raises(ValueError, match=match):
        build_config(argv)


def test_main_reports_a_bad_argument_and_returns_2(tmp_path, capsys):
    assert main(["--arms", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "lightning-mixup compare: error: Unknown arm 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    bad = "postgresql://nobody@127.0.0.1:1/none"
    assert main(["--storage", bad, "--out", str(tmp_path / "p")]) == 2
    assert f"lightning-mixup compare: error: cannot open storage {bad!r}" in capsys.readouterr().err


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_bad_classes_stamp_nothing_so_the_corrected_command_runs(tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--noise", "0", "--out", str(out), *TINY]
    assert main([*argv, "--classes", "11"]) == 2
    assert _one_line(capfd.readouterr().err) == (
        "lightning-mixup compare: error: `--classes` must hold digits, integers in 0..9, got 11 "
        "in [11]."
    )
    assert not out.exists()  # no study, no settings stamped
    assert main([*argv, "--classes", "0", "1"]) == 0
    assert load(out).user_attrs["settings"]["classes"] == [0, 1]
    assert len(read_rows(out / "results.csv")[1]) == 1


def test_out_under_a_regular_file_is_one_line(tmp_path, capfd):
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile / "out", afile):
        assert main(["--arms", "erm", "--out", str(out)]) == 2
        err = _one_line(capfd.readouterr().err)
        assert err.startswith(
            f"lightning-mixup compare: error: `--out` {str(out)!r}: cannot create"
        )


def test_a_study_with_no_finished_run_takes_the_corrected_settings(tmp_path, monkeypatch, capfd):
    out = tmp_path / "out"
    argv = ["--arms", "erm", "--noise", "0", "--out", str(out), *TINY]

    def crash(cfg, arm, noise, seed):
        raise RuntimeError("crashed (simulated)")

    monkeypatch.setattr(compare_module, "run_one", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        main([*argv, "--epochs", "1"])
    assert [t.state.name for t in load(out).get_trials()] == ["FAIL"]
    monkeypatch.undo()
    capfd.readouterr()
    assert main(argv) == 0  # --epochs 2 (TINY)
    assert (
        "study 'compare' finished no run with --epochs 1; it now runs with --epochs 2."
    ) in capfd.readouterr().out
    study = load(out)
    assert study.user_attrs["settings"]["epochs"] == 2
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE"]
    assert read_rows(out / "results.csv")[1][0]["epochs"] == "2"
    # A finished run now holds the settings: other ones are refused.
    assert main([*argv, "--epochs", "1"]) == 2
    assert "was run with --epochs 2, got 1; use another --out" in capfd.readouterr().err


def test_unparsable_values_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        build_config(["--limit-train-batches", "many"])
    assert "expected a batch count (e.g. 4) or a fraction (e.g. 0.5), got 'many'" in (
        capsys.readouterr().err
    )


def test_missing_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pandas", None)
    assert main_compare(["--arms", "erm"]) == 2
    assert capsys.readouterr().err.strip() == (
        'lightning-mixup compare: error: pandas is not installed; pip install "lightning-mixup[tune]"'
    )


def test_help_from_the_console_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-minutes" in out and "mixup_ramp" in out and "--workers" in out


# ---------------------------------------------------------------------------- the report
def test_summary_cells_are_mean_and_sample_std_over_seeds():
    cfg = CompareConfig(arms=["erm", "mixup1.0"], noise=[0.0], eps=[0.1])
    base = {"noise": 0.0, "best_nll": 0.5, "best_ece": 0.1, "best_fgsm@0.1": 0.5}
    base["best_ood_noise"] = 0.75
    rows = pd.DataFrame(
        [
            {**base, "arm": "erm", "best_acc": 0.9, "last_acc": 0.8, "best_conf_gap": 0.02},
            {**base, "arm": "mixup1.0", "best_acc": 0.95, "last_acc": 0.9, "best_conf_gap": -0.1},
            {**base, "arm": "erm", "best_acc": 0.8, "last_acc": 0.8, "best_conf_gap": 0.04},
        ]
    )
    lines = summary_table(rows, cfg).splitlines()
    assert lines[0] == (
        "| arm | noise | acc best (%) | acc last (%) | NLL | ECE | conf gap | FGSM ε=0.1 (%) | "
        "OOD AUROC noise |"
    )
    # (90, 80): mean 85, sample std 7.07; a single seed shows its value alone.
    assert lines[2] == (
        "| `erm` | 0% | 85.0 ± 7.1 | 80.0 ± 0.0 | 0.500 ± 0.000 | 0.100 ± 0.000 | "
        "+0.030 ± 0.014 | 50.0 ± 0.0 | 0.750 ± 0.000 |"
    )
    assert lines[3] == "| `mixup1.0` | 0% | 95.0 | 90.0 | 0.500 | 0.100 | -0.100 | 50.0 | 0.750 |"
