"""The store keeps each event's producer id in its frame and hands a call's ids back with its
state (idempotent publish), over SQLite and PostgreSQL alike."""

from __future__ import annotations

import time
from typing import Any

from callstream.events import Event
from callstream.store import SqlStore

DATA: dict[str, dict[str, Any]] = {
    "agent.state": {"state": "thinking"},
    "transcript.partial": {"speaker": "user", "text": "hel", "is_final": False},
    "call.ended": {"status": "completed", "duration_ms": 10},
}


def event(account: str, call_id: str, seq: int, event_id: str | None, kind: str = "agent.state", ts: int = 0) -> Event:
    return Event(account, call_id, seq, ts or int(time.time() * 1000), kind, dict(DATA[kind]), id=event_id)


async def test_a_calls_state_comes_with_the_ids_of_its_stored_events(store: SqlStore, account: str) -> None:
    await store.append([
        event(account, "live", 1, "a"),
        event(account, "live", 2, None),
        event(account, "live", 3, "p", "transcript.partial"),  # partials are never stored
        event(account, "live", 4, "b"),
    ])
    await store.append([event(account, "recent", 1, "x"), event(account, "recent", 2, "end", "call.ended")])
    old = 1_000_000  # ended in 1970: long past the window
    await store.append([event(account, "old", 1, "y", ts=old), event(account, "old", 2, "z", "call.ended", ts=old)])
    live = await store.call_state(account, "live")
    recent = await store.call_state(account, "recent")
    gone = await store.call_state(account, "old")
    assert live is not None
    assert recent is not None
    assert gone is not None
    assert live.ids == {"a": 1, "b": 4}
    assert recent.ids == {"x": 1, "end": 2}
    assert (gone.status, gone.ids) == ("ended", None)
    assert [(e.seq, e.id) for e in await store.events(account, "live")] == [(1, "a"), (2, None), (4, "b")]
