"""The embedded store's commits as journal rows, and the fold that files them (SQLite only).

A commit that brings one or two events for each of many calls (a live fan-out: every ingest frame
touches a few dozen calls once each) cost SQLite most of its time in pages, not rows: each call's
chunk lands on its own leaf of the primary key's index and its `calls` row is rewritten, so a
commit of 15 events wrote 18 pages to the log (73 KiB), 14 µs of the writer's time per event.
Commits are journaled instead (store/journal.py): one row per call (`log_rows`) appended to a
file, with no SQLite work and no round trip to the writer process at all.

About once a second, and before anything reads calls or events, the journal is folded: the writer
process reads its files and files each journaled call's events as chunks and merges its `calls`
row (`sqlite_process.merge_log_rows`), in one transaction. A call's pages are then written once
per fold instead of once per commit. Ingest's dense commits (dozens of events per call) were
written straight as chunks until the journal's fold moved to the writer process: journaled, the
node no longer waits for a SQLite transaction per commit (bench/README.md, journal-all). The
`event_log` table held these rows before the journal did; `FOLD` files what an earlier version
left in it.

Reads see every committed event either way: `SqlStore` folds before it reads, and a node that
crashed with rows in the journal folds them before its first read.
"""

from __future__ import annotations

from typing import Final

from callstream.events import ENDED, FINAL, PARTIAL
from callstream.store.chunks import CallEvents, sentiment_score

FOLD_EVERY_S: Final = 1.0
# Or sooner, once the journal holds this many rows: a fold's transaction grows with its rows, and
# a node pinned to one core waits for it (bench.sqlite_floor --calls 4 --per-call 1: ~2 µs a row).
FOLD_AT_ROWS: Final = 2000
# A commit waits for the fold in flight once the journal holds this much not folded yet: a node
# taking events faster than its writer process files them slows its producers down (their acks
# wait) instead of piling up a journal that every read would then have to wait for.
JOURNAL_MAX_BYTES: Final = 64 * 1024 * 1024

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
