"""The embedded store's event writer: its own SQLite connection on its own thread.

Only the hot path lives here (event batches that do not end a call); everything else, including
the batches whose `call.ended` hooks write the webhook outbox in the same transaction, keeps the
SQLAlchemy path in `sql.py`. The statements mirror `SqlStore._commit` and `_calls_upsert`; the
store contract tests run both.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_INSERT_EVENTS = (
    "INSERT INTO events (account, call_id, seq, ts, type, data) VALUES (:account, :call_id, :seq, :ts, :type, :data)"
    " ON CONFLICT (account, call_id, seq) DO NOTHING"
)
_UPSERT_CALLS = (
    "INSERT INTO calls (account, call_id, status, started_at, ended_at, duration_ms, end_status, reason,"
    " last_seq, sentiment_sum, sentiment_n) VALUES (:account, :call_id, :status, :started_at, :ended_at,"
    " :duration_ms, :end_status, :reason, :last_seq, :sentiment_sum, :sentiment_n)"
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


class SqliteEventWriter:
    """The event writer's own SQLite connection on its own thread: one hop per batch.

    Through SQLAlchemy + aiosqlite a commit took about six thread round trips (begin, insert,
    upsert, commit, …), each waiting for the event loop and for the GIL behind the fan-out, and
    SQLAlchemy's per-statement Python work: the store cost half a core at 1,000 events/s and
    delayed every fan-out (which waits for the commit). Here the whole transaction is one call
    into the stdlib `sqlite3` module (executemany in C, the GIL released while SQLite works).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._db: sqlite3.Connection | None = None

    async def commit(self, events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._commit_sync, events, calls)

    def _commit_sync(self, events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if events:
                db.executemany(_INSERT_EVENTS, events)
            db.executemany(_UPSERT_CALLS, calls)
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
