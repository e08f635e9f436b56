"""What the live campaign filter costs in process: `python -m bench.where_floor`.

`Hub.deliver` of 20,000 events of 10,000 calls (batches of 100) to one `*` subscription, plain
and with `where` that half of the calls match, then `MemoryBroker.publish` with its fan-out to
one `*` subscriber, plain and with `where`. Process time, best of 7 (5 for publish); no sockets,
so it isolates the filter from the machine's other work (bench/README.md, `where`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from callstream.broker.memory import MemoryBroker
from callstream.events import CallState, Event, NewEvent
from callstream.hub import Hub, Subscription
from callstream.metadata import Metadata

CALLS = 10_000
SPRING: Metadata = {"campaign": "spring", "agent": "ada"}
WHERE: Metadata = {"campaign": "spring"}


class Counter:
    """A subscriber that counts what it is handed."""

    direct_write = None

    def __init__(self) -> None:
        self.n = 0

    def enqueue_event(self, event: Event) -> None:
        self.n += 1

    def enqueue_block(self, block: bytes, events: Sequence[Event]) -> int:
        self.n += len(events)
        return len(events)

    def subscription_over(self, sub: Subscription) -> None: ...


def watching(hub: Hub, where: Metadata | None) -> Counter:
    conn = Counter()
    sub = Subscription(conn, "acme", "*", None, where)
    hub.add(sub)
    sub.go_live(0)
    return conn


def hub_ns(where: Metadata | None) -> tuple[float, int]:
    other: Metadata = {"campaign": "summer", "agent": "bob"}
    events = [
        Event("acme", f"c{i % CALLS:05d}", i // CALLS + 1, 0, "agent.state", {"state": "thinking"},
              meta=SPRING if i % 2 else other)
        for i in range(2 * CALLS)
    ]  # fmt: skip
    best, delivered = float("inf"), 0
    for _ in range(7):
        hub = Hub()
        conn = watching(hub, where)
        started = time.process_time()
        for k in range(0, len(events), 100):
            hub.deliver(events[k : k + 100])
        best = min(best, (time.process_time() - started) / len(events) * 1e9)
        delivered = conn.n
    return best, delivered


async def publish_us(where: Metadata | None) -> float:
    hub = Hub()
    watching(hub, where)
    broker = MemoryBroker()

    async def unknown(account: str, call_id: str) -> CallState | None:
        return None

    await broker.start(hub.deliver, unknown)
    calls = [f"c{i:05d}" for i in range(CALLS)]
    for k in range(0, CALLS, 100):  # each call's metadata, on its first event
        await broker.publish("acme", [NewEvent(c, "agent.state", {"state": "thinking", "metadata": SPRING}) for c in calls[k : k + 100]])
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for k in range(0, CALLS, 100):
            await broker.publish("acme", [NewEvent(c, "agent.state", {"state": "thinking"}) for c in calls[k : k + 100]])
        best = min(best, (time.process_time() - started) / CALLS * 1e6)
    await broker.close()
    return best


def main() -> None:
    print("| path | '*' | '*' with where |")
    print("|---|---|---|")
    (plain, n_plain), (filtered, n_filtered) = hub_ns(None), hub_ns(WHERE)
    print(f"| Hub.deliver, ns an event (delivered) | {plain:.0f} ({n_plain:,}) | {filtered:.0f} ({n_filtered:,}) |")
    print(f"| MemoryBroker.publish + fan-out, µs an event | {asyncio.run(publish_us(None)):.2f} | "
          f"{asyncio.run(publish_us(WHERE)):.2f} |")


if __name__ == "__main__":
    main()
