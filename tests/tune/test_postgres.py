"""``tune`` and ``compare`` workers sharing one study on a real PostgreSQL server.

The server is the ``postgres_server`` fixture (``tests/tune/conftest.py``): a throwaway cluster
from the machine's own PostgreSQL binaries on 127.0.0.1; each test gets a new database on it. The
workers are real ``lightning-mixup`` processes with their own ``--out`` folders, as on two machines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from lightning_mixup.tune import main_compare  # noqa: E402
from lightning_mixup.tune._study import sqlalchemy_url  # noqa: E402
from tests.tune.test_compare import TINY as COMPARE_TINY  # noqa: E402
from tests.tune.test_compare import runs_per_point, worker  # noqa: E402
from tests.tune.test_tune import TINY, _worker, check_killed_worker_is_retried  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXTRA = 'pip install "lightning-mixup[postgres]"'


def _trials(url: str, name: str = "lightning-mixup") -> list:
    return optuna.load_study(study_name=name, storage=sqlalchemy_url(url)).get_trials()


def _dirs(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in out.glob("trial_*"))


# ---------------------------------------------------------------------------- no driver
@pytest.mark.slow
def test_missing_driver_is_one_line_naming_the_extra(tmp_path):
    # A real console run in which importing the driver fails, as on a machine without it.
    url = "postgresql://mixup:secret@127.0.0.1:1/study"
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg2'] = None; "
        "from lightning_mixup.cli import console; sys.exit(console())"
    )
    out = tmp_path / "tune"
    argv = ["tune", *TINY, "--storage", url, "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "lightning-mixup tune: error: cannot open storage "
        "'postgresql://mixup:***@127.0.0.1:1/study': the PostgreSQL driver psycopg is not "
        f"installed; {EXTRA}"
    ]
    assert "secret" not in done.stdout + done.stderr
    assert not list(out.glob("trial_*"))


def test_missing_driver_in_compare_and_other_drivers(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    url = "postgresql://mixup@127.0.0.1:1/study"
    argv = ["--arms", "erm", "--storage", url, "--out", str(tmp_path / "c"), *COMPARE_TINY]
    assert main_compare(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"lightning-mixup compare: error: cannot open storage {url!r}: the PostgreSQL driver "
        f"psycopg is not installed; {EXTRA}"
    )
    # A URL naming another driver: that module is named, and the plain URL with the extra.
    from lightning_mixup.tune._study import TuneError, open_storage

    other = "postgresql+psycopg2://mixup@127.0.0.1:1/study"
    with pytest.raises(TuneError, match=r"module 'psycopg2' is not installed; install it, or "):
        open_storage(other, 60, None)
    with pytest.raises(TuneError, match=r"or write postgresql:// and pip install .*\[postgres\]"):
        open_storage(other, 60, None)


def test_a_password_in_the_storage_url_is_never_shown(postgres_url, tmp_path, capsys):
    from lightning_mixup.tune._study import hide_password
    from lightning_mixup.tune.compare import open_study, plan

    url = postgres_url.replace("mixup@", "mixup:secret@")  # trust auth: the server ignores it
    argv = ["--arms", "erm", "--storage", url, "--out", str(tmp_path / "c"), *COMPARE_TINY]
    open_study(plan(argv)).ask()  # a run under way with 2 epochs
    assert main_compare([*argv, "--trainer.max_epochs=3"]) == 2  # refused: no training
    err = capsys.readouterr().err
    assert "was run with config key trainer.max_epochs 2, got 3" in err
    assert "mixup:***@127.0.0.1" in err
    # The command line that summary.md shows, with either way of writing the flag.
    for args in (argv, [f"--storage={url}", *COMPARE_TINY]):
        command = plan(args).command
        assert "secret" not in command and "mixup:***@127.0.0.1" in command, command
    assert "secret" not in err
    for plain in ("sqlite:///runs/study.db", "journal:/a@b/j.log", "postgresql://mixup@h/db"):
        assert hide_password(plain) == plain


# ---------------------------------------------------------------------------- tune
@pytest.mark.slow
def test_two_tune_workers_share_one_study_on_postgres(postgres_url, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]  # as on two machines: one study, two folders
    workers = [_worker(out, 4, "--storage", postgres_url) for out in outs]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    for w, log in zip(workers, logs):
        assert w.returncode == 0, log[-3000:]
    trials = _trials(postgres_url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, [t.state.name for t in trials]
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    # Each trial ran in exactly one worker, and both workers ran trials.
    a, b = _dirs(outs[0]), _dirs(outs[1])
    assert sorted(a + b) == [0, 1, 2, 3] and a and b, (a, b)
    reported = [line for log in logs for line in log.splitlines() if "/4 #" in line]
    assert len(reported) == 4, logs


@pytest.mark.slow
def test_killed_tune_worker_on_postgres_loses_only_its_trial(postgres_url, tmp_path):
    def load():
        return optuna.load_study(study_name="lightning-mixup", storage=sqlalchemy_url(postgres_url))

    check_killed_worker_is_retried(tmp_path / "tune", load, "--storage", postgres_url)


# ---------------------------------------------------------------------------- compare
def _compare(url: str, out: Path) -> subprocess.Popen:
    """One ``compare`` worker on the 4-run grid erm/cutmix x seeds 0, 1, tiny runs."""
    argv = ["--arms", "erm", "cutmix", "--seeds", "0", "1", *COMPARE_TINY]
    return worker([*argv, "--storage", url, "--out", str(out)])


@pytest.mark.slow
def test_two_compare_workers_on_postgres_run_each_point_once(postgres_url, tmp_path):
    workers = [_compare(postgres_url, tmp_path / name) for name in ("a", "b")]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    for w, log in zip(workers, logs):
        assert w.returncode == 0, log[-3000:]
    study = optuna.load_study(study_name="compare", storage=sqlalchemy_url(postgres_url))
    points = runs_per_point(study)
    assert sorted(points) == [(arm, s) for arm in ("cutmix", "erm") for s in (0, 1)]
    assert all(len(n) == 1 for n in points.values()), points
    runs = [line for log in logs for line in log.splitlines() if line.startswith("run ")]
    assert len(runs) == 4, logs
    # The worker that finished last reports the whole grid from the shared study.
    assert any("4 of 4 runs finished" in log for log in logs), logs
