"""Fixtures: a real server process per test session (and fresh ones for restart tests), a fresh
database on the machine's PostgreSQL, and services of the test's own to take down (tests/faults.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.services import REDIS_HOST, REDIS_PORT, Database, fresh_database, require
from tests.faults import PrivatePostgres, RedisServer, private_postgres
from tests.helpers import ServerProcess


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


@pytest.fixture
def pg_database() -> Iterator[Database]:
    """An empty database of the test's own on the machine's PostgreSQL."""
    with fresh_database() as database:
        yield database


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL cluster of the test's own, to stop and start (tests/faults.py)."""
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server of the test's own, to kill and restart (tests/faults.py)."""
    require("Redis", REDIS_HOST, REDIS_PORT)  # same policy: the machine is meant to have Redis
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
