"""Erasing calls from the store (docs/privacy.md), over SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from callstream.events import Event
from callstream.store import SqlStore
from callstream.store import tables as t
from callstream.store.tables import PER_CALL_TABLES
from callstream.webhooks import tables as wt


def event(account: str, call_id: str, seq: int, event_type: str = "transcript.final", ts: int = 1_000) -> Event:
    data: dict[str, Any] = {
        "transcript.final": {"speaker": "user", "text": "my card is 4111", "is_final": True},
        "call.ended": {"status": "completed", "duration_ms": 4200},
    }[event_type]
    return Event(account, call_id, seq, ts + seq, event_type, data)


async def ended_call(store: SqlStore, account: str, call_id: str, ts: int = 1_000) -> None:
    await store.append([event(account, call_id, 1, ts=ts), event(account, call_id, 2, ts=ts)])
    await store.append([event(account, call_id, 3, "call.ended", ts=ts)])


async def add_webhook_message(store: SqlStore, account: str, call_id: str) -> str:
    """A pending outbox row of the call and one attempt of it, as the webhook worker leaves them."""
    message_id = f"msg_{account}_{call_id}"
    async with store.engine.begin() as conn:
        await conn.execute(
            wt.webhook_messages.insert().values(
                id=message_id, account=account, endpoint_id="ep_1", event_type="call.ended", call_id=call_id,
                payload='{"transcript": "my card is 4111"}', status="pending", created_at=1, give_up_at=2,
            )
        )
        await conn.execute(
            wt.webhook_attempts.insert().values(
                account=account, message_id=message_id, endpoint_id="ep_1", attempt=1, attempted_at=1,
                latency_ms=5, result="retry",
            )
        )
    return message_id


async def rows_of(store: SqlStore, account: str, call_id: str) -> dict[str, int]:
    """How many rows each per-call table holds of the call."""
    counts: dict[str, int] = {}
    async with store.engine.connect() as conn:
        for spec in PER_CALL_TABLES:
            if spec.through is None:
                query = f"SELECT count(*) FROM {spec.table} WHERE account = :a AND call_id = :c"  # noqa: S608 - names from the tuple
            else:
                column, parent = spec.through
                query = (
                    f"SELECT count(*) FROM {spec.table} WHERE {column} IN "  # noqa: S608 - names from the tuple
                    f"(SELECT id FROM {parent} WHERE account = :a AND call_id = :c)"
                )
            counts[spec.table] = int((await conn.execute(sa.text(query), {"a": account, "c": call_id})).scalar_one())
    return counts


async def test_erasing_an_ended_call_deletes_its_rows_from_every_per_call_table(store: SqlStore, account: str) -> None:
    await ended_call(store, account, "gone")
    await add_webhook_message(store, account, "gone")
    assert all((await rows_of(store, account, "gone")).values())

    assert await store.erase_calls(account, ["gone"]) == ["gone"]

    assert set((await rows_of(store, account, "gone")).values()) == {0}
    assert await store.get_call(account, "gone") is None
    assert await store.events(account, "gone") == []
    assert await store.call_state(account, "gone") is None
    assert await store.erase_calls(account, ["gone"]) == []  # once


async def test_erasure_leaves_live_calls_and_other_accounts_alone(store: SqlStore, account: str) -> None:
    other = account + "_other"
    await ended_call(store, account, "ended")
    await ended_call(store, other, "ended")  # the same id in another account
    await store.append([event(account, "live", 1)])

    assert await store.erase_calls(account, ["ended", "live", "never"]) == ["ended"]

    live = await store.get_call(account, "live")
    assert live is not None
    assert live.status == "live"
    assert len(await store.events(account, "live")) == 1
    assert await store.get_call(other, "ended") is not None
    assert len(await store.events(other, "ended")) == 3


async def test_calls_ended_before_lists_the_oldest_first_in_bounded_batches(store: SqlStore, account: str) -> None:
    for n, ts in enumerate([5_000, 1_000, 3_000, 9_000]):
        await ended_call(store, account, f"c{n}", ts=ts)
    await store.append([event(account, "live", 1, ts=1)])

    assert await store.calls_ended_before(account, 6_000, limit=2) == ["c1", "c2"]
    assert await store.calls_ended_before(account, 6_000, limit=10) == ["c1", "c2", "c0"]


async def test_every_account_with_a_key_is_swept(store: SqlStore, account: str) -> None:
    assert account not in await store.accounts()
    await store.create_key(account, frozenset({"publish"}))
    assert account in await store.accounts()


async def test_every_table_with_rows_of_calls_is_erased_with_them() -> None:
    """A new table keyed by account and call id must join PER_CALL_TABLES, or erasure would
    leave its rows behind."""
    named = {spec.table for spec in PER_CALL_TABLES}
    keyed_by_call = {
        table.name for table in t.metadata.tables.values() if {"account", "call_id"} <= set(table.columns.keys())
    }
    assert keyed_by_call <= named, f"erase these with their calls: {sorted(keyed_by_call - named)}"
