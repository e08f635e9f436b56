"""PostgreSQL's one-statement event writer (store/pg_writer.py): all or nothing, and it outlives a
refused statement and a dropped connection."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from callstream.quality import latency_name
from callstream.store import CallFailedError, SqlStore, StoreUnavailableError
from callstream.store.chunks import by_call, chunk_rows, final_rows
from callstream.store.pg_writer import columns
from callstream.store.sums import MinuteRow, merged_minutes
from callstream.turns import Marks
from tests.store.test_call_failure import account_trigger
from tests.store.test_store_contract import event


def test_the_statement_gets_each_column_as_one_array() -> None:
    grouped = by_call([
        event("acme", "c1", 1, "transcript.final", sentiment={"score": 0.5}),
        event("acme", "c2", 4, marks=Marks(1_250), state="speaking", latency_ms=1_250),
    ])
    minutes: list[MinuteRow] = []
    calls = SqlStore._call_rows(grouped, minutes)
    got = columns(chunk_rows(grouped), calls, merged_minutes(minutes), final_rows(grouped))
    assert got[:4] == [["acme", "acme"], ["c1", "c2"], [1, 4], [1, 4]]
    assert got[5:11] == [["acme", "acme"], ["c1", "c2"], [1_000, 4_000], [1, 4], [0.5, 0.0], [1, 0]]
    # last_ts, turns, latency_max, latencies, interruptions, agent and user talk, metadata and its seq
    assert got[11:18] == [[1_000, 4_000], [0, 1], [0, 1_250], ["", "1250"], [0, 0], [0, 0], [0, 0]]
    assert got[18:20] == [[None, None], [0, 0]]
    assert got[20:24] == [["acme"], [0], [latency_name(1_250)], [1]]
    assert got[24:] == [["acme"], ["c1"], [1], ["user"], ["hello"]]  # the finals search indexes
    partials_only = by_call([event("acme", "c1", 2, "transcript.partial")])
    assert columns(chunk_rows(partials_only), SqlStore._call_rows(partials_only, []))[:5] == [[]] * 5


@pytest.fixture
def store_url(pg_url: str) -> str:
    """PostgreSQL only: `store` (conftest) is then a PostgreSQL store."""
    return pg_url


async def test_a_refused_statement_changes_nothing_and_the_writer_keeps_serving(store: SqlStore, account: str) -> None:
    await store.append([event(account, "c1", 1)])
    async with account_trigger(store, account, "RAISE EXCEPTION 'disk says no'"):
        with pytest.raises(StoreUnavailableError):
            await store.append([event(account, "c1", 2), event(account, "c2", 1)])
        assert [e.seq for e in await store.events(account, "c1")] == [1]
        assert await store.get_call(account, "c2") is None  # the calls upsert is the same statement
        call = await store.get_call(account, "c1")
        assert call is not None
        assert call.last_seq == 1
    # The calls the database refused failed (their history would have a hole): they take no more
    # events; the account's other calls, and the writer, go on.
    with pytest.raises(CallFailedError):
        await store.append([event(account, "c1", 3), event(account, "c2", 2)])
    await store.append([event(account, "c3", 1)])
    assert [e.seq for e in await store.events(account, "c1")] == [1]
    assert [e.seq for e in await store.events(account, "c3")] == [1]


async def test_a_dropped_connection_fails_at_most_one_batch(store: SqlStore, account: str) -> None:
    await store.append([event(account, "c1", 1)])
    async with store.engine.begin() as conn:  # the writer's connection: the one idle in no transaction
        killed = (await conn.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%unnest%'"
        ))).scalars().all()
    assert killed == [True]
    try:
        await store.append([event(account, "c1", 2)])
        expected = [1, 2, 3]
    except StoreUnavailableError:  # the batch on the dead connection; the producer is told
        expected = [1, 3]
    await store.append([event(account, "c1", 3)])
    assert [e.seq for e in await store.events(account, "c1")] == expected
