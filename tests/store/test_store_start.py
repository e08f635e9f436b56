"""A store that cannot open its database says so with the project's own error: `SqlStore` and
its `start` raise `StoreUnavailableError` (the driver's error as its cause), never SQLAlchemy's
or the driver's, so callers (the CLI, the server's start) need not know the driver.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from callstream.store import SqlStore, StoreUnavailableError


def unusable_urls(tmp_path: Path) -> dict[str, str]:
    """Databases that cannot be opened: nothing listens on the port; the file's folder is missing."""
    return {
        "postgresql": "postgresql+asyncpg://user:secret@127.0.0.1:1/nothing",
        "sqlite": f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'store.db'}",
    }


async def aiosqlite_threads_ended(timeout_s: float = 5.0) -> None:
    """aiosqlite stops the thread of a connection that failed to open without waiting for it:
    the thread answers on the test's loop, which must still be open then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
        "_connection_worker_thread" in thread.name for thread in threading.enumerate()
    ):
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
@pytest.mark.parametrize("writer", [True, False])
async def test_start_on_a_database_that_cannot_be_opened_raises_store_unavailable(
    tmp_path: Path, dialect: str, writer: bool
) -> None:
    store = SqlStore(unusable_urls(tmp_path)[dialect])
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.start(writer=writer)
        assert caught.value.__cause__ is not None  # what the driver said, for the one-line message
    finally:
        await store.close()
        await aiosqlite_threads_ended()


def test_a_url_the_driver_cannot_parse_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailableError) as caught:
        SqlStore("sqlite+aiosqlite://not-a-path")
    assert caught.value.__cause__ is not None
