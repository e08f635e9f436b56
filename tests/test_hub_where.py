"""A `*` subscription with `where`: judged at each event against the call's metadata then."""

from __future__ import annotations

from typing import Any

from callstream.events import Event
from callstream.hub import Hub, Subscription
from tests.test_hub import Recorder, live


def ev(call_id: str, seq: int, meta: dict[str, Any] | None, account: str = "acme") -> Event:
    return Event(account, call_id, seq, 0, "agent.state", {"state": "thinking"}, meta=meta)


def watching(hub: Hub, where: dict[str, Any]) -> Recorder:
    conn = Recorder()
    sub = Subscription(conn, "acme", "*", None, where)
    hub.add(sub)
    sub.go_live(0)
    return conn


def test_only_calls_whose_metadata_matches_are_delivered() -> None:
    hub = Hub()
    spring, everything = watching(hub, {"campaign": "spring"}), Recorder()
    live(hub, everything, "*")
    spring_meta, summer_meta = {"campaign": "spring", "agent": "ada"}, {"campaign": "summer"}
    hub.deliver([ev("a", 1, spring_meta), ev("b", 1, summer_meta), ev("c", 1, None), ev("a", 2, spring_meta)])
    assert spring.seqs == [("a", 1), ("a", 2)]
    assert len(everything.seqs) == 4


def test_a_call_joins_when_its_metadata_arrives_and_leaves_when_it_changes_away() -> None:
    hub = Hub()
    conn = watching(hub, {"campaign": "spring"})
    hub.deliver([ev("a", 1, None), ev("a", 2, {"campaign": "spring"}), ev("a", 3, {"campaign": "spring"})])
    hub.deliver([ev("a", 4, {"campaign": "summer"}), ev("a", 5, {"campaign": "summer"})])
    hub.deliver([ev("a", 6, {"campaign": "spring"})])
    assert conn.seqs == [("a", 2), ("a", 3), ("a", 6)]


def test_every_key_of_where_must_match() -> None:
    hub = Hub()
    conn = watching(hub, {"campaign": "spring", "direction": "inbound"})
    hub.deliver([
        ev("a", 1, {"campaign": "spring"}),
        ev("b", 1, {"campaign": "spring", "direction": "outbound"}),
        ev("c", 1, {"campaign": "spring", "direction": "inbound", "agent": "ada"}),
    ])
    assert conn.seqs == [("c", 1)]


def test_where_never_crosses_accounts() -> None:
    hub = Hub()
    conn = watching(hub, {"campaign": "spring"})
    hub.deliver([ev("a", 1, {"campaign": "spring"}, account="globex")])
    assert conn.seqs == []
