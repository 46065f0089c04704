"""The Optuna study plumbing that ``tune`` and ``compare`` share: flags, storage, report files."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lightning_mixup import _checks

__all__ = [
    "StudyOptions",
    "TrialFailed",
    "TuneError",
    "check_heartbeat",
    "check_seeds",
    "distinct",
    "fail_stale",
    "failed",
    "hide_password",
    "logger_level",
    "make_folder",
    "one_line",
    "open_storage",
    "quiet_failed_trials",
    "save_png",
    "stamp",
    "write_atomically",
]


class TuneError(RuntimeError):
    """A problem that makes the study pointless to continue (reported in one line)."""


class TrialFailed(Exception):
    """A trial raised: the worker stops, with one line that says where its traceback is."""

    def __init__(self, number: int, err: BaseException, log: Path) -> None:
        self.error = one_line(err)
        reason = self.error.rstrip(".")
        super().__init__(f"trial {number} failed: {reason}; full traceback in {log}")


def failed(trial: optuna.Trial, err: BaseException, folder: Path) -> TrialFailed:
    """The :class:`TrialFailed` for ``err``; its traceback goes to ``folder/error.log``."""
    log = folder / "error.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(traceback.format_exception(err)))
    error = TrialFailed(trial.number, err, log)
    trial.set_user_attr("error", error.error)
    return error


def one_line(err: BaseException) -> str:
    """``err`` as ``Type: first line of its message`` (a TuneError: its message alone)."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(err, TuneError):
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def quiet_failed_trials() -> contextlib.AbstractContextManager[None]:
    """Mute Optuna's warning with the traceback of each failed trial (:func:`failed` keeps it)."""
    return logger_level("optuna.study._optimize", logging.ERROR)


@dataclass
class StudyOptions:
    """Where a command's Optuna study lives, and how its workers show they are alive.

    Args:
        storage: Optuna storage URL, or journal:PATH (default: sqlite:///<out>/study.db); workers
            on several machines share one database URL.
        study_name: The study's name in the storage.
        heartbeat: Seconds between heartbeats of a running trial (database storages only;
            journal storage has none, so a killed worker's trial stays RUNNING there). A trial
            silent for --grace seconds is marked FAIL and retried once with the same arguments.
        grace: Seconds before a silent trial counts as dead (default: 2 x --heartbeat).
        out: The command's output folder.
    """

    storage: str | None = None
    study_name: str = "lightning-mixup"
    heartbeat: int = 60
    grace: int | None = None
    out: str = "runs"

    @property
    def storage_url(self) -> str:
        """``--storage``, or the study database in ``--out``."""
        return self.storage or f"sqlite:///{Path(self.out) / 'study.db'}"

    def open_storage(self) -> optuna.storages.BaseStorage:
        """The storage (:func:`open_storage`), once ``--out`` exists; a :class:`TuneError` if not."""
        make_folder("--out", Path(self.out))
        return open_storage(self.storage_url, self.heartbeat, self.grace)


def fail_stale(study: optuna.Study) -> None:
    """Mark the trials of killed workers (silent for ``--grace``) failed, and queue their retry."""
    # Optuna wraps a study's database storage in a cache, so ask Optuna, which knows whether the
    # storage (wrapped or not) has a heartbeat, and does nothing where it has none (journal).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def open_storage(url: str, heartbeat: int, grace: int | None) -> optuna.storages.BaseStorage:
    """The storage for ``url``; any failure to open it is a :class:`TuneError`, password hidden.

    Errors of workers racing to create a new database's tables are retried a few times.
    """
    for attempt in range(6):
        try:
            return _storage(url, heartbeat, grace)
        except Exception as err:  # sqlalchemy, driver and file errors alike
            why = _missing_driver(err, url)
            text = str(err).strip()
            racing = type(err).__name__ == "IntegrityError" or any(
                s in text for s in ("already exists", "locked")
            )
            if why is None and attempt < 5 and racing:
                time.sleep(0.2 + random.random())
                continue
            why = why or (text.splitlines()[0] if text else type(err).__name__)
            raise TuneError(f"cannot open storage {hide_password(url)!r}: {why}") from None
    raise AssertionError("unreachable")


def _missing_driver(err: BaseException | None, url: str) -> str | None:
    """What to install when a ``ModuleNotFoundError`` is in the causes of ``err``, else None."""
    for _ in range(8):  # a short chain; never follow a cycle
        if err is None or isinstance(err, ModuleNotFoundError):
            break
        err = err.__cause__ or err.__context__
    if not isinstance(err, ModuleNotFoundError):
        return None
    extra = 'pip install "lightning-mixup[postgres]"'
    if err.name == "psycopg":  # what sqlalchemy_url opens postgresql:// URLs with
        return f"the PostgreSQL driver psycopg is not installed; {extra}"
    hint = f", or write postgresql:// and {extra}" if url.startswith("postgresql") else ""
    return f"its database driver module {err.name!r} is not installed; install it{hint}"


def hide_password(url: str) -> str:
    """``url`` with any password (``user:PASSWORD@`` or ``?password=``) replaced by ``***``.

    Also takes a command-line argument ``--flag=URL``; anything else comes back unchanged.
    """
    if "://" not in url or ("@" not in url and "password" not in url):
        return url
    if url.startswith("--") and "=" in url:
        flag, _, value = url.partition("=")
        return f"{flag}={hide_password(value)}"
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if "password" in parsed.query:  # psycopg and others take it there too
            parsed = parsed.update_query_dict({"password": "***"})
        return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:  # not a URL SQLAlchemy can read: nothing it could hide either
        return url


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and one rename (workers race)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg 3 driver named when a ``postgresql://`` URL names none.

    SQLAlchemy 2.0 would open it with psycopg2, 2.1 (Python 3.11+) with psycopg 3.
    """
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


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
    retry: dict[str, Any]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback}
        else:  # pragma: no cover - Optuna < 4.9
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback}
        return storages.RDBStorage(
            sqlalchemy_url(url),
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            **{key: callback(max_retry=1) for key, callback in retry.items()},
        )


def save_png(fig: Any, path: Path, dpi: float | None = None) -> None:
    """Save a matplotlib figure as PNG through :func:`write_atomically`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_atomically(path, buffer.getvalue())


def check_heartbeat(heartbeat: int, grace: int | None) -> None:
    """Check ``--heartbeat``, and that ``--grace`` exceeds it (else live trials would fail)."""
    _checks.integer("--heartbeat", heartbeat, 1)
    if grace is not None and grace <= heartbeat:
        raise ValueError(
            f"`--grace` must be longer than `--heartbeat` ({heartbeat}), got {grace!r}."
        )


def distinct(flag: str, values: Sequence[Any]) -> None:
    """Refuse a value that ``flag``'s list holds twice."""
    for i, v in enumerate(values):
        if v in values[:i]:
            raise ValueError(f"`{flag}` lists {v!r} twice.")


def check_seeds(seeds: list[int]) -> None:
    """Check ``--seeds``: none twice, at least one, each an integer >= 0 (Lightning's range)."""
    distinct("--seeds", seeds)
    if not seeds:
        raise ValueError("`--seeds` must hold at least one seed, got [].")
    for seed in seeds:
        _checks.integer("--seeds", seed, 0)


def make_folder(flag: str, folder: Path, given: Path | None = None) -> None:
    """Create ``folder`` for the path ``given`` to ``flag`` (default ``folder``), or a TuneError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
        why = f"{str(blocker)!r} is a file" if blocker else (err.strerror or type(err).__name__)
        shown, what = (str(folder), "the folder") if given is None else (str(given), "its folder")
        raise TuneError(f"`{flag}` {shown!r}: cannot create {what}, {why}.") from None


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """Set the level of the ``logging`` logger ``name`` inside the block; restore it after."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def stamp(study: optuna.Study, settings: dict[str, Any], url: str, what: str) -> None:
    """Record ``settings`` (what decides a trial's numbers) in the study, or check them.

    A study with finished or running trials (``what``: ``"trial"``, ``"run"``) keeps its own
    settings: a change raises a :class:`TuneError`; a study with none takes the new ones.
    """
    known = study.user_attrs.get("settings")
    new = json.loads(json.dumps(settings))  # as the storage gives it back
    old_flat, new_flat = _flat(known if known is not None else new), _flat(new)
    changed = [
        (_label(k), _shown(old_flat.get(k)), _shown(new_flat.get(k)))
        for k in dict.fromkeys([*old_flat, *new_flat])
        if old_flat.get(k) != new_flat.get(k)
    ]
    if changed:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        used = len(study.get_trials(deepcopy=False, states=states))
        if used:
            key, old, now = changed[0]
            raise TuneError(
                f"study {study.study_name!r} in {hide_password(url)} was run with {key} {old}, "
                f"got {now}, and has {used} finished or running {what}{'s' if used > 1 else ''}; "
                "use another --out, --storage or --study_name."
            )
        olds, news = (", ".join(f"{c[0]} {c[i]}" for c in changed[:3]) for i in (1, 2))
        more = f" (and {len(changed) - 3} more changes)" if len(changed) > 3 else ""
        print(
            f"study {study.study_name!r} finished no {what} with {olds}; it now runs with {news}{more}."
        )
    if known != new:
        study.set_user_attr("settings", new)


def _flat(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested mappings as ``{("a", "b", "c"): leaf}``."""
    if not isinstance(value, dict) or not value:
        return {path: value}
    return {k: v for key, item in value.items() for k, v in _flat(item, (*path, key)).items()}


def _label(path: tuple[str, ...]) -> str:
    """A settings key as the user set it: a config key, an arm's argument, or a flag."""
    top, *rest = path
    if top == "config":
        return f"config key {'.'.join(rest)}"
    if top == "arm":
        return " ".join([f"arm {rest[0]!r}", ".".join(rest[1:])]).rstrip()
    return " ".join([f"--{top}", *rest])


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else "(none)" if value is None else json.dumps(value)
