"""Migrations build exactly the schema the code declares, on SQLite and PostgreSQL, and several
nodes may run them at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from callstream.store import SqlStore, migrate
from callstream.store.tables import metadata
from callstream.webhooks import tables as _webhook_tables  # noqa: F401 - the full schema
from tests.broker.services import PG_HOST, PG_PORT, create_database, database_name, drop_database, require


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    require("PostgreSQL", PG_HOST, PG_PORT)
    name = database_name()
    url = await create_database(name)
    yield url
    await drop_database(name)


async def test_migrating_an_empty_database_matches_the_tables(empty_url: str) -> None:
    engine = create_async_engine(empty_url)
    try:
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)  # idempotent: every node runs it on start
        assert await migrate.current_revision(engine) == migrate.head_revision()
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_nodes_starting_together_migrate_once(empty_url: str) -> None:
    engines = [create_async_engine(empty_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate.upgrade(e) for e in engines))
        assert await migrate.current_revision(engines[0]) == migrate.head_revision()
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_database_made_before_migrations_is_adopted(empty_url: str) -> None:
    engine = create_async_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


def _to(revision: str, *, down: bool = False) -> Any:
    def run(connection: Connection) -> None:
        (command.downgrade if down else command.upgrade)(migrate._config(connection), revision)

    return run


async def test_events_stored_one_row_each_are_carried_over_into_chunks_and_back(empty_url: str) -> None:
    """0003 moves a database's events into chunks: every event reads back as it was (REST,
    replay and webhooks all read through `SqlStore.events`), and the downgrade restores the rows."""
    old = [
        {"account": account, "call_id": call_id, "seq": seq, "ts": 1_700_000_000_000 + seq, "type": kind,
         "data": orjson.dumps({"text": f"héllo {seq} \"quoted\" ,\"data\":", "n": seq}).decode()}
        for account, call_id, count in (("acme", "c1", 300), ("acme", "c2", 3), ("other", "c1", 1))
        for seq in range(1, count + 1)
        for kind in ["transcript.final" if seq % 2 else "agent.state"]
    ]
    engine = create_async_engine(empty_url)
    events = sa.table("events", *(sa.column(k) for k in old[0]))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to("0002"))
            await conn.execute(events.insert(), old)
        store = SqlStore(empty_url)
        await store.start(writer=False)  # migrates to head
        try:
            for account, call_id in (("acme", "c1"), ("acme", "c2"), ("other", "c1")):
                got = await store.events(account, call_id)
                want = [r for r in old if (r["account"], r["call_id"]) == (account, call_id)]
                assert [(e.seq, e.ts, e.type, e.data) for e in got] == [
                    (r["seq"], r["ts"], r["type"], orjson.loads(r["data"])) for r in want
                ]
            assert [e.seq for e in await store.events("acme", "c1", since=250, until=260)] == list(range(251, 261))
        finally:
            await store.close()
        async with engine.begin() as conn:
            await conn.run_sync(_to("0002", down=True))
            rows = (await conn.execute(sa.select(events).order_by("account", "call_id", "seq"))).mappings().all()
        assert [dict(r) for r in rows] == sorted(old, key=lambda r: (r["account"], r["call_id"], r["seq"]))
    finally:
        await engine.dispose()
