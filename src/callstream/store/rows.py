"""The one spec of the rows that store events: a call's chunks, how a `calls` row merges, the
per-minute quality rows and the final transcript lines search reads.

Every write path uses it: the SQLAlchemy commit (`sql.py`), PostgreSQL's one-statement commit
(`pg_writer.py`) and the journal's fold (`fold_process.py`, a plain script beside this module:
hence the standard library only here). Each table's conflict key (`*_KEY`) and what a row does
to the one it meets there are said here once: the SQL text writers take the whole clause
(`chunks_insert_sql`, `calls_upsert_sql`, `minutes_upsert_sql`, `finals_insert_sql`), the
SQLAlchemy commit the keys and the SET expressions (`calls_update_sql`, `minutes_update_sql`).
A calls row of a batch merges into the stored one by the rules of `CALL_MERGE`, in SQL
(`calls_update_sql`) and in Python (`merge_call_row`) alike, so a call's summary never depends on
which path its events took.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

# A read that wants one event decodes its whole chunk: a chunk holds at most 256 events, and a new
# one starts once it holds 1 MiB of frames (an event larger than that has a chunk of its own).
MAX_CHUNK_EVENTS: Final = 256
MAX_CHUNK_BYTES: Final = 1024 * 1024
CHUNK_COLUMNS: Final = ("account", "call_id", "first_seq", "last_seq", "events")
# A chunk is met again by its call and last seq: a fold run again after a crash, or a batch stored
# again after an outage, files the same chunks, and the one held is kept.
CHUNK_KEY: Final = ("account", "call_id", "last_seq")
# What a commit's events of one call add to its row (`store.sums.call_sums`), after the columns
# every row has.
SUM_COLUMNS: Final = (
    "sentiment_sum", "sentiment_n", "last_ts", "turns", "latency_max", "latencies", "interruptions", "agent_talk_ms",
    "user_talk_ms", "metadata", "metadata_seq",
)
CALL_COLUMNS: Final = (
    "account", "call_id", "status", "started_at", "ended_at", "duration_ms", "end_status", "reason", "last_seq",
    *SUM_COLUMNS,
)
CALL_KEY: Final = ("account", "call_id")  # one row a call, merged by `CALL_MERGE`
# A call's row keeps the latencies of its turns (for its p50 and p90) until the list is this long.
LATENCIES_MAX_CHARS: Final = 8000

# How a batch's calls row (`new`) merges into the stored one (`old`), column by column. Every rule
# gives the same row whatever order the batches commit in (two nodes may feed one call), but
# `latencies` past its cap, which keeps the first batches' values.
CALL_MERGE: Final = {
    "last_seq": "max",  # partials included: a restart must not hand a seq out twice
    "started_at": "min",
    "status": "ended_wins",
    "ended_at": "new_if_set",
    "duration_ms": "new_if_set",
    "end_status": "new_if_set",
    "reason": "new_if_set",
    "sentiment_sum": "add",
    "sentiment_n": "add",
    "last_ts": "max",
    "turns": "add",
    "latency_max": "max",
    "latencies": "append",
    "interruptions": "add",
    "agent_talk_ms": "add",
    "user_talk_ms": "add",
    # The metadata of the row whose change has the higher seq (before `metadata_seq` moves on).
    "metadata": "newest_metadata",
    "metadata_seq": "max",
}

# A final transcript line, indexed for search (`tables.transcript_finals`); a journal row carries
# its call's as [seq, speaker, text] each.
FINAL_COLUMNS: Final = ("account", "call_id", "seq", "speaker", "text")
FINAL_KEY: Final = ("account", "call_id", "seq")  # one line an event; the one held is kept

# SQLite's search index is merged as finals are stored, a bounded step a commit (the migration
# turns FTS5's own automerge off): `fts_merge` after each commit that inserted finals merges up to
# that many pages of the index's segments, two of a level into one of the next, so the index keeps
# about one segment a level (a query opens each segment) and no commit waits for a merge larger
# than what it wrote calls for. FTS5's crisis merge (16 segments on a level) stays the backstop.
FTS_MERGE_SQL: Final = "INSERT INTO transcript_fts (transcript_fts, rank) VALUES ('merge', ?)"
FTS_MERGE_PAGES_MIN: Final = 16  # a commit of a few lines: about 64 KiB of merging
FTS_MERGE_FINALS_PER_PAGE: Final = 4  # a page of index holds some 40 lines; merging touches each level


def fts_merge(finals: int) -> tuple[str, list[Any]]:
    """The bounded merge step after a commit that inserted `finals` lines (SQLite): pages in
    proportion to what was written, as FTS5's automerge would do in one lump every 64 pages."""
    return FTS_MERGE_SQL, [max(FTS_MERGE_PAGES_MIN, finals // FTS_MERGE_FINALS_PER_PAGE)]


# Per account and minute, what /v1/stats sums (`store.sums.call_sums`).
MINUTE_COLUMNS: Final = ("account", "minute", "name", "n")
MINUTE_KEY: Final = ("account", "minute", "name")  # a row met there has its `n` added to


def new_call_row(account: str, call_id: str, started_at: int, last_seq: int) -> dict[str, Any]:
    """A live call's row, with nothing ended and nothing summed yet."""
    return {
        "account": account, "call_id": call_id, "status": "live", "started_at": started_at, "ended_at": None,
        "duration_ms": None, "end_status": None, "reason": None, "last_seq": last_seq, "sentiment_sum": 0.0,
        "sentiment_n": 0, "last_ts": started_at, "turns": 0, "latency_max": 0, "latencies": "", "interruptions": 0,
        "agent_talk_ms": 0, "user_talk_ms": 0, "metadata": None, "metadata_seq": 0,
    }


def append_latencies(old: str, new: str) -> str:
    """The `append` rule: space-separated values, until `LATENCIES_MAX_CHARS`."""
    if not new or len(old) >= LATENCIES_MAX_CHARS:
        return old
    return f"{old} {new}" if old else new


def merge_call_row(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge `new` into `old` by `CALL_MERGE` (what the upsert does in SQL)."""
    for column, rule in CALL_MERGE.items():
        a, b = old[column], new[column]
        if rule == "max":
            old[column] = max(a, b)
        elif rule == "min":
            old[column] = min(a, b)
        elif rule == "ended_wins":
            old[column] = "ended" if b == "ended" else a
        elif rule == "new_if_set":
            old[column] = a if b is None else b
        elif rule == "append":
            old[column] = append_latencies(a, b)
        elif rule == "newest_metadata":
            old[column] = b if new["metadata_seq"] > old["metadata_seq"] else a
        else:
            old[column] = a + b


def merge_minute_rows(into: dict[tuple[str, int, str], int], minutes: Sequence[Sequence[Any]]) -> None:
    """Add `minutes` ((account, minute, name, n) each) into `into`: one row per key, as a
    PostgreSQL upsert needs (it may not touch a row twice in one statement)."""
    for account, minute, name, n in minutes:
        key = (account, minute, name)
        into[key] = into.get(key, 0) + n


def calls_update_sql(dialect: str, table: str = "calls") -> dict[str, str]:
    """`CALL_MERGE` as the SET expressions of `INSERT INTO calls … ON CONFLICT DO UPDATE`."""
    greatest, least = ("max", "min") if dialect == "sqlite" else ("greatest", "least")
    templates = {
        "max": f"{greatest}({table}.{{c}}, excluded.{{c}})",
        "min": f"{least}({table}.{{c}}, excluded.{{c}})",
        "ended_wins": f"CASE WHEN excluded.{{c}} = 'ended' THEN 'ended' ELSE {table}.{{c}} END",
        "new_if_set": f"coalesce(excluded.{{c}}, {table}.{{c}})",
        "add": f"{table}.{{c}} + excluded.{{c}}",
        "append": (
            f"CASE WHEN excluded.{{c}} = '' OR length({table}.{{c}}) >= {LATENCIES_MAX_CHARS} THEN {table}.{{c}}"
            f" WHEN {table}.{{c}} = '' THEN excluded.{{c}} ELSE {table}.{{c}} || ' ' || excluded.{{c}} END"
        ),
        # SET expressions all read the row as it was: `metadata_seq` here is the old one.
        "newest_metadata": (
            f"CASE WHEN excluded.metadata_seq > {table}.metadata_seq THEN excluded.{{c}} ELSE {table}.{{c}} END"
        ),
    }
    return {column: templates[rule].format(c=column) for column, rule in CALL_MERGE.items()}


def _on_conflict(key: Sequence[str], updates: dict[str, str] | None = None) -> str:
    """The ON CONFLICT clause at `key`: the row held kept, or updated by `updates` (SET expressions)."""
    if updates is None:
        return f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
    assignments = ", ".join(f"{column} = {expr}" for column, expr in updates.items())
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {assignments}"


def calls_upsert_sql(dialect: str, insert: str) -> str:
    """`insert` (an `INSERT INTO calls …` of `CALL_COLUMNS`) merged by `CALL_MERGE` on conflict."""
    return f"{insert} {_on_conflict(CALL_KEY, calls_update_sql(dialect))}"


def chunks_insert_sql(insert: str) -> str:
    """`insert` (an `INSERT INTO event_chunks …` of `CHUNK_COLUMNS`), chunks already held kept
    (`CHUNK_KEY`); the same text for SQLite and PostgreSQL."""
    return f"{insert} {_on_conflict(CHUNK_KEY)}"


def finals_insert_sql(insert: str) -> str:
    """`insert` (an `INSERT INTO transcript_finals …` of `FINAL_COLUMNS`), rows already held kept
    (a fold run again after a crash files the same lines)."""
    return f"{insert} {_on_conflict(FINAL_KEY)}"


def minutes_update_sql(table: str = "quality_minutes") -> dict[str, str]:
    """What a `quality_minutes` row does to the one it meets at `MINUTE_KEY`: its `n` is added."""
    return {"n": f"{table}.n + excluded.n"}


def minutes_upsert_sql(insert: str, table: str = "quality_minutes") -> str:
    """`insert` (an `INSERT INTO quality_minutes …` of `MINUTE_COLUMNS`), added to rows it meets."""
    return f"{insert} {_on_conflict(MINUTE_KEY, minutes_update_sql(table))}"
