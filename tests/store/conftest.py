"""Store fixtures: the same contract runs over SQLite (a temporary file) and PostgreSQL.

PostgreSQL gets one fresh database per test session (`callstream_test_<hex>`), dropped at the
end; each test then works under accounts of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from callstream.store import SqlStore
from callstream.webhooks import tables as _webhook_tables  # noqa: F401 - the full schema
from tests.broker.services import fresh_database


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own."""
    with fresh_database() as database:
        yield database.driver_url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(store_url)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def account() -> str:
    return f"acct_{secrets.token_hex(6)}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def embedded_store(db_path: Path) -> AsyncIterator[SqlStore]:
    """The embedded store, on a file (so with its writer process and its event log)."""
    store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
    await store.start()
    yield store
    await store.close()
