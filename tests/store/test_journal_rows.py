"""The journal's rows and their fold (store/journal.py): which commits go there, what a row
holds, and that every read, restart and downgrade sees the logged events as if they were chunks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from callstream.events import Event
from callstream.store import SqlStore
from callstream.store.chunks import by_call, chunk_rows, final_rows
from callstream.store.fold_process import merge_journal_rows, read_records
from callstream.store.journal import JOURNAL_COLUMNS, JournalRow, journal_rows
from callstream.store.sums import MinuteRow, merged_minutes
from callstream.turns import Marks
from tests.store.test_store_contract import event


def journaled(batch: list[Event]) -> list[JournalRow]:
    rows = journal_rows(by_call(batch))
    assert rows is not None
    return rows


async def test_every_commit_that_ends_no_call_is_journaled_however_dense(store: SqlStore, db_path: Path) -> None:
    """One row per call of each commit, whether it brings one event per call or hundreds; a
    commit that ends a call takes the SQLAlchemy path (its webhook hooks) and folds the rest."""
    await store.append([event("acme", f"c{k}", 1) for k in range(40)])  # one each
    assert logged_rows(db_path) == 40
    await store.append([event("acme", "c1", seq) for seq in range(2, 502)])  # 500 of one call
    assert logged_rows(db_path) == 41
    await store.append([event("acme", "c2", 2, "transcript.partial")])  # a partial: its seq still counts
    assert logged_rows(db_path) == 42
    await store.append([event("acme", "c3", 2, "call.ended", status="completed", duration_ms=1)])
    assert logged_rows(db_path) == 0
    assert len(await store.events("acme", "c1")) == 501


def test_a_log_row_holds_a_calls_stored_frames_and_what_its_calls_row_needs() -> None:
    batch = [
        event("acme", "c1", 7, "transcript.final", sentiment={"score": 0.5}),
        event("acme", "c2", 3, "transcript.partial"),
        event("acme", "c1", 8, "transcript.partial"),
    ]
    rows = [dict(zip(JOURNAL_COLUMNS, row, strict=True)) for row in journaled(batch)]
    assert rows == [
        {"account": "acme", "call_id": "c1", "first_seq": 7, "last_seq": 7, "events": f"[{batch[0].frame}]",
         "call_last_seq": 8, "started_at": 7_000, **sums(sentiment_sum=0.5, sentiment_n=1, last_ts=8_000), "minutes": [],
         "finals": [(7, "user", "hello")]},
        # partials only: no frames, but the call's seq moved on (a restart must not reuse 3)
        {"account": "acme", "call_id": "c2", "first_seq": None, "last_seq": None, "events": "[]",
         "call_last_seq": 3, "started_at": 3_000, **sums(last_ts=3_000), "minutes": [], "finals": []},
    ]


def test_a_log_row_carries_what_the_calls_row_needs_exactly_as_the_chunks_path_does() -> None:
    """The journal's rows are built apart from the chunks and calls rows of the other commits
    (PostgreSQL's, and those that end a call); a fold of them must give the same chunks and the
    same calls rows, or a call's summary would depend on which path its events took."""
    batch = [
        event("acme", "c1", 1, "agent.state"),
        event("acme", "c1", 2, "transcript.final", sentiment={"score": 0.5}),
        event("acme", "c2", 1, "transcript.partial"),
        event("acme", "c1", 3, "transcript.final", sentiment={"score": -1}),
        event("acme", "c1", 4, "transcript.final", sentiment="unknown"),
        event("acme", "c1", 5, "transcript.partial"),
        event("beta", "c1", 9, "transcript.final"),
        event("acme", "c1", 6, "agent.state", marks=Marks(640), state="speaking", latency_ms=640),
        event("acme", "c1", 7, "agent.state", marks=Marks(None, True, 2_000, 0), state="listening", interrupted=True),
        event("acme", "c2", 2, "agent.state", marks=Marks(1_900), state="speaking", latency_ms=1_900),
        event("beta", "c1", 10, "agent.state", state="speaking", latency_ms=700),  # rebuilt from its frame
        # metadata: the last change of each call's commit is its row's
        Event("acme", "c2", 3, 3_000, "agent.state", {"state": "thinking", "metadata": {"a": 1}}, meta={"a": 1}),
        Event("acme", "c2", 4, 4_000, "agent.state", {"state": "thinking", "metadata": {"b": 2}}, meta={"a": 1, "b": 2}),
        Event("acme", "c2", 5, 5_000, "agent.state", {"state": "listening"}, meta={"a": 1, "b": 2}),
    ]
    grouped = by_call(batch)

    chunks, calls, minutes, finals = merge_journal_rows(journaled(batch))

    assert chunks == chunk_rows(grouped)
    assert finals == final_rows(grouped)  # what search indexes, whichever path
    assert len(finals) == 4
    found: list[MinuteRow] = []
    assert calls == SqlStore._call_rows(grouped, found)
    assert sorted(minutes) == sorted(merged_minutes(found))
    assert sum(n for *_, n in minutes) == 4  # three turns (one rebuilt from its frame), an interruption
    assert [(c["call_id"], c["metadata"], c["metadata_seq"]) for c in calls if c["account"] == "acme"] == [
        ("c1", None, 0),
        ("c2", '{"a":1,"b":2}', 4),
    ]


def sums(**given: Any) -> dict[str, Any]:
    """A calls row's sums: nothing measured but `given`."""
    nothing = {"sentiment_sum": 0.0, "sentiment_n": 0, "turns": 0, "latency_max": 0, "latencies": ""}
    return {
        **nothing, "interruptions": 0, "agent_talk_ms": 0, "user_talk_ms": 0, "metadata": None, "metadata_seq": 0,
        **given,
    }


def test_a_commit_that_ends_a_call_is_not_journaled() -> None:
    """Its `call.ended` hooks (webhooks, the outbox) run in the SQLAlchemy transaction."""
    ended = event("acme", "c2", 4, "call.ended", duration_ms=1_000, status="completed")
    assert journal_rows(by_call([event("acme", "c1", 1), ended])) is None


@pytest.fixture
def store(embedded_store: SqlStore) -> SqlStore:
    return embedded_store


def logged_rows(db_path: Path) -> int:
    """Rows not folded yet: in the node's journal files."""
    return sum(len(read_records(str(path))) for path in db_path.parent.glob(db_path.name + "-events.*"))


async def test_commits_of_one_call_read_back_as_one_history(store: SqlStore, db_path: Path) -> None:
    await store.append([event("acme", "c1", 2, "transcript.final", sentiment={"score": 1.0}), event("acme", "c2", 1)])
    assert logged_rows(db_path) == 2  # c1 and c2
    await store.append([event("acme", "c1", seq) for seq in range(3, 11)])
    assert logged_rows(db_path) == 3
    await store.events("acme", "c2")  # a read folds first
    assert logged_rows(db_path) == 0
    await store.append([event("acme", "c1", 20, "transcript.partial"), event("acme", "c3", 1)])
    assert logged_rows(db_path) == 2  # c1 and c3: not folded yet

    got = await store.events("acme", "c1")

    assert logged_rows(db_path) == 0
    assert [e.seq for e in got] == list(range(2, 11))
    call = await store.get_call("acme", "c1")
    assert call is not None
    # the earliest event's time over two folds; the partial's seq
    assert (call.started_at, call.last_seq, call.sentiment) == (2_000, 20, 1.0)
    calls, _ = await store.list_calls("acme", status="live", limit=10, cursor=None)
    assert sorted(c.call_id for c in calls) == ["c1", "c2", "c3"]


async def test_the_journal_is_folded_within_seconds_without_a_read(store: SqlStore, db_path: Path) -> None:
    await store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    assert logged_rows(db_path) == 2
    for _ in range(50):
        if not logged_rows(db_path):
            break
        await asyncio.sleep(0.1)
    assert logged_rows(db_path) == 0
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT call_id, last_seq FROM calls ORDER BY call_id").fetchall() == [("c1", 1), ("c2", 1)]


async def test_a_call_ended_commit_files_the_journal_first(store: SqlStore) -> None:
    """The `call.ended` commit runs the webhook hooks, which read the call's events and row."""
    seen: list[list[int]] = []

    async def hook(conn: object, ended: Event) -> None:
        from callstream.store.sql import read_events

        seen.append([e.seq for e in await read_events(conn, ended.account, ended.call_id)])  # type: ignore[arg-type]

    store.ended_hooks.append(hook)
    await store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    await store.append([event("acme", "c1", 2, "call.ended")])
    assert seen == [[1, 2]]


def test_journaled_rows_of_one_call_fold_into_one_chunk_and_one_calls_row() -> None:
    first = [event("acme", "c1", 3, "transcript.final", sentiment={"score": 0.5}), event("acme", "c2", 1)]
    second = [event("acme", "c1", 4, "transcript.partial")]
    third = [event("acme", "c1", 5, "transcript.final", sentiment={"score": -0.25})]
    rows = [row for batch in (first, second, third) for row in journaled(batch)]

    chunks, calls, _, _ = merge_journal_rows(rows)

    assert [(c[0], c[1], c[2], c[3]) for c in chunks] == [("acme", "c1", 3, 5), ("acme", "c2", 1, 1)]
    assert [f["seq"] for f in orjson.loads(chunks[0][4])] == [3, 5]  # the partial is not stored
    by_id = {c["call_id"]: c for c in calls}
    assert {k: by_id["c1"][k] for k in ("last_seq", "started_at", "sentiment_sum", "sentiment_n", "status")} == {
        "last_seq": 5, "started_at": 3_000, "sentiment_sum": 0.25, "sentiment_n": 2, "status": "live",
    }
    assert by_id["c2"]["last_seq"] == 1


def test_a_call_with_only_partials_journaled_gets_no_chunk_but_its_last_seq() -> None:
    rows = journaled([event("acme", "c1", 7, "transcript.partial")])
    chunks, calls, _, _ = merge_journal_rows(rows)
    assert chunks == []
    assert [(c["call_id"], c["last_seq"]) for c in calls] == [("c1", 7)]


def test_a_fold_cuts_a_busy_calls_journaled_events_into_bounded_chunks() -> None:
    """Reads decode whole chunks: a fold keeps each chunk's seqs within `MAX_CHUNK_EVENTS`."""
    rows = [row for seq in range(1, 601) for row in journaled([event("acme", "c1", seq)])]
    chunks, calls, _, _ = merge_journal_rows(rows)
    assert [(c[2], c[3]) for c in chunks] == [(1, 256), (257, 512), (513, 600)]
    assert [f["seq"] for c in chunks for f in orjson.loads(c[4])] == list(range(1, 601))
    assert [c["last_seq"] for c in calls] == [600]
