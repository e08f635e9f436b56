"""PostgreSQL's event writer: a commit's rows in one statement, sent in one round trip.

A commit through SQLAlchemy is several round trips (a pool check-out, BEGIN, the chunks, the
calls upsert, COMMIT) to a server that may share the node's cores. Here one statement does both
writes (the chunks, the calls, the minutes and the finals search indexes: a data-modifying CTE; a single statement is atomic, so no BEGIN … COMMIT is needed) with
each column sent as an array (`unnest`), on a connection the writer keeps for itself. Only the
hot path uses it (batches that end no call); the batches whose `call.ended` hooks write the
webhook outbox keep the SQLAlchemy transaction in `sql.py`. Its chunks and finals inserts and
its calls and minutes upserts come from the one spec of the rows (`rows.chunks_insert_sql`,
`rows.finals_insert_sql`, `rows.calls_upsert_sql`, `rows.minutes_upsert_sql`), as the other
write paths' do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callstream.store import tables as t
from callstream.store.chunks import ChunkRow, FinalRow
from callstream.store.rows import (
    SUM_COLUMNS,
    calls_upsert_sql,
    chunks_insert_sql,
    finals_insert_sql,
    minutes_upsert_sql,
)

# The calls columns a live batch sets (those only an end sets stay out), each sent as an array of
# its column's type.
_CALL_ARRAYS = tuple(
    (name, t.calls.c[name].type.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    for name in ("account", "call_id", "started_at", "last_seq", *SUM_COLUMNS)
)
_CALLS_FROM = 6  # $6 is the first calls array, after the chunks' five
_MINUTES_FROM = _CALLS_FROM + len(_CALL_ARRAYS)
_names = ", ".join(name for name, _ in _CALL_ARRAYS)
_arrays = ", ".join(f"${_CALLS_FROM + i}::{kind}[]" for i, (_, kind) in enumerate(_CALL_ARRAYS))
# Built from this module's own names and numbers, nothing a user sends: the values are parameters.
_FINALS_FROM = _MINUTES_FROM + 4
_finals = finals_insert_sql(
    "INSERT INTO transcript_finals (account, call_id, seq, speaker, text) SELECT * FROM unnest("  # noqa: S608
    f"${_FINALS_FROM}::varchar[], ${_FINALS_FROM + 1}::varchar[], ${_FINALS_FROM + 2}::bigint[], "
    f"${_FINALS_FROM + 3}::varchar[], ${_FINALS_FROM + 4}::text[])"
)
_chunks = chunks_insert_sql(
    "INSERT INTO event_chunks (account, call_id, first_seq, last_seq, events)"
    " SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[], $4::bigint[], $5::text[])"
)
_minutes = minutes_upsert_sql(
    "INSERT INTO quality_minutes (account, minute, name, n) SELECT * FROM unnest("  # noqa: S608
    f"${_MINUTES_FROM}::varchar[], ${_MINUTES_FROM + 1}::bigint[], ${_MINUTES_FROM + 2}::varchar[], "
    f"${_MINUTES_FROM + 3}::bigint[])"
)
_COMMIT = calls_upsert_sql(
    "postgresql",
    f"""
WITH chunks AS (
    {_chunks}
), minutes AS (
    {_minutes}
), finals AS (
    {_finals}
)
INSERT INTO calls (status, {_names})
SELECT 'live', {_names} FROM unnest({_arrays}) AS u ({_names})
""",  # noqa: S608
)


def columns(
    chunks: list[ChunkRow],
    calls: list[dict[str, Any]],
    minutes: Sequence[Sequence[Any]] = (),
    finals: Sequence[FinalRow] = (),
) -> list[list[Any]]:
    """The statement's parameters: the chunks' five columns, the calls' (`_CALL_ARRAYS`), the
    minutes' four (`rows.MINUTE_COLUMNS`), then the finals' five (`rows.FINAL_COLUMNS`)."""
    out = _arrays_of(chunks, 5)
    for key, _ in _CALL_ARRAYS:
        out.append([call[key] for call in calls])
    return out + _arrays_of(minutes, 4) + _arrays_of(finals, 5)


def _arrays_of(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list a column (`unnest`'s arrays); `width` empty lists for no rows."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class PgEventWriter:
    """Commits batches that end no call, one statement each, on a connection of its own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def commit(
        self,
        chunks: list[ChunkRow],
        calls: list[dict[str, Any]],
        minutes: Sequence[Sequence[Any]] = (),
        finals: Sequence[FinalRow] = (),
    ) -> None:
        """Store `chunks` (`chunks.chunk_rows`), merge `calls` (`SqlStore._call_rows`, none ended),
        add `minutes` (`sums.merged_minutes`) and insert `finals` (`chunks.final_rows`; the
        database indexes them for search)."""
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = await self._engine.connect()
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(_COMMIT, *columns(chunks, calls, minutes, finals))  # type: ignore[union-attr]
        except BaseException:
            # Failed, or cancelled mid-statement: the server may have dropped the connection or
            # still be answering on it; the next commit takes a fresh one.
            self._conn = None
            if conn is not None:
                await conn.invalidate()
                await conn.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
