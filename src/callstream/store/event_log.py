"""The embedded store's sparse commits, and the fold that files them (SQLite only).

A commit that brings one or two events for each of many calls (a live fan-out: every ingest frame
touches a few dozen calls once each) cost SQLite most of its time in pages, not rows: each call's
chunk lands on its own leaf of the primary key's index and its `calls` row is rewritten, so a
commit of 15 events wrote 18 pages to the log (73 KiB), 14 µs of the writer's time per event.
Those commits are journaled instead (store/journal.py): one row per call (`log_rows`) appended to
a file, with no SQLite work and no round trip to the writer process at all.

About once a second, and before anything reads calls or events, the journal is folded: one
transaction files each journaled call's events as one chunk and merges its `calls` row
(`merge_log_rows`). A call's pages are then written once per fold instead of once per commit.
Commits with several events per call (ingest's batches) are cheaper written straight as chunks,
and still are: the per-call pages are shared by many events there. The `event_log` table held
these rows before the journal did; `FOLD` files what an earlier version left in it.

Reads see every committed event either way: `SqlStore` folds before it reads, and a node that
crashed with rows in the journal folds them before its first read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from callstream.events import ENDED, FINAL, PARTIAL
from callstream.store.chunks import MAX_CHUNK_EVENTS, CallEvents, ChunkRow, sentiment_score

# Below this many stored events per call of a commit, the log is cheaper (bench.sqlite_floor:
# 1 a call 6.6 against 13.1 µs an event, 2 a call 4.9 against 5.7; 10 a call 3.0 against 1.4).
DENSE_EVENTS_PER_CALL: Final = 4

FOLD_EVERY_S: Final = 1.0
# Or sooner, once the journal holds this many rows: a fold's transaction grows with its rows, and
# a node pinned to one core waits for it (bench.sqlite_floor --calls 4 --per-call 1: ~2 µs a row).
FOLD_AT_ROWS: Final = 2000

LOG_COLUMNS: Final = (
    "account", "call_id", "first_seq", "last_seq", "events", "call_last_seq", "started_at", "sentiment_sum",
    "sentiment_n",
)
LogRow = tuple[str, str, int | None, int | None, str, int, int, float, int]

# One transaction (with the writer's BEGIN IMMEDIATE … COMMIT around it): a call's logged events
# become one chunk (frames joined as text; reads sort a chunk's events by seq), its calls row takes
# the highest seq (partials included: a restart must not hand a seq out twice), the earliest start
# and the sentiment scores; then the log is empty. `WHERE true`: SQLite's parser needs a WHERE
# before ON CONFLICT in an INSERT … SELECT.
FOLD: Final = (
    "INSERT INTO event_chunks (account, call_id, first_seq, last_seq, events)"
    " SELECT account, call_id, min(first_seq), max(last_seq),"
    " '[' || group_concat(substr(events, 2, length(events) - 2), ',') || ']'"
    " FROM event_log WHERE first_seq IS NOT NULL GROUP BY account, call_id"
    " ON CONFLICT (account, call_id, last_seq) DO NOTHING",
    "INSERT INTO calls (account, call_id, status, started_at, last_seq, sentiment_sum, sentiment_n)"
    " SELECT account, call_id, 'live', min(started_at), max(call_last_seq), sum(sentiment_sum), sum(sentiment_n)"
    " FROM event_log WHERE true GROUP BY account, call_id"
    " ON CONFLICT (account, call_id) DO UPDATE SET"
    " last_seq = max(calls.last_seq, excluded.last_seq),"
    " started_at = min(calls.started_at, excluded.started_at),"
    " sentiment_sum = calls.sentiment_sum + excluded.sentiment_sum,"
    " sentiment_n = calls.sentiment_n + excluded.sentiment_n",
    "DELETE FROM event_log",
)


def is_sparse(stored: int, calls: int) -> bool:
    """Whether a commit (no `call.ended` in it) of `stored` non-partial events over `calls` calls
    is cheaper logged than written as chunks."""
    return stored < DENSE_EVENTS_PER_CALL * calls


def log_rows(grouped: CallEvents) -> list[LogRow] | None:
    """One row per call of the commit (`chunks.by_call`): its stored frames as one array and what
    the fold merges into its calls row (`SqlStore._call_rows`'s fields), built in one pass over the
    events. None if an event ends a call: such commits take the SQLAlchemy path, whose hooks write
    the webhook outbox in the same transaction."""
    rows: list[LogRow] = []
    for (account, call_id), held in grouped.items():
        frames: list[str] = []
        first_seq = last_seq = None  # of the stored events; None for partials only (the seq still moved on)
        score_sum, score_n = 0.0, 0
        for event in held:
            kind = event.type
            if kind == PARTIAL:
                continue
            if kind == ENDED:
                return None
            if first_seq is None:
                first_seq = event.seq
            last_seq = event.seq
            frames.append(event.frame)
            if kind == FINAL and (score := sentiment_score(event)) is not None:
                score_sum += score
                score_n += 1
        rows.append((
            account, call_id, first_seq, last_seq, f"[{','.join(frames)}]", held[-1].seq, held[0].ts, score_sum, score_n,
        ))
    return rows


def merge_log_rows(rows: Sequence[LogRow]) -> tuple[list[ChunkRow], list[dict[str, Any]]]:
    """Rows of the journal as one commit: per call its chunks (frames joined, a new chunk once a
    chunk's seqs would span more than `MAX_CHUNK_EVENTS`; reads sort a chunk's events by seq) and
    one calls row (`SqlStore._call_rows`'s shape), as `FOLD` does in SQL for the log table. Built on
    the event loop, so the writer process only inserts."""
    chunks: list[ChunkRow] = []
    open_chunks: dict[tuple[str, str], list[Any]] = {}  # first, last, frames of the call's chunk being filled
    merged: dict[tuple[str, str], list[Any]] = {}  # call last seq, started at, score sum, score n
    for account, call_id, first_seq, last_seq, events, call_last_seq, started_at, score_sum, score_n in rows:
        key = (account, call_id)
        call = merged.get(key)
        if call is None:
            merged[key] = [call_last_seq, started_at, score_sum, score_n]
        else:
            call[0] = max(call[0], call_last_seq)
            call[1] = min(call[1], started_at)
            call[2] += score_sum
            call[3] += score_n
        if first_seq is None or last_seq is None:
            continue
        chunk = open_chunks.get(key)
        if chunk is not None and max(chunk[1], last_seq) - min(chunk[0], first_seq) >= MAX_CHUNK_EVENTS:
            chunks.append((account, call_id, chunk[0], chunk[1], "[" + ",".join(chunk[2]) + "]"))
            chunk = None
        if chunk is None:
            open_chunks[key] = [first_seq, last_seq, [events[1:-1]]]
        else:
            chunk[0], chunk[1] = min(chunk[0], first_seq), max(chunk[1], last_seq)
            chunk[2].append(events[1:-1])
    for (account, call_id), (first, last, frames) in open_chunks.items():
        chunks.append((account, call_id, first, last, "[" + ",".join(frames) + "]"))
    calls = [
        {"account": account, "call_id": call_id, "status": "live", "started_at": started_at, "ended_at": None,
         "duration_ms": None, "end_status": None, "reason": None, "last_seq": call_last_seq,
         "sentiment_sum": score_sum, "sentiment_n": score_n}
        for (account, call_id), (call_last_seq, started_at, score_sum, score_n) in merged.items()
    ]
    return chunks, calls
