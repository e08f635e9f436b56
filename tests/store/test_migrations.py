"""Migrations build exactly the schema the code declares, on SQLite and PostgreSQL, and several
nodes may run them at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from callstream.store import SqlStore, migrate
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


async def _made_by_an_earlier_build(url: str, revision: str) -> None:
    """The tables of today's schema, stamped at `revision` as a development build's chain left them."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    finally:
        await engine.dispose()


@pytest.mark.parametrize("revision", ["0005", "0001"])  # the chain's last head, and the first squash's
async def test_a_database_of_an_earlier_development_build_is_refused_with_what_to_do(
    empty_url: str, revision: str
) -> None:
    """Revisions 0001..0005 each named more than one schema in the project's history: the store
    refuses such a database, saying what to do, and leaves it as it was."""
    await _made_by_an_earlier_build(empty_url, revision)
    store = SqlStore(empty_url)
    try:
        with pytest.raises(migrate.UnknownSchemaError) as refused:
            await store.start()
    finally:
        await store.close()
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema revision {revision}, which this version of callstream cannot upgrade" in message
    assert ("remove the database file" if empty_url.startswith("sqlite") else "start on a new database") in message
    engine = create_async_engine(empty_url)
    try:
        assert await migrate.current_revision(engine) == revision
    finally:
        await engine.dispose()


@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"]])
def test_the_commands_refuse_an_earlier_builds_data_dir_in_one_line(tmp_path: Path, command: list[str]) -> None:
    asyncio.run(_made_by_an_earlier_build(f"sqlite+aiosqlite:///{tmp_path / 'callstream.db'}", "0005"))
    argv = [sys.executable, "-m", "callstream", *command, "--data-dir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]  # after the log's lines, for `serve`
    assert last.startswith("error: ")
    assert f"remove the data dir ({tmp_path})" in last


def test_a_database_file_of_the_user_s_own_is_not_answered_with_removing_its_folder(tmp_path: Path) -> None:
    """`--database sqlite:///…/app.db` may sit in a folder of other files: the refusal names the
    file to remove, never the folder it is in."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("not callstream's")
    asyncio.run(_made_by_an_earlier_build(f"sqlite+aiosqlite:///{home / 'app.db'}", "0005"))
    argv = [sys.executable, "-m", "callstream", "migrate", "--database", f"sqlite:///{home / 'app.db'}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert "remove the data dir" not in last
    assert f"remove the database file ({home / 'app.db'}) and the app.db-* files beside it" in last
