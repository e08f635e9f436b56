"""Fan-out and the pending phase of a subscription, without sockets."""

from __future__ import annotations

from callstream.events import Event
from callstream.hub import Hub, Subscription


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[tuple[str, int]] = []

        self.over: list[Subscription] = []

    def enqueue_event(self, event: Event) -> None:
        self.seqs.append((event.call_id, event.seq))

    def subscription_over(self, sub: Subscription) -> None:
        self.over.append(sub)


def ev(call_id: str, seq: int, account: str = "acme", kind: str = "transcript.final") -> Event:
    return Event(account, call_id, seq, 0, kind, {"speaker": "user", "text": "t"})


def live(hub: Hub, conn: Recorder, call_id: str, account: str = "acme", types: frozenset[str] | None = None) -> Subscription:
    sub = Subscription(conn, account, call_id, types)
    hub.add(sub)
    for e in sub.go_live(0):
        conn.enqueue_event(e)
    return sub


def test_events_reach_only_subscribers_of_that_account_and_call() -> None:
    hub, a, b, other = Hub(), Recorder(), Recorder(), Recorder()
    live(hub, a, "c1")
    live(hub, b, "c2")
    live(hub, other, "c1", account="globex")
    hub.deliver(ev("c1", 1))
    assert (a.seqs, b.seqs, other.seqs) == ([("c1", 1)], [], [])


def test_pending_subscription_parks_then_releases_only_newer_than_the_replay() -> None:
    hub, conn = Hub(), Recorder()
    sub = Subscription(conn, "acme", "c1", None)
    hub.add(sub)
    for seq in (5, 6, 7):
        hub.deliver(ev("c1", seq))
    assert conn.seqs == []
    released = sub.go_live(covered_seq=6)  # the replay already sent up to 6
    assert [e.seq for e in released] == [7]
    hub.deliver(ev("c1", 7))  # a duplicate from the broker is dropped
    hub.deliver(ev("c1", 8))
    assert conn.seqs == [("c1", 8)]


def test_wildcard_plus_explicit_delivers_once_and_wildcard_sees_every_call() -> None:
    hub, conn, watcher = Hub(), Recorder(), Recorder()
    live(hub, conn, "*")
    live(hub, conn, "c1")
    live(hub, watcher, "*")
    hub.deliver(ev("c1", 1))
    hub.deliver(ev("c9", 1))
    assert conn.seqs == [("c1", 1), ("c9", 1)]
    assert watcher.seqs == [("c1", 1), ("c9", 1)]


def test_types_filter_and_replacement() -> None:
    hub, conn = Hub(), Recorder()
    live(hub, conn, "c1", types=frozenset({"call.ended"}))
    hub.deliver(ev("c1", 1))
    previous = hub.add(Subscription(conn, "acme", "c1", None))
    assert previous is not None
    assert hub.subscription_count() == 1


def test_remove_cleans_the_index() -> None:
    hub, conn = Hub(), Recorder()
    sub = live(hub, conn, "c1")
    assert hub.remove(conn, "acme", "c1") is sub
    assert list(hub.watched()) == []
    hub.deliver(ev("c1", 1))
    assert conn.seqs == []


def test_call_ended_ends_the_calls_subscriptions_and_no_other() -> None:
    hub, a, b, watcher = Hub(), Recorder(), Recorder(), Recorder()
    sub_a = live(hub, a, "c1")
    pending = Subscription(b, "acme", "c1", None)  # still replaying
    hub.add(pending)
    keep = live(hub, a, "c2")
    live(hub, watcher, "*")
    hub.deliver(ev("c1", 9, kind="call.ended"))

    over = hub.end_call("acme", "c1")

    assert set(over) == {sub_a, pending}
    assert sub_a.over
    assert pending.over
    assert not keep.over
    assert (a.over, b.over, watcher.over) == ([sub_a], [pending], [])
    assert [e.seq for e in pending.go_live(0)] == [9]  # the pending one still gets call.ended
    assert hub.get(a, "acme", "c1") is None
    assert hub.get(a, "acme", "c2") is keep
    assert sorted(hub.watched()) == [("acme", "*"), ("acme", "c2")]
    assert hub.end_call("acme", "c1") == []  # nothing left to end
