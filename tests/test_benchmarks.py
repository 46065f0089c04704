"""The benchmark scripts still run end to end (tiny sizes; their numbers are not checked here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--threads", "1", "--repeats", "1", "--min-time", "0.001"]
STEP = ["bench_step.py", "--batch-size", "2", "--steps", "1", "--runs", "1", "--step-repeats", "1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["bench_mix.py", "--sizes", "6x3x8x8", "--profile", *TINY],
        ["bench_mix.py", "--sizes", "6x3x8x8,2x3x64x64", "--no-timm", "--clock", "cpu", *TINY],
        [
            "bench_loss.py",
            "--classes",
            "10",
            "--batch-size",
            "4",
            "--image-size",
            "8",
            "--step-repeats",
            "1",
            *TINY,
        ],
        [*STEP, *TINY],
        [*STEP, "--mix-at", "backbone.layer2", *TINY],
    ],
    ids=["mix", "mix-two-sizes", "loss", "step", "step-hidden"],
)
def test_benchmark_script_runs_and_prints_its_summary(args):
    proc = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\nSummary: " in proc.stdout
    assert "|" in proc.stdout  # a Markdown table was printed
    if args[0] == "bench_mix.py":
        assert "\nGoals: ahead of both at every size (" in proc.stdout
        assert "x a copy: worst " in proc.stdout


@pytest.mark.slow
def test_compare_workers_benchmark_times_both_and_checks_the_results_match():
    pytest.importorskip("optuna")
    grid = ["--arms", "erm", "--grid", "data.label_noise=0", "--seeds", "0"]
    grid += ["--trainer.max_epochs=1", "--model.init_args.backbone.init_args.width=4"]
    grid += ["--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    grid += ["--trainer.limit_test_batches=1"]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_compare.py"), "--rounds", "1", "--", *grid],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1, 1 worker(s): " in proc.stdout and "round 1, 2 worker(s): " in proc.stdout
    assert "2 workers / 1 worker (medians): " in proc.stdout
    assert "same results.csv metrics from both: yes" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check would run in full")
def test_gpu_check_refuses_clearly_without_a_gpu(tmp_path):
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")},
    )
    assert proc.returncode == 2, proc.stderr
    assert "torch sees no CUDA device here" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the check passes
