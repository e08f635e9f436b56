"""Migrations build exactly the schema the code declares, on SQLite and PostgreSQL, and several
nodes may run them at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from callstream.store import migrate
from callstream.store.tables import INDEX_ONLY_IN_MIGRATION, metadata
from callstream.webhooks import tables as _webhook_tables  # noqa: F401 - the full schema
from tests.broker.services import PG_HOST, PG_PORT, create_database, database_name, drop_database, require


def _declared(_object: Any, name: str | None, _type: str, _reflected: bool, _compare_to: Any) -> bool:
    """Whether the comparison looks at it: the search index is the migration's alone (the FTS5
    table and its shadow tables on SQLite, the tsvector column and its GIN index on PostgreSQL)."""
    return not any(name == left or (name or "").startswith(left + "_") for left in INDEX_ONLY_IN_MIGRATION)


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": _declared})
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


async def test_the_one_revision_goes_down_and_up_again(empty_url: str) -> None:
    """The schema is one initial revision: its downgrade empties the database, its upgrade builds
    exactly the tables the code declares again."""
    engine = create_async_engine(empty_url)
    try:
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            await conn.run_sync(_to("base", down=True))
            left = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert set(left) <= {"alembic_version"}
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()
