"""Call metadata in the store, over SQLite and PostgreSQL: kept on the calls row by every write
path, the newer change winning whatever order commits land in, and the list's `metadata.K=V`."""

from __future__ import annotations

from typing import Any

from callstream.events import Event
from callstream.store import SqlStore


def event(account: str, call_id: str, seq: int, meta: dict[str, Any] | None = None, **patch: Any) -> Event:
    """An event of `call_id`; with `patch`, one that set the call's metadata to `meta`."""
    data: dict[str, Any] = {"state": "thinking"}
    if patch:
        data["metadata"] = patch
    return Event(account, call_id, seq, 1_000 * seq, "agent.state", data, meta=meta)


def ended(account: str, call_id: str, seq: int) -> Event:
    return Event(account, call_id, seq, 1_000 * seq, "call.ended", {"status": "completed", "duration_ms": 5})


async def test_the_calls_row_keeps_the_metadata_of_the_last_change(store: SqlStore, account: str) -> None:
    spring = {"campaign": "spring", "agent": "ada", "tier": 2, "vip": True}
    await store.append([event(account, "c1", 1, spring, campaign="spring", agent="ada", tier=2, vip=True)])
    await store.append([event(account, "c1", 2, spring)])  # carries it, changes nothing
    call = await store.get_call(account, "c1")
    assert call is not None
    assert call.to_json()["metadata"] == spring
    state = await store.call_state(account, "c1")
    assert state is not None
    assert state.metadata == spring
    summer = {"campaign": "summer", "agent": "ada", "tier": 2}
    await store.append([event(account, "c1", 3, summer, campaign="summer", vip=None), ended(account, "c1", 4)])
    call = await store.get_call(account, "c1")
    assert call is not None
    assert (call.status, call.metadata) == ("ended", summer)


async def test_the_newer_change_wins_whatever_order_the_commits_land_in(store: SqlStore, account: str) -> None:
    """Two nodes may commit one call's events out of seq order."""
    await store.append([event(account, "c1", 5, {"campaign": "newer"}, campaign="newer")])
    await store.append([event(account, "c1", 2, {"campaign": "older"}, campaign="older")])
    call = await store.get_call(account, "c1")
    assert call is not None
    assert call.metadata == {"campaign": "newer"}


async def test_a_call_without_metadata_answers_an_empty_object(store: SqlStore, account: str) -> None:
    await store.append([event(account, "c1", 1)])
    call = await store.get_call(account, "c1")
    assert call is not None
    assert call.to_json()["metadata"] == {}


async def test_the_list_keeps_calls_whose_metadata_matches_every_filter(store: SqlStore, account: str) -> None:
    rows: dict[str, dict[str, Any]] = {
        "a": {"campaign": "spring", "tier": 2, "vip": True, "agent": "ada"},
        "b": {"campaign": "spring", "tier": 3, "vip": False},
        "c": {"campaign": "summer", "tier": 2.5},
        "d": {"campaign": "2"},
    }
    for seq, (call_id, meta) in enumerate(rows.items(), 1):
        await store.append([event(account, call_id, seq, meta, **meta)])
    await store.append([event(account, "e", 9)])
    await store.append([event("other_account", "x", 1, {"campaign": "spring"}, campaign="spring")])

    async def listed(**wanted: str) -> set[str]:
        found, _ = await store.list_calls(account, status=None, limit=50, cursor=None, metadata=wanted)
        return {c.call_id for c in found}

    assert await listed(campaign="spring") == {"a", "b"}
    assert await listed(campaign="spring", tier="2") == {"a"}  # AND
    assert await listed(tier="2") == {"a"}  # a number by its JSON form
    assert await listed(tier="2.5") == {"c"}
    assert await listed(campaign="2") == {"d"}  # a string that reads as a number is still a string
    assert await listed(vip="true") == {"a"}
    assert await listed(vip="false") == {"b"}
    assert await listed(agent="ada", campaign="summer") == set()
    assert await listed(nothing="x") == set()
    assert await listed() == {"a", "b", "c", "d", "e"}
