"""The experiment scripts run end to end on tiny settings and write what they promise."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.slow
def test_segmentation_grid_writes_rows_summary_and_plot(tmp_path):
    argv = ["--arms", "none", "mixup", "--noise", "0.4", "--seeds", "0", "1", "--epochs", "1"]
    argv += ["--canvases", "32", "--workers", "2", "--out", str(tmp_path)]
    script = EXPERIMENTS / "segmentation.py"
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("none", "0"),
        ("none", "1"),
        ("mixup", "0"),
        ("mixup", "1"),
    ]
    assert all(0 <= float(r["test/miou"]) <= 1 for r in rows)
    summary = (tmp_path / "summary.md").read_text()
    assert "| mixup | 0.4 |" in summary and "| 2 |" in summary
    assert (tmp_path / "miou.png").stat().st_size > 1000
