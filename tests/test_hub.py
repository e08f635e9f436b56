"""Fan-out and the pending phase of a subscription, without sockets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from callstream.events import Event
from callstream.hub import Hub, Subscription


class Recorder:
    """A connection that records what it was handed: events one by one, and blocks."""

    direct_write = None

    def __init__(self) -> None:
        self.seqs: list[tuple[str, int]] = []
        self.blocks: list[bytes] = []
        self.over: list[Subscription] = []

    def enqueue_event(self, event: Event) -> None:
        self.seqs.append((event.call_id, event.seq))

    def enqueue_block(self, block: bytes, events: Sequence[Event]) -> int:
        self.blocks.append(block)
        self.seqs.extend((e.call_id, e.seq) for e in events)
        return len(events)

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
    hub.deliver([ev("c1", 1)])
    assert (a.seqs, b.seqs, other.seqs) == ([("c1", 1)], [], [])


def test_pending_subscription_parks_then_releases_only_newer_than_the_replay() -> None:
    hub, conn = Hub(), Recorder()
    sub = Subscription(conn, "acme", "c1", None)
    hub.add(sub)
    for seq in (5, 6, 7):
        hub.deliver([ev("c1", seq)])
    assert conn.seqs == []
    released = sub.go_live(covered_seq=6)  # the replay already sent up to 6
    assert [e.seq for e in released] == [7]
    hub.deliver([ev("c1", 7)])  # a duplicate from the broker is dropped
    hub.deliver([ev("c1", 8)])
    assert conn.seqs == [("c1", 8)]


def test_wildcard_plus_explicit_delivers_once_and_wildcard_sees_every_call() -> None:
    hub, conn, watcher = Hub(), Recorder(), Recorder()
    live(hub, conn, "*")
    live(hub, conn, "c1")
    live(hub, watcher, "*")
    hub.deliver([ev("c1", 1)])
    hub.deliver([ev("c9", 1)])
    assert conn.seqs == [("c1", 1), ("c9", 1)]
    assert watcher.seqs == [("c1", 1), ("c9", 1)]


def test_types_filter_and_replacement() -> None:
    hub, conn = Hub(), Recorder()
    live(hub, conn, "c1", types=frozenset({"call.ended"}))
    hub.deliver([ev("c1", 1)])
    previous = hub.add(Subscription(conn, "acme", "c1", None))
    assert previous is not None
    assert hub.subscription_count() == 1


def test_remove_cleans_the_index() -> None:
    hub, conn = Hub(), Recorder()
    sub = live(hub, conn, "c1")
    assert hub.remove(conn, "acme", "c1") is sub
    assert list(hub.watched()) == []
    hub.deliver([ev("c1", 1)])
    assert conn.seqs == []


def test_call_ended_ends_the_calls_subscriptions_and_no_other() -> None:
    hub, a, b, watcher = Hub(), Recorder(), Recorder(), Recorder()
    sub_a = live(hub, a, "c1")
    pending = Subscription(b, "acme", "c1", None)  # still replaying
    hub.add(pending)
    keep = live(hub, a, "c2")
    live(hub, watcher, "*")
    hub.deliver([ev("c1", 9, kind="call.ended")])

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


def test_a_batch_reaches_a_plain_subscriber_as_one_block_per_call_joined_once() -> None:
    hub, a, b, filtered = Hub(), Recorder(), Recorder(), Recorder()
    live(hub, a, "c1")
    live(hub, b, "c1")
    live(hub, filtered, "c1", types=frozenset({"transcript.final"}))
    batch = [ev("c1", 1), ev("c2", 1), ev("c1", 2, kind="agent.state"), ev("c1", 3)]

    written = hub.deliver(batch)

    c1 = [batch[0], batch[2], batch[3]]
    assert written == 6  # three events, two subscribers, handed over whole
    assert a.blocks == b.blocks == [b"".join(e.wire for e in c1)]
    assert a.blocks[0] is b.blocks[0]  # one join for every subscriber of the call
    assert a.seqs == [("c1", 1), ("c1", 2), ("c1", 3)]
    assert filtered.blocks == []  # a filter takes events one by one
    assert filtered.seqs == [("c1", 1), ("c1", 3)]


def test_a_batch_overlapping_what_a_subscriber_has_sent_goes_event_by_event() -> None:
    hub, conn = Hub(), Recorder()
    sub = Subscription(conn, "acme", "c1", None)
    hub.add(sub)
    assert sub.go_live(covered_seq=2) == []  # a replay sent up to 2
    hub.deliver([ev("c1", 2), ev("c1", 3)])  # 2 again (the broker redelivered it), then 3
    hub.deliver([ev("c1", 4), ev("c1", 5)])
    assert conn.seqs == [("c1", 3), ("c1", 4), ("c1", 5)]
    assert conn.blocks == [ev("c1", 4).wire + ev("c1", 5).wire]


def test_wildcard_keeps_the_batch_order_across_calls() -> None:
    hub, watcher = Hub(), Recorder()
    live(hub, watcher, "*")
    live(hub, Recorder(), "c1")
    hub.deliver([ev("c1", 1), ev("c2", 1), ev("c1", 2), ev("c3", 1, account="globex")])
    assert watcher.seqs == [("c1", 1), ("c2", 1), ("c1", 2)]
    assert watcher.blocks == []


def test_a_connection_offering_its_write_gets_the_block_straight_from_the_fan_out() -> None:
    hub, direct, queued = Hub(), Recorder(), Recorder()
    written: list[bytes] = []
    direct.direct_write = written.append  # type: ignore[assignment]
    live(hub, direct, "c1")
    live(hub, queued, "c1")
    batch = [ev("c1", 1), ev("c1", 2)]
    assert hub.deliver(batch) == 4
    assert written == [batch[0].wire + batch[1].wire]
    assert direct.blocks == []  # not asked to queue
    assert queued.blocks == written
    hub.deliver([ev("c1", 2)])  # already sent: neither path sends it again
    assert written == [batch[0].wire + batch[1].wire]


def test_a_socket_that_fails_its_write_misses_the_block_and_nobody_else_does() -> None:
    hub, broken, other = Hub(), Recorder(), Recorder()

    def closed_under_us(block: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    broken.direct_write = closed_under_us  # type: ignore[assignment]
    live(hub, broken, "c1")
    live(hub, other, "c1")
    assert hub.deliver([ev("c1", 1)]) == 1
    assert other.seqs == [("c1", 1)]
    assert broken.direct_write is None  # its connection is ending; the fan-out stops offering it


def test_a_bug_in_a_write_is_not_taken_for_a_closed_socket() -> None:
    hub, conn = Hub(), Recorder()

    def buggy(block: bytes) -> None:
        raise TypeError("a bug, not the socket")

    conn.direct_write = buggy  # type: ignore[assignment]
    live(hub, conn, "c1")
    with pytest.raises(TypeError, match="a bug, not the socket"):
        hub.deliver([ev("c1", 1)])  # up to the runtime's guard, which logs it
    assert conn.direct_write is buggy
