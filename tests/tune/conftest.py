"""Fixtures of the tune/compare tests: a real PostgreSQL server for the workers to share."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.pg_server import PostgresServer, server_bindir

#: Set by ``.ci/run`` once it has made sure the server binaries are there: a missing server is
#: then a failure, not a skip, so that CI cannot pass without running the PostgreSQL tests.
NEED = "LIGHTNING_MIXUP_NEED_POSTGRES"

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session, stopped and removed at the end."""
    bindir = server_bindir()
    if bindir is None:
        reason = (
            "no PostgreSQL server binaries (initdb, pg_ctl, createdb) in `pg_config --bindir` or "
            "/usr/lib/postgresql/*/bin; install them, e.g. apt-get install postgresql"
        )
        if os.environ.get(NEED):
            pytest.fail(f"{NEED} is set but {reason}")
        pytest.skip(reason)
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The ``postgresql://`` URL of a new, empty database on the session's server."""
    return postgres_server.create_database(f"test_{next(_names)}")
