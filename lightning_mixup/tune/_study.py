"""The Optuna study plumbing that ``tune`` and ``compare`` share: flags, storage, report files."""

from __future__ import annotations

import io
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

__all__ = [
    "TuneError",
    "add_study_arguments",
    "hide_password",
    "open_storage",
    "save_png",
    "write_atomically",
]


class TuneError(RuntimeError):
    """A problem that makes the study pointless to continue (reported in one line)."""


def add_study_arguments(parser: Any, study_name: str, what: str) -> None:
    """Add ``--storage``, ``--study-name``, ``--heartbeat`` and ``--grace`` to ``parser``.

    ``what`` names one unit of work in the help (``"trial"``, ``"run"``).
    """
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL, or journal:PATH (default: sqlite:///<out>/study.db); workers on "
        "several machines share one database URL.",
    )
    parser.add_argument("--study-name", default=study_name, help=f"Default: {study_name}.")
    parser.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help=f"Seconds between heartbeats of a running {what} (database storages only; journal "
        f"storage has none, so a killed worker's {what} stays RUNNING there). A {what} silent for "
        "--grace seconds is marked FAIL and retried once with the same arguments.",
    )
    parser.add_argument(
        "--grace",
        type=int,
        default=None,
        help=f"Seconds before a silent {what} counts as dead (default: 2 x --heartbeat).",
    )


def open_storage(url: str, heartbeat: int, grace: int | None) -> optuna.storages.BaseStorage:
    """The storage for ``url``; any failure to open it is a :class:`TuneError` before training.

    Workers started together race to create the tables and the version rows of a new database
    (``table ... already exists``, ``UNIQUE constraint failed``, ``database is locked``); those
    errors are retried a few times, after which the other worker's tables are there. A database
    driver that is not installed is named, with the extra that brings it for ``postgresql://``.
    The password in ``url``, if any, is not repeated in the message.
    """
    for attempt in range(6):
        try:
            return _storage(url, heartbeat, grace)
        except Exception as err:  # sqlalchemy, driver and file errors alike
            missing = _missing_driver(err, url)
            if missing is not None:
                raise TuneError(f"cannot open storage {hide_password(url)!r}: {missing}") from None
            text = str(err)
            racing = type(err).__name__ == "IntegrityError" or any(
                s in text for s in ("already exists", "locked")
            )
            if attempt < 5 and racing:
                time.sleep(0.2 + random.random())
                continue
            first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
            raise TuneError(f"cannot open storage {hide_password(url)!r}: {first}") from None
    raise AssertionError("unreachable")


def _missing_driver(err: BaseException | None, url: str) -> str | None:
    """What to install when ``err`` comes from a database driver module that is not installed.

    Optuna wraps SQLAlchemy's failed import of the driver in an ``ImportError`` of its own; the
    missing module is the ``ModuleNotFoundError`` in the chain of causes.
    """
    for _ in range(8):  # a short chain; never follow a cycle
        if err is None or isinstance(err, ModuleNotFoundError):
            break
        err = err.__cause__ or err.__context__
    if not isinstance(err, ModuleNotFoundError):
        return None
    extra = 'pip install "lightning-mixup[postgres]"'
    if err.name == "psycopg":  # what SQLAlchemy >= 2.1 opens postgresql:// URLs with
        return f"the PostgreSQL driver psycopg is not installed; {extra}"
    hint = f", or write postgresql:// and {extra}" if url.startswith("postgresql") else ""
    return f"its database driver module {err.name!r} is not installed; install it{hint}"


def hide_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and reports.

    Also takes a command-line argument ``--flag=URL``; anything else comes back unchanged.
    """
    if "://" not in url or "@" not in url:
        return url
    if url.startswith("--") and "=" in url:
        flag, _, value = url.partition("=")
        return f"{flag}={hide_password(value)}"
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: nothing it could hide either
        return url


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one rename.

    Workers writing the same report at once then leave one whole file, never a mix of both.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _storage(url: str, heartbeat: int, grace: int | None) -> optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no folder {str(path.parent)!r}")
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    # Optuna 4.9 renamed the callback run on a trial whose heartbeat stopped, and its argument.
    storages = optuna.storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
            return storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1
                ),
            )
        return storages.RDBStorage(  # pragma: no cover - Optuna < 4.9
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            failed_trial_callback=storages.RetryFailedTrialCallback(max_retry=1),
        )


def save_png(fig: Any, path: Path, dpi: float | None = None) -> None:
    """Save a matplotlib figure as PNG through :func:`write_atomically`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomically(path, buffer.getvalue())
