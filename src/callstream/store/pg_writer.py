"""PostgreSQL's event writer: a commit's rows in one statement, sent in one round trip.

A commit through SQLAlchemy is several round trips (a pool check-out, BEGIN, the chunks, the
calls upsert, COMMIT) to a server that may share the node's cores. Here one statement does both
writes (a data-modifying CTE; a single statement is atomic, so no BEGIN … COMMIT is needed) with
each column sent as an array (`unnest`), on a connection the writer keeps for itself. Only the
hot path uses it (batches that end no call); the batches whose `call.ended` hooks write the
webhook outbox keep the SQLAlchemy transaction in `sql.py`. Its calls upsert comes from the one
spec of the rows (`rows.calls_upsert_sql`), as the other write paths' do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callstream.store.chunks import ChunkRow
from callstream.store.rows import calls_upsert_sql

_COMMIT = calls_upsert_sql(
    "postgresql",
    """
WITH chunks AS (
    INSERT INTO event_chunks (account, call_id, first_seq, last_seq, events)
    SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[], $4::bigint[], $5::text[])
    ON CONFLICT (account, call_id, last_seq) DO NOTHING
)
INSERT INTO calls (account, call_id, status, started_at, last_seq, sentiment_sum, sentiment_n)
SELECT account, call_id, 'live', started_at, last_seq, sentiment_sum, sentiment_n
FROM unnest($6::varchar[], $7::varchar[], $8::bigint[], $9::bigint[], $10::float8[], $11::int[])
    AS u (account, call_id, started_at, last_seq, sentiment_sum, sentiment_n)
""",
)


def columns(chunks: list[ChunkRow], calls: list[dict[str, Any]]) -> list[list[Any]]:
    """The statement's eleven parameters: the chunks' five columns, then the calls' six."""
    out: list[list[Any]] = [list(column) for column in zip(*chunks, strict=True)] if chunks else [[] for _ in range(5)]
    for key in ("account", "call_id", "started_at", "last_seq", "sentiment_sum", "sentiment_n"):
        out.append([call[key] for call in calls])
    return out


class PgEventWriter:
    """Commits batches that end no call, one statement each, on a connection of its own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def commit(self, chunks: list[ChunkRow], calls: list[dict[str, Any]]) -> None:
        """Store `chunks` (`chunks.chunk_rows`) and merge `calls` (`SqlStore._call_rows`, none ended)."""
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = await self._engine.connect()
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(_COMMIT, *columns(chunks, calls))  # type: ignore[union-attr]
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
