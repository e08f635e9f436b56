"""What /v1/stats reads from the store (`SqlStore.quality_window`), on SQLite and PostgreSQL: the
window's minutes and calls, each read through an index, never a scan of the account's calls."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from callstream.quality import INTERRUPTIONS, latency_name
from callstream.store import SqlStore
from callstream.turns import Marks
from tests.store.test_store_contract import event


async def test_the_window_holds_its_minutes_and_its_calls(store: SqlStore, account: str) -> None:
    minute = 60_000
    await store.append([
        event(account, "old", 1, marks=Marks(700), state="speaking", latency_ms=700),  # ts 1,000: before
        event(account, "c1", 200, marks=Marks(900), state="speaking", latency_ms=900),  # ts 200,000
        event(account, "c1", 201, marks=Marks(None, True, 5), state="listening", interrupted=True),
        event(account, "c2", 230, "transcript.final", sentiment={"score": -0.5}),
    ])
    await store.append([event(account, "c3", 190, "call.ended")])  # ended at 190,000
    await store.append([event(account, "c4", 30, "call.ended")])  # ended before the window
    minutes, calls = await store.quality_window(account, since=3 * minute, step=minute, live_since=150_000)
    assert sorted(minutes) == [(3 * minute, INTERRUPTIONS, 1), (3 * minute, latency_name(900), 1)]
    assert sorted(calls, key=str) == sorted(
        [("live", None, "unscored", 1), ("live", None, "negative", 1), ("ended", "completed", "unscored", 1)], key=str
    )  # "old" went quiet before live_since: not live any more
    wide, _ = await store.quality_window(account, since=0, step=10 * minute, live_since=0)
    assert sorted(wide) == [(0, INTERRUPTIONS, 1), (0, latency_name(700), 1), (0, latency_name(900), 1)]


async def test_each_read_takes_an_index(store: SqlStore, account: str) -> None:
    """However many calls and minutes the store holds, a window reads its own range of them."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "quality_minutes" in statement or "FROM calls" in statement:
            statements.append((statement, parameters))

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await store.quality_window(account, since=1, step=60_000, live_since=1)
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    assert len(statements) == 3
    async with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            await conn.exec_driver_sql("SET enable_seqscan = off")  # an index it can use, or a scan
        for statement, parameters in statements:
            prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
            plan = " ".join(str(row[-1]) for row in await conn.exec_driver_sql(prefix + statement, parameters))
            if store.dialect == "sqlite":
                assert "USING INDEX" in plan, plan
                assert "SCAN" not in plan.replace("TEMP B-TREE", ""), plan
            else:
                assert "Index Cond" in plan, plan
                assert "Seq Scan" not in plan, plan
