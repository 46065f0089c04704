"""``lightning-mixup-compare``: argument checks, the report, and tiny real runs."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
import torchvision

from lightning_mixup import MixupCallback
from lightning_mixup.evaluation.compare import (
    ARMS,
    CompareConfig,
    build_config,
    main,
    summary_table,
)
from tests.cifar_files import checksum_lists, write_cifar10

TINY = [
    "--seeds", "0",
    "--epochs", "2",
    "--limit-train-batches", "2",
    "--limit-val-batches", "1",
    "--limit-test-batches", "1",
    "--width", "4",
    "--no-progress",
]  # fmt: skip
PNGS = ("accuracy_vs_noise.png", "fgsm_vs_eps.png", "reliability.png")
EPS = ("0.02", "0.05", "0.1")


@pytest.fixture(autouse=True)
def keep_threads():
    old = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == old  # main() restores what it changed


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_tiny_grid_writes_csv_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--arms", "erm", "cutmix", "--noise", "0.4", "--out", str(out), *TINY]) == 0

    columns, rows = read_rows(out / "results.csv")
    per = ["acc", "nll", "ece", "conf_gap", *(f"fgsm@{e}" for e in EPS), "ood_noise"]
    assert columns == [
        "arm", "noise", "seed", "epochs", "best_epoch", "best_val_acc",
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
        assert 0 <= float(r["best_acc"]) <= 1 and 0 <= float(r["last_fgsm@0.1"]) <= 1

    summary = (out / "summary.md").read_text()
    assert "lightning-mixup-compare --arms erm cutmix --noise 0.4" in summary
    assert "| arm | noise | acc best (%) | acc last (%) | NLL | ECE | conf gap |" in summary
    assert "| `erm` | 40% |" in summary and "| `cutmix` | 40% |" in summary
    assert "MixupCallback(alpha=0.0, cutmix_alpha=1.0)" in summary
    for png in PNGS:
        assert f"]({png})" in summary
        pixels = matplotlib.image.imread(out / png)
        assert pixels.ndim == 3 and pixels.shape[0] > 100
        assert (out / png).stat().st_size < 300_000
    assert "| `cutmix` | 40% |" in capsys.readouterr().out  # the table is printed too


def test_manifold_arm_mixes_at_the_small_cnns_blocks(tmp_path):
    out = tmp_path / "out"
    assert main(["--arms", "manifold", "--noise", "0", "--out", str(out), *TINY]) == 0
    _, rows = read_rows(out / "results.csv")
    assert [r["arm"] for r in rows] == ["manifold"]
    summary = (out / "summary.md").read_text()
    want = "MixupCallback(alpha=1.0, mix_at=['backbone.features.2', 'backbone.features.6'])"
    assert want in summary


def test_calibration_arms_and_held_out_classes(tmp_path):
    out = tmp_path / "out"
    argv = ["--arms", "regmixup", "erm+TS", "--noise", "0", "--classes", "0", "1", "2", "3", "4"]
    assert main([*argv, "--out", str(out), *TINY]) == 0
    columns, rows = read_rows(out / "results.csv")
    assert [r["arm"] for r in rows] == ["regmixup", "erm+TS"]
    assert {"best_ood_unseen_classes", "best_ood_noise", "last_ood_noise"} <= set(columns)
    assert all(0 <= float(r["best_ood_unseen_classes"]) <= 1 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "- `erm+TS`: no mixing + TemperatureScaling()" in summary
    assert "- `regmixup`: MixupCallback(alpha=10.0, keep_clean=True)" in summary
    assert "OOD AUROC unseen classes | OOD AUROC noise |" in summary
    with pytest.raises(ValueError, match="`--classes` works with `--dataset digits` only"):
        build_config(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--classes", "0", "1"])


def test_time_budget_stops_after_the_first_run(tmp_path):
    out = tmp_path / "out"
    args = ["--arms", "erm", "mixup0.2", "--noise", "0", "--max-minutes", "1e-9"]
    assert main([*args, "--out", str(out), *TINY]) == 0
    _, rows = read_rows(out / "results.csv")
    assert [r["arm"] for r in rows] == ["erm"]
    assert "Stopped by `--max-minutes 1e-09` after 1 of 2 runs" in (out / "summary.md").read_text()


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


# ---------------------------------------------------------------------------- configuration
def test_defaults_are_the_documented_grid():
    cfg = build_config([])
    assert cfg.arms == [
        "erm", "mixup0.2", "mixup1.0", "cutmix", "mixup_ramp", "manifold", "regmixup", "mixup+TS",
        "erm+TS",
    ]  # fmt: skip
    assert cfg.noise == [0.0, 0.4] and cfg.seeds == [0, 1, 2]
    assert len(cfg.arms) * len(cfg.noise) * len(cfg.seeds) == 54
    assert cfg.eps == [0.02, 0.05, 0.1] and cfg.out == Path("runs/compare")
    assert cfg.resolved_batch_size == 64 and cfg.resolved_lr == 0.05 and cfg.threads == 1


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
    ],
)
def test_bad_arguments_are_rejected(argv, match):
    with pytest.raises(ValueError, match=match):
        build_config(argv)


def test_main_reports_a_bad_argument_and_returns_2(tmp_path, capsys):
    assert main(["--arms", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "lightning-mixup-compare: error: Unknown arm 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unparsable_values_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        build_config(["--limit-train-batches", "many"])
    assert "expected a batch count (e.g. 4) or a fraction (e.g. 0.5), got 'many'" in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------------------- the report
def test_summary_cells_are_mean_and_sample_std_over_seeds():
    cfg = CompareConfig(arms=["erm", "mixup1.0"], noise=[0.0], eps=[0.1])
    base = {"noise": 0.0, "best_nll": 0.5, "best_ece": 0.1, "best_fgsm@0.1": 0.5}
    base["best_ood_noise"] = 0.75
    rows = [
        {**base, "arm": "erm", "best_acc": 0.9, "last_acc": 0.8, "best_conf_gap": 0.02},
        {**base, "arm": "erm", "best_acc": 0.8, "last_acc": 0.8, "best_conf_gap": 0.04},
        {**base, "arm": "mixup1.0", "best_acc": 0.95, "last_acc": 0.9, "best_conf_gap": -0.1},
    ]
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


@pytest.mark.filterwarnings(
    "ignore:'lightning_mixup.evaluation.compare' found in sys.modules:RuntimeWarning"
)
def test_module_runs_as_a_script(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["lightning-mixup-compare", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("lightning_mixup.evaluation.compare", run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max-minutes" in out and "mixup_ramp" in out
