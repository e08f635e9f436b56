"""Real backing services for tests: reachability policy and fresh databases on the machine's PostgreSQL.

Policy: a test that needs Redis or PostgreSQL runs against the real one. Locally it is skipped
when the service is unreachable; with CI=true it fails instead, so CI can never pass by skipping.
Services of a test's own, to stop and start, are in tests/faults.py.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.helpers import run_async

REDIS_URL = os.environ.get("CALLSTREAM_TEST_REDIS", "redis://127.0.0.1:6379/0")
# Server processes have no key prefix of their own: theirs is a database apart from the broker
# tests' prefixed keys (their tests keep apart by accounts and call ids of their own).
# A cluster is its nodes, one Redis database and one PostgreSQL database. Tests in parallel
# workers (pytest-xdist) each get a Redis database of their own (3, 4, …): the control deadlines
# and the live sets are a cluster's, and two clusters on one Redis database would time out each
# other's requests.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
NODES_REDIS_URL = os.environ.get(
    "CALLSTREAM_TEST_NODES_REDIS", REDIS_URL.rsplit("/", 1)[0] + f"/{3 + _WORKER}"
)
PG_ADMIN_URL = os.environ.get("CALLSTREAM_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


def _address(url: str, default_port: int) -> tuple[str, int]:
    """The host and port a service URL names (what `require` probes before a test runs)."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


REDIS_HOST, REDIS_PORT = _address(REDIS_URL, 6379)
PG_HOST, PG_PORT = _address(PG_ADMIN_URL, 5432)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI=true) when the service is not listening."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: these tests must run)")
    pytest.skip(message)


@dataclass(frozen=True, slots=True)
class Database:
    """A fresh database on the machine's PostgreSQL."""

    name: str
    url: str  # what a node is given (`--database`)
    driver_url: str  # the same database for the test's own SQLAlchemy engine


@contextmanager
def fresh_database() -> Iterator[Database]:
    """An empty database of the caller's own, dropped afterwards (even with sessions still open)."""
    require("PostgreSQL", PG_HOST, PG_PORT)
    name = database_name()
    driver_url: str = run_async(create_database(name))
    try:
        yield Database(name, driver_url.replace("+asyncpg", "", 1), driver_url)
    finally:
        run_async(drop_database(name))


def database_name() -> str:
    return f"callstream_test_{secrets.token_hex(6)}"


async def create_database(name: str) -> str:
    """Create an empty PostgreSQL database; returns its asyncpg URL."""
    await _admin(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(statement: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()
