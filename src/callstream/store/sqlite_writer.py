"""The embedded store's event writer: its own SQLite connection, in a process of its own.

Only the hot path lives here (dense event batches that do not end a call, as chunks, and the
folds of the journal, store/journal.py, which holds the sparse ones); everything else, including
the batches whose `call.ended` hooks write the webhook outbox in the same transaction, keeps the
SQLAlchemy path in `sql.py`. The statements
mirror `SqlStore._commit` and `_calls_upsert`; the store contract tests run both.
"""

from __future__ import annotations

import asyncio
import functools
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from callstream.store import sqlite_process
from callstream.store.chunks import CHUNK_COLUMNS, ChunkRow
from callstream.store.event_log import FOLD, LogRow, merge_log_rows
from callstream.store.sqlite_process import Statement

# Many rows per statement (`INSERT … VALUES (…), (…), …`): one sqlite3_step per statement,
# where `executemany` stepped (and, in the writer thread this replaced, handed the GIL back and
# forth) once per row. Statements of 256, 16 and 1 rows keep the statement cache to three texts
# per table. Same CPU per row as executemany (bench/sqlite_floor.py measures it); SQLite's json_each,
# the other way to one step per batch, measured 14.7 µs a row against 8–9 when tried.
_CALL_COLUMNS = (
    "account", "call_id", "status", "started_at", "ended_at", "duration_ms", "end_status", "reason",
    "last_seq", "sentiment_sum", "sentiment_n",
)
_INSERT_CHUNKS = (
    "INSERT INTO event_chunks ({columns}) VALUES {rows} ON CONFLICT (account, call_id, last_seq) DO NOTHING"
)
_UPSERT_CALLS = (
    "INSERT INTO calls ({columns}) VALUES {rows}"
    " ON CONFLICT (account, call_id) DO UPDATE SET"
    " last_seq = max(calls.last_seq, excluded.last_seq),"
    " started_at = min(calls.started_at, excluded.started_at),"
    " status = CASE WHEN excluded.status = 'ended' THEN 'ended' ELSE calls.status END,"
    " ended_at = coalesce(excluded.ended_at, calls.ended_at),"
    " duration_ms = coalesce(excluded.duration_ms, calls.duration_ms),"
    " end_status = coalesce(excluded.end_status, calls.end_status),"
    " reason = coalesce(excluded.reason, calls.reason),"
    " sentiment_sum = calls.sentiment_sum + excluded.sentiment_sum,"
    " sentiment_n = calls.sentiment_n + excluded.sentiment_n"
)
# A fold commits which journal files it filed (store/journal.py), and forgets files long deleted.
_MARK_FOLDED = "INSERT INTO meta (key, value) VALUES (?, '') ON CONFLICT (key) DO NOTHING"
_FORGET_FOLDED = "DELETE FROM meta WHERE key = ?"
_STATEMENT_ROWS = (256, 16, 1)
_FOLD: list[Statement] = [(statement, []) for statement in FOLD]


@functools.cache
def _sql(template: str, columns: tuple[str, ...], size: int) -> str:
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return template.format(columns=", ".join(columns), rows=", ".join([one] * size))


def _statements(template: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> list[Statement]:
    """`rows` as statements of 256, 16 or 1 rows each, with their parameters flattened."""
    out: list[Statement] = []
    start = 0
    for size in _STATEMENT_ROWS:
        sql = _sql(template, columns, size)
        while len(rows) - start >= size:
            out.append((sql, list(chain.from_iterable(rows[start : start + size]))))
            start += size
    return out


@dataclass(slots=True)
class Fold:
    """What a fold files: the journal's `rows`, the `markers` of the files that hold them, the
    `forget` markers of files deleted since (`journal.JournalFile.marker`), and with `log_table`
    whatever an earlier version left in the `event_log` table."""

    rows: Sequence[LogRow] = ()
    markers: Sequence[str] = ()
    forget: Sequence[str] = ()
    log_table: bool = False

    def statements(self) -> list[Statement]:
        """The journal's rows merged into one chunk and one calls row per call, then the log table."""
        chunks, calls = merge_log_rows(self.rows)
        return [
            *SqliteEventWriter.statements(chunks, calls),
            *(_FOLD if self.log_table else ()),
            *((_MARK_FOLDED, [marker]) for marker in self.markers),
            *((_FORGET_FOLDED, [marker]) for marker in self.forget),
        ]


class StoreWriterError(Exception):
    """The writer process refused a transaction (its SQLite error, as text) or went away."""


class SqliteEventWriter:
    """The event writer: a process of its own (`sqlite_process`), one pipe round trip a batch.

    Through SQLAlchemy + aiosqlite a commit took about six thread round trips (begin, insert,
    upsert, commit, …), each waiting for the event loop and for the GIL behind the fan-out, and
    SQLAlchemy's per-statement Python work: the store cost half a core at 1,000 events/s and
    delayed every fan-out (which waits for the commit). Then a thread of its own ran the whole
    transaction in one call into `sqlite3`, but it still took turns with the event loop for the
    GIL (binding, the statement cache, every step's return): the store ran serialised with the
    fan-out even with a second core idle. Now the node builds and pickles the statements and the
    event loop's pipe transports carry them (no thread, so no GIL hand-off per pipe-full); SQLite's
    work is the writer process's, on whichever core is free. A writer that dies fails the
    transaction in flight (its producers get the store's error: REST 503 `unavailable`, ingest
    `internal`) and is started again for the next.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def commit(
        self, chunks: list[ChunkRow], calls: list[dict[str, Any]], *, fold: Fold | None = None
    ) -> None:
        """Store `chunks` (`chunks.chunk_rows`) and merge `calls` (`SqlStore._call_rows`); with
        `fold`, in the same transaction after the fold."""
        head = [] if fold is None else fold.statements()
        await self._transaction(head + self.statements(chunks, calls))

    async def fold(self, fold: Fold) -> None:
        """File the journal's rows and the log into event_chunks and calls (`event_log.FOLD`)."""
        await self._transaction(fold.statements())

    async def _transaction(self, statements: list[Statement]) -> None:
        body = pickle.dumps(statements, pickle.HIGHEST_PROTOCOL)
        async with self._lock:
            reply = await self._round_trip(body)
        if reply:
            raise StoreWriterError(reply.decode(errors="replace"))

    @staticmethod
    def statements(chunks: list[ChunkRow], calls: list[dict[str, Any]]) -> list[Statement]:
        """The transaction's statements, built on the event loop: the writer process then only
        hands each statement to SQLite."""
        merged = [tuple(c[k] for k in _CALL_COLUMNS) for c in calls]
        return _statements(_INSERT_CHUNKS, CHUNK_COLUMNS, chunks) + _statements(_UPSERT_CALLS, _CALL_COLUMNS, merged)

    async def _round_trip(self, body: bytes) -> bytes:
        process = self._process
        if process is None or process.returncode is not None:
            # A plain script with -I (isolated): the standard library only, none of the node's
            # environment.
            process = self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-B", sqlite_process.__file__, self.path,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.write(sqlite_process.HEADER.pack(len(body)))
            process.stdin.write(body)
            await process.stdin.drain()
            (size,) = sqlite_process.HEADER.unpack(await process.stdout.readexactly(sqlite_process.HEADER.size))
            return await process.stdout.readexactly(size) if size else b""
        except (OSError, asyncio.IncompleteReadError) as exc:  # the writer died
            await self._stop(grace_s=1)
            raise StoreWriterError("the writer process exited") from exc
        except BaseException:
            # Cancelled between request and reply: the next round trip would read this one's
            # reply, so this writer cannot be trusted again (its transaction commits or not).
            self._process = None
            process.kill()
            raise

    async def _stop(self, grace_s: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def close(self) -> None:
        """Let the writer finish what it was sent: it exits when its pipe closes."""
        async with self._lock:
            await self._stop(grace_s=10)
