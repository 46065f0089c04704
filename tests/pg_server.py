"""A throwaway PostgreSQL server for the tests, from the machine's own server binaries.

:func:`server_bindir` finds ``initdb``, ``pg_ctl`` and ``createdb`` (``pg_config --bindir``, else
Debian's ``/usr/lib/postgresql/<version>/bin``). :class:`PostgresServer` makes a new cluster in a temporary
directory, serves it on ``127.0.0.1`` at a free port (its unix socket in that directory too), with
``trust`` authentication for one user, and removes it all on :meth:`PostgresServer.stop`.

PostgreSQL refuses to run as root. When the tests run as root (CI does), the cluster belongs to
the ``postgres`` user that Debian's package creates (else ``nobody``), and ``initdb``/``pg_ctl``
run as that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "server_bindir"]

USER = "mixup"  # the cluster's superuser; trust authentication, so no password


def server_bindir() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``createdb``, or None when there is no server."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0:
            candidates.append(Path(found.stdout.strip()))
    # Debian installs each major version beside the others; the newest first.
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    candidates += versions
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "createdb")):
            return folder
    return None


def _version(folder: Path) -> tuple[int, ...]:
    digits = folder.parent.name.split(".")
    return tuple(int(d) for d in digits if d.isdigit())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on 127.0.0.1 (see the module docstring).

    Args:
        bindir: The folder of the server binaries (:func:`server_bindir`).
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="lightning-mixup-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port: int | None = None
        self._owner = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._owner = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._owner is None:
                raise RuntimeError("running as root, and no `postgres` or `nobody` user to own it")
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)

    def _run(self, *args: str) -> None:
        """Run a server binary as the cluster's owner; its output goes to the server log."""
        as_owner = {}
        if self._owner is not None:
            as_owner = {
                "user": self._owner.pw_uid,
                "group": self._owner.pw_gid,
                "extra_groups": [],
            }
        env = {**os.environ, "LC_ALL": "C"}
        with open(self.log, "a") as log:
            done = subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                **as_owner,
            )
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed with status {done.returncode}; the log {self.log}:\n"
                + self.log.read_text()[-3000:]
            )

    def start(self) -> PostgresServer:
        """Make the cluster and start the server; it answers once this returns."""
        if self._owner is not None:
            self.log.touch()
            os.chown(self.log, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8")
        for attempt in range(3):  # a free port can be taken between the check and the start
            self.port = _free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")  # fmt: skip
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def url(self, database: str = "postgres") -> str:
        """The ``postgresql://`` URL of ``database`` on this server, as a user writes it."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create the database ``name`` with ``createdb``; its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and remove the cluster."""
        try:
            if self.port is not None and (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
