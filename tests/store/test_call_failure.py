"""A call whose rows the database refuses fails alone (docs/protocol.md, Values and isolation), on SQLite and
PostgreSQL: the other calls of the same commit or fold are stored, the failed call takes no more
events, and the store neither stalls nor reports itself down.

The database refuses the rows of one call through a trigger, the way a constraint, a type or a
size the database enforces would: nothing in the store is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from callstream.events import Event
from callstream.store import CallFailedError, SqlStore, StoreUnavailableError
from callstream.store.fold_process import quarantine_path
from callstream.store.sql import refused_rows
from tests.store.test_store_contract import event

SQLITE_TRIGGER = (
    "CREATE TRIGGER refuse_poison BEFORE INSERT ON event_chunks WHEN NEW.call_id = 'poison'"
    " BEGIN SELECT RAISE(ABORT, 'this call is refused'); END"
)
PG_TRIGGER = (
    """CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
    BEGIN IF NEW.call_id = 'poison' THEN RAISE EXCEPTION 'this call is refused'; END IF; RETURN NEW; END
    $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS refuse_poison ON event_chunks",
    "CREATE TRIGGER refuse_poison BEFORE INSERT ON event_chunks FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
)


async def refuse_call_poison(store: SqlStore) -> None:
    async with store.engine.begin() as conn:
        for statement in (SQLITE_TRIGGER,) if store.dialect == "sqlite" else PG_TRIGGER:
            await conn.execute(sa.text(statement))


@contextlib.asynccontextmanager
async def account_trigger(store: SqlStore, account: str, action: str) -> AsyncIterator[None]:
    """PostgreSQL runs `action` (PL/pgSQL) for each event_chunks row of `account` about to be
    inserted, until the block ends; the session's other tests share the database."""
    name = f"on_{account}"
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN IF NEW.account = '{account}'"
            f" THEN {action}; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        await conn.exec_driver_sql(
            f"CREATE TRIGGER {name} BEFORE INSERT ON event_chunks FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
    try:
        yield
    finally:
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TRIGGER {name} ON event_chunks")
            await conn.exec_driver_sql(f"DROP FUNCTION {name}()")


@pytest.fixture
async def refusing_store(store: SqlStore) -> SqlStore:
    await refuse_call_poison(store)
    return store


async def test_a_call_the_database_refuses_fails_alone(refusing_store: SqlStore, account: str) -> None:
    store = refusing_store
    batch = [event(account, "poison", 1), event(account, "good", 1), event(account, "good", 2)]
    try:
        await store.append(batch)  # PostgreSQL commits now; SQLite journals it and folds later
    except CallFailedError:
        assert store.dialect == "postgresql"
    assert [e.seq for e in await store.events(account, "good")] == [1, 2]  # SQLite: this read folds
    assert store.call_failed(account, "poison")
    assert not store.call_failed(account, "good")
    await store.append([event(account, "good", 3), event(account, "other", 1)])
    assert [e.seq for e in await store.events(account, "good")] == [1, 2, 3]
    assert [e.seq for e in await store.events(account, "other")] == [1]
    assert store.healthy
    assert not store.stalled


async def test_on_postgresql_the_appends_of_a_refused_call_fail_and_the_others_commit(
    pg_url: str, account: str
) -> None:
    """(SQLite journals a commit before it folds it: its producer was acked before the refusal.)"""
    store = SqlStore(pg_url)
    await store.start()
    try:
        await refuse_call_poison(store)
        first = store.append([event(account, "poison", 1)])
        second = store.append([event(account, "fine", 1)])
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], CallFailedError)
        assert results[1] is None
        assert [e.seq for e in await store.events(account, "fine")] == [1]
    finally:
        await store.close()


async def test_the_rows_a_fold_could_not_file_are_kept_in_the_quarantine_file(
    embedded_store: SqlStore, db_path: Path, account: str
) -> None:
    await refuse_call_poison(embedded_store)
    await embedded_store.append([event(account, "poison", 1), event(account, "fine", 1)])
    assert [e.seq for e in await embedded_store.events(account, "fine")] == [1]
    with open(quarantine_path(str(db_path)), "rb") as kept_file:  # noqa: ASYNC230 - a test's small file
        kept = [orjson.loads(line) for line in kept_file.read().splitlines()]
    assert [(row[0], row[1], row[2], row[3]) for row in kept] == [(account, "poison", 1, 1)]
    # The journal is folded: nothing is left to fold the same rows again on every read.
    assert not embedded_store._fold_needed()


async def test_on_postgresql_a_lone_call_the_database_refuses_fails_and_takes_no_more(
    pg_url: str, account: str
) -> None:
    """A batch of one call is the common case on a quiet node: the probe tells a refused row
    from an outage there too. Once failed, the call's later events are not stored, even after
    the database would take them again: its history must not go on past the hole."""
    store = SqlStore(pg_url)
    await store.start()
    try:
        await refuse_call_poison(store)
        with pytest.raises(CallFailedError):
            await store.append([event(account, "poison", 1)])
        assert store.healthy
        assert store.call_failed(account, "poison")
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("DROP TRIGGER refuse_poison ON event_chunks"))
        with pytest.raises(CallFailedError):
            await store.append([event(account, "poison", 2), event(account, "fine", 1)])
        assert [e.seq for e in await store.events(account, "poison")] == []
        assert [e.seq for e in await store.events(account, "fine")] == [1]
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["agent.state", "call.ended"])  # the one-statement writer; a transaction
async def test_on_postgresql_a_call_whose_commits_lose_their_connection_is_not_failed(
    pg_url: str, account: str, kind: str
) -> None:
    """A PostgreSQL that is shutting down ends its sessions (57P01) while a probe on another
    connection may still get through: the commit and the call's own retry both lose their
    connection. That is an outage, not the database refusing the call's rows: the call is not
    failed for good, and its events are stored once it is appended again (as a repair does):
    failed, the events its subscribers received live would never be stored."""
    store = SqlStore(pg_url)
    await store.start()
    try:
        async with account_trigger(store, account, "PERFORM pg_terminate_backend(pg_backend_pid())"):
            with pytest.raises(StoreUnavailableError) as caught:
                await store.append([event(account, "c1", 1), event(account, "c1", 2, kind)])
        assert not isinstance(caught.value, CallFailedError)
        assert not store.call_failed(account, "c1")
        await store.append([event(account, "c1", 1), event(account, "c1", 2, kind)], again=True)
        store.settle(account, "c1")
        assert [e.seq for e in await store.events(account, "c1")] == [1, 2]
    finally:
        await store.close()


def test_errors_are_told_apart_by_what_they_say() -> None:
    """A statement the database refuses fails its call; a connection or a server that failed is
    an outage; an error that says neither (no SQLSTATE) is left to a probe of the database."""

    class DriverError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert refused_rows(DriverError("23505")) is True  # a unique key
    assert refused_rows(DriverError("P0001")) is True  # a trigger's RAISE
    assert refused_rows(DriverError("57P01")) is False  # the server shutting down
    assert refused_rows(DriverError("25P03")) is False  # a session ended for idling in its transaction
    assert refused_rows(DriverError("55P03")) is False  # a lock not had
    assert refused_rows(sqlite3.IntegrityError("x")) is True
    assert refused_rows(sqlite3.OperationalError("database is locked")) is False
    assert refused_rows(OverflowError("Python int too large to convert to SQLite INTEGER")) is None


async def test_a_call_whose_rows_fail_with_an_error_that_says_nothing_fails_alone(
    store: SqlStore, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error without a SQLSTATE (a driver's own check of a value, a value Python could not
    bind) while the database writes fine is the call's, not an outage: the call fails once, the
    store stays healthy and takes the other calls' events (before, the store reported itself
    down and the call was stored again, and failed again, at every repair)."""
    commit = store._commit

    async def commit_refusing_poison(events: list[Event]) -> None:
        if any(e.call_id == "poison" for e in events):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        await commit(events)

    monkeypatch.setattr(store, "_commit", commit_refusing_poison)
    with contextlib.suppress(CallFailedError):
        await store.append([event(account, "poison", 1), event(account, "good", 1)])
    assert store.call_failed(account, "poison")
    assert store.healthy
    await store.append([event(account, "good", 2)])
    assert [e.seq for e in await store.events(account, "good")] == [1, 2]
