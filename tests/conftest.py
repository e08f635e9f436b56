"""Fixtures: a real server process per test session (and fresh ones for restart tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.services import PG_HOST, PG_PORT, create_database, database_name, drop_database, require
from tests.helpers import ServerProcess, run_async


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server; tests keep apart by using their own call ids and accounts."""
    proc = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for restarts, kills and tight limits (not started)."""
    proc = ServerProcess(tmp_path)
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def api_key(server: ServerProcess) -> str:
    """Account 'acme', every scope."""
    return server.create_key("acme")


@pytest.fixture(scope="session")
def other_key(server: ServerProcess) -> str:
    """Account 'globex', every scope: the other tenant."""
    return server.create_key("globex")


@pytest.fixture
def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on the embedded SQLite store, and one on a fresh PostgreSQL database (a module's)."""
    if request.param == "sqlite":
        server = ServerProcess(tmp_path_factory.mktemp("sqlite")).start()
        yield server
        server.stop()
        return
    require("PostgreSQL", PG_HOST, PG_PORT)
    name = database_name()
    run_async(create_database(name))
    database = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    server = ServerProcess(tmp_path_factory.mktemp("postgresql"), "--database", database).start()
    yield server
    server.stop()
    run_async(drop_database(name))
