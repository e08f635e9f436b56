"""The embedded store's event writer: its own SQLite connection on its own thread.

Only the hot path lives here (event batches that do not end a call); everything else, including
the batches whose `call.ended` hooks write the webhook outbox in the same transaction, keeps the
SQLAlchemy path in `sql.py`. The statements mirror `SqlStore._commit` and `_calls_upsert`; the
store contract tests run both.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from callstream.events import Event

# Many rows per statement (`INSERT … VALUES (…), (…), …`): one sqlite3_step with the GIL released
# per chunk of rows. `executemany` released the GIL around each row's step and took it back to
# bind the next row: a thousand GIL hand-offs per commit, each waiting behind the event loop on
# the same core, and the commit's latency is the fan-out's (fan-out waits for it). Chunks of
# 256, 16 and 1 rows keep the statement cache to three texts per table. Same CPU per row as
# executemany (bench/sqlite_floor.py measures it); SQLite's json_each, the other way to one step
# per batch, measured 14.7 µs a row against 8–9 when tried.
_EVENT_COLUMNS = ("account", "call_id", "seq", "ts", "type", "data")
_CALL_COLUMNS = (
    "account", "call_id", "status", "started_at", "ended_at", "duration_ms", "end_status", "reason",
    "last_seq", "sentiment_sum", "sentiment_n",
)
_INSERT_EVENTS = "INSERT INTO events ({columns}) VALUES {rows} ON CONFLICT (account, call_id, seq) DO NOTHING"
_UPSERT_CALLS = (
    "INSERT INTO calls ({columns}) VALUES {rows}"
    " ON CONFLICT (account, call_id) DO UPDATE SET"
    " last_seq = max(calls.last_seq, excluded.last_seq),"
    " status = CASE WHEN excluded.status = 'ended' THEN 'ended' ELSE calls.status END,"
    " ended_at = coalesce(excluded.ended_at, calls.ended_at),"
    " duration_ms = coalesce(excluded.duration_ms, calls.duration_ms),"
    " end_status = coalesce(excluded.end_status, calls.end_status),"
    " reason = coalesce(excluded.reason, calls.reason),"
    " sentiment_sum = calls.sentiment_sum + excluded.sentiment_sum,"
    " sentiment_n = calls.sentiment_n + excluded.sentiment_n"
)
_CHUNKS = (256, 16, 1)

Statement = tuple[str, list[Any]]


@functools.cache
def _sql(template: str, columns: tuple[str, ...], size: int) -> str:
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return template.format(columns=", ".join(columns), rows=", ".join([one] * size))


def _statements(template: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[Statement]:
    """`rows` as statements of 256, 16 or 1 rows each, with their parameters flattened."""
    out: list[Statement] = []
    start = 0
    for size in _CHUNKS:
        sql = _sql(template, columns, size)
        while len(rows) - start >= size:
            out.append((sql, [value for row in rows[start : start + size] for value in row]))
            start += size
    return out


class SqliteEventWriter:
    """The event writer's own SQLite connection on its own thread: one hop per batch.

    Through SQLAlchemy + aiosqlite a commit took about six thread round trips (begin, insert,
    upsert, commit, …), each waiting for the event loop and for the GIL behind the fan-out, and
    SQLAlchemy's per-statement Python work: the store cost half a core at 1,000 events/s and
    delayed every fan-out (which waits for the commit). Here the whole transaction is one call
    into the stdlib `sqlite3` module: a few statements of up to 256 rows, each one step with the
    GIL released.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._db: sqlite3.Connection | None = None

    async def commit(self, events: Sequence[Event], calls: list[dict[str, Any]]) -> None:
        """Store `events` (none of them partial) and merge `calls` (`SqlStore._call_rows`)."""
        statements = self.statements(events, calls)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._commit_sync, statements)

    @staticmethod
    def statements(events: Sequence[Event], calls: list[dict[str, Any]]) -> list[Statement]:
        """The transaction's statements, built on the event loop: the writer thread then holds
        the GIL only to hand each statement to SQLite."""
        rows = [(e.account, e.call_id, e.seq, e.ts, e.type, orjson.dumps(e.data).decode()) for e in events]
        merged = [tuple(c[k] for k in _CALL_COLUMNS) for c in calls]
        return _statements(_INSERT_EVENTS, _EVENT_COLUMNS, rows) + _statements(_UPSERT_CALLS, _CALL_COLUMNS, merged)

    def _commit_sync(self, statements: list[Statement]) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, parameters in statements:
                db.execute(sql, parameters)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk does)
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()

        self._executor.submit(shut).result()
        self._executor.shutdown()
