"""/healthz tells the truth about commits (docs/protocol.md, Values and isolation): 503 while the node cannot
commit at all (writes waiting, no commit for 5 s), and 200 again once it can, on PostgreSQL and
SQLite alike. A ping that answers is not enough: a locked table answers pings.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.broker.services import Database
from tests.helpers import ServerProcess, ended, final, publish


def health(server: ServerProcess) -> int:
    return httpx.get(server.url + "/healthz", timeout=10).status_code


async def wait_for_health(server: ServerProcess, status: int, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await asyncio.to_thread(health, server) == status:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"/healthz did not answer {status} within {within} s")


@pytest.mark.postgres
async def test_a_locked_postgresql_turns_health_to_503_and_back(tmp_path: Path, pg_database: Database) -> None:
    server = ServerProcess(tmp_path, "--database", pg_database.url)
    await asyncio.to_thread(server.start)
    locker = create_async_engine(pg_database.driver_url)
    try:
        key = await asyncio.to_thread(server.create_key, "acme")
        assert (await asyncio.to_thread(publish, server, key, "c1", final("before"))).status_code == 202
        async with locker.connect() as conn:
            transaction = await conn.begin()
            await conn.execute(sa.text("LOCK TABLE event_chunks, calls IN ACCESS EXCLUSIVE MODE"))
            stuck = asyncio.create_task(asyncio.to_thread(publish, server, key, "c1", final("stuck")))
            assert await asyncio.to_thread(health, server) == 200  # writes waited less than 5 s
            waited = await wait_for_health(server, 503, within=15)
            await transaction.rollback()
        assert 3 <= waited <= 12, waited
        await wait_for_health(server, 200, within=10)
        await stuck
        assert (await asyncio.to_thread(publish, server, key, "c1", final("after"))).status_code == 202
    finally:
        await locker.dispose()
        await asyncio.to_thread(server.kill)


async def test_a_locked_sqlite_database_turns_health_to_503_and_back(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await asyncio.to_thread(server.start)
    try:
        key = await asyncio.to_thread(server.create_key, "acme")
        assert (await asyncio.to_thread(publish, server, key, "c1", final("before"))).status_code == 202
        blocker = sqlite3.connect(tmp_path / "callstream.db", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the database's write lock, held by another process
            # A commit that ends a call writes the webhook outbox in SQLite itself: it waits.
            stuck = asyncio.create_task(asyncio.to_thread(publish, server, key, "c1", ended()))
            waited = await wait_for_health(server, 503, within=15)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert 3 <= waited <= 12, waited
        await wait_for_health(server, 200, within=10)
        await stuck
    finally:
        await asyncio.to_thread(server.kill)
