"""One node's subscriptions index and fan-out.

The broker hands the events it receives for this node to `Hub.deliver` a batch at a time (a
commit's worth on one node, one socket read's worth from Redis), in per-call `seq` order. Fan-out is a
dictionary lookup per call of the batch; the call's frames of the batch are joined once into one
block, and each live subscriber that takes every event of the call gets that block handed over
whole (its socket's own write, or `Subscriber.enqueue_block`): no encoding, no awaits, no
per-event work per subscriber.
Filtered, pending and wildcard subscriptions take the events one at a time (`offer`).

A subscription starts *pending*: while the server replays history (or reads the call's state
for `subscribed`), live events are parked on the subscription; once the replay is sent they
are flushed with every `seq` the replay already covered skipped. That is what makes `since`
gap-free and duplicate-free without locking the broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from callstream.events import Event
from callstream.metadata import Metadata, matches
from callstream.protocol import WILDCARD


class Subscriber(Protocol):
    """What the hub needs of a connection: non-blocking appends, and word that a subscription
    is over (its call ended). `direct_write`, when not None, takes a block as is (its socket's
    transport's `write`), offered only while nothing may come before it
    (`EventsConnection._refresh_direct`)."""

    direct_write: Callable[[bytes], None] | None

    def enqueue_event(self, event: Event) -> None: ...

    def enqueue_block(self, block: bytes, events: Sequence[Event]) -> int:
        """`events` (one call's, in seq order) and `block`, their frames joined. Returns how many
        were written to the socket at once (the rest is queued)."""
        ...

    def subscription_over(self, sub: Subscription) -> None: ...


class Subscription:
    """One connection's subscription to a call, or to every call of its account (`*`).

    `where` (a `*` subscription's metadata filter) is judged at each event against the call's
    metadata once that event is applied (`Event.meta`, set where the event was sequenced): a
    call joins with the event that gives it matching metadata and leaves with the one that
    takes it away, whichever node either came through."""

    __slots__ = ("account", "call_id", "conn", "last_seq", "over", "parked", "types", "where")

    def __init__(
        self,
        conn: Subscriber,
        account: str,
        call_id: str,
        types: frozenset[str] | None,
        where: Metadata | None = None,
    ) -> None:
        self.conn = conn
        self.account = account
        self.call_id = call_id
        self.types = types
        self.where = where
        self.parked: list[Event] | None = []  # None once live
        self.last_seq = 0  # highest seq sent; explicit calls only (a wildcard spans many calls)
        self.over = False  # the call ended: the hub no longer holds this subscription

    def offer(self, event: Event) -> None:
        if self.types is not None and event.type not in self.types:
            return
        if self.where is not None and not matches(self.where, event.meta):
            return
        if self.parked is not None:
            self.parked.append(event)
            return
        if self.call_id != WILDCARD:
            if event.seq <= self.last_seq:
                return  # already sent by the replay (or delivered twice by the broker)
            self.last_seq = event.seq
        self.conn.enqueue_event(event)

    def go_live(self, covered_seq: int) -> list[Event]:
        """End the pending phase: return parked events newer than what the replay covered."""
        parked, self.parked = self.parked or [], None
        if self.call_id == WILDCARD:
            return parked
        released = [e for e in parked if e.seq > covered_seq]
        self.last_seq = released[-1].seq if released else covered_seq
        return released


_Index = dict[Subscriber, Subscription]


def _by_call(
    events: Sequence[Event], calls: dict[tuple[str, str], _Index]
) -> Iterable[tuple[_Index, Sequence[Event]]]:
    """The batch's events of subscribed calls, per call and in order, with the call's index.
    Events nobody here follows cost one look-up (an ingest-only node groups nothing)."""
    if len(events) == 1:
        event = events[0]
        index = calls.get((event.account, event.call_id))
        return ((index, events),) if index else ()
    groups: dict[tuple[str, str], tuple[_Index, list[Event]]] = {}
    for event in events:
        key = (event.account, event.call_id)
        found = groups.get(key)
        if found is not None:
            found[1].append(event)
        elif index := calls.get(key):
            groups[key] = (index, [event])
    return groups.values()


def _fan_out(subs: Iterable[Subscription], group: Sequence[Event]) -> int:
    """One call's events of a batch to its explicit subscriptions.

    A live subscription without a type filter, that has sent none of these seqs yet, takes the
    whole group as one block of frames, joined once for all of them; any other goes event by
    event (`offer`: parking, filtering, duplicates).
    """
    first, last = group[0].seq, group[-1].seq
    block: bytes | None = None
    written = 0
    for sub in subs:
        if sub.parked is None and sub.types is None and first > sub.last_seq:
            sub.last_seq = last
            if block is None:
                block = group[0].wire if len(group) == 1 else b"".join([e.wire for e in group])
            conn = sub.conn
            write = conn.direct_write
            if write is None:
                written += conn.enqueue_block(block, group)
                continue
            try:
                write(block)
            except (OSError, RuntimeError):
                # closed under us (its end is on its way; uvloop raises RuntimeError once the
                # connection is lost, OSError is for other transports): the others still get
                # theirs. Any other error is a bug, left to the runtime's guard, which logs it
                conn.direct_write = None
                continue
            written += len(group)
        else:
            for event in group:
                sub.offer(event)
    return written


class Hub:
    """Index of (account, call) → subscriptions, and account → wildcard subscriptions."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], dict[Subscriber, Subscription]] = {}
        self._wildcards: dict[str, dict[Subscriber, Subscription]] = {}

    def add(self, sub: Subscription) -> Subscription | None:
        """Register `sub`, replacing (and returning) the connection's earlier one for that call."""
        index = self._index_for(sub.account, sub.call_id, create=True)
        assert index is not None
        previous = index.get(sub.conn)
        index[sub.conn] = sub
        return previous

    def remove(self, conn: Subscriber, account: str, call_id: str) -> Subscription | None:
        index = self._index_for(account, call_id, create=False)
        if index is None:
            return None
        sub = index.pop(conn, None)
        if not index:
            self._drop_index(account, call_id)
        return sub

    def get(self, conn: Subscriber, account: str, call_id: str) -> Subscription | None:
        index = self._index_for(account, call_id, create=False)
        return None if index is None else index.get(conn)

    def deliver(self, events: Sequence[Event]) -> int:
        """Fan a batch out to this node's subscribers; each connection gets each event at most
        once. Returns the deliveries written to sockets at once (`enqueue_block`)."""
        written = 0
        calls = self._calls
        for explicit, group in _by_call(events, calls):
            written += _fan_out(explicit.values(), group)
        if self._wildcards:
            for event in events:
                wildcard = self._wildcards.get(event.account)
                if wildcard:
                    followed = calls.get((event.account, event.call_id))
                    for conn, sub in wildcard.items():
                        if followed is None or conn not in followed:
                            sub.offer(event)
        return written

    def end_call(self, account: str, call_id: str) -> list[Subscription]:
        """`call.ended` was fanned out: nothing can follow it, so the call's subscriptions are over.

        Kept, they would pile up on long-lived sockets (a dashboard follows call after call and
        never unsubscribes from the ended ones): memory that grows with call churn, and slots
        that count against the per-connection limit. Returns them (each one the broker watches).
        """
        index = self._calls.pop((account, call_id), None)
        if not index:
            return []
        for sub in index.values():
            sub.over = True
            sub.conn.subscription_over(sub)
        return list(index.values())

    def watched(self) -> Iterator[tuple[str, str]]:
        """Every (account, call_id or '*') some connection of this node subscribes to."""
        yield from self._calls
        yield from ((account, WILDCARD) for account in self._wildcards)

    def subscription_count(self) -> int:
        return sum(map(len, self._calls.values())) + sum(map(len, self._wildcards.values()))

    def _index_for(
        self, account: str, call_id: str, *, create: bool
    ) -> dict[Subscriber, Subscription] | None:
        if call_id == WILDCARD:
            if create:
                return self._wildcards.setdefault(account, {})
            return self._wildcards.get(account)
        if create:
            return self._calls.setdefault((account, call_id), {})
        return self._calls.get((account, call_id))

    def _drop_index(self, account: str, call_id: str) -> None:
        if call_id == WILDCARD:
            self._wildcards.pop(account, None)
        else:
            self._calls.pop((account, call_id), None)
