"""Erasing calls from the database: every row of a call, from every table that holds one.

`tables.PER_CALL_TABLES` names the tables; this module only deletes. A call is erased only once
it has ended (a live call's producer would write it again), and the check is the delete itself:
the first statement deletes the calls rows that are ended and returns their ids, so two nodes
erasing the same calls at once (a DELETE racing the retention sweep) erase each call once, and
the transaction holds its write lock from its first statement (SQLite) or the calls' row locks
(PostgreSQL) before it touches anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callstream.store import tables as t
from callstream.store.tables import PER_CALL_TABLES, PerCallTable

__all__ = ["ended_before", "erase_ended"]


def _call_rows(name: str, account: str, call_ids: Sequence[str]) -> tuple[sa.TableClause, sa.ColumnElement[bool]]:
    """The table `name` and the condition naming its rows of those calls."""
    table = sa.table(name, sa.column("id"), sa.column("account"), sa.column("call_id"))
    return table, sa.and_(table.c.account == account, table.c.call_id.in_(call_ids))


def _delete(spec: PerCallTable, account: str, call_ids: Sequence[str]) -> sa.Delete:
    """The statement that deletes the table's rows of those calls."""
    if spec.through is None:
        table, rows = _call_rows(spec.table, account, call_ids)
        return sa.delete(table).where(rows)
    column, parent_name = spec.through
    parent, rows = _call_rows(parent_name, account, call_ids)
    child = sa.table(spec.table, sa.column(column))
    return sa.delete(child).where(child.c[column].in_(sa.select(parent.c.id).where(rows)))


async def erase_ended(conn: AsyncConnection, account: str, call_ids: Sequence[str]) -> list[str]:
    """Delete every row of those of `call_ids` (the account's) that have ended, in the caller's
    transaction; returns their ids. Calls that are live, or not there, are left as they are."""
    if not call_ids:
        return []
    anchor, *others = PER_CALL_TABLES
    calls = sa.table(anchor.table, sa.column("account"), sa.column("call_id"), sa.column("status"))
    ended = sa.and_(calls.c.account == account, calls.c.call_id.in_(call_ids), calls.c.status == "ended")
    first = sa.delete(calls).where(ended).returning(calls.c.call_id)
    erased = sorted(str(call_id) for call_id in (await conn.execute(first)).scalars())
    if erased:
        for spec in others:
            await conn.execute(_delete(spec, account, erased))
    return erased


async def ended_before(conn: AsyncConnection, account: str, cutoff_ms: int, limit: int) -> list[str]:
    """Up to `limit` of the account's calls that ended before `cutoff_ms`, oldest first (the
    index on account, status, ended_at finds them without reading any other call)."""
    c = t.calls.c
    query = (
        sa.select(c.call_id)
        .where(c.account == account, c.status == "ended", c.ended_at < cutoff_ms)
        .order_by(c.ended_at)
        .limit(limit)
    )
    return [str(call_id) for call_id in (await conn.execute(query)).scalars()]
