"""What idempotent publish costs per event in process: the ingest path's Python without a server.

Each round parses the bench's call mix (`loadgen.MIXES["call"]`, 100 calls) as an ingest frame's
events (`protocol.parse_event`), sequences them in frames of 100 (`MemoryBroker.publish`, the
embedded broker) and builds the commit's journal rows (`journal_rows(by_call(…))`), once with an
`id` on every event and once without, interleaved; process time, best of `--rounds` each.

    .venv/bin/python -m bench.ids_cost [--events 100000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.loadgen import MIXES, make_data
from callstream import protocol as p
from callstream.broker.memory import MemoryBroker
from callstream.events import CallState
from callstream.store.chunks import by_call
from callstream.store.journal import journal_rows

FRAME = 100
CALLS = 100


def frames(n: int, ids: bool, tag: str) -> list[list[dict[str, Any]]]:
    """`n` events of the call mix over `CALLS` calls, in frames of `FRAME`."""
    mix = MIXES["call"]
    events = []
    for i in range(n):
        event = {"call_id": f"{tag}c{i % CALLS}", "type": mix[(i // CALLS) % len(mix)], "ref": i}
        event["data"] = make_data(event["type"], i, 1_795_644_460_123_456_789)
        if ids:
            event["id"] = f"p0123456789abcdef-{i}"
        events.append(event)
    return [events[i : i + FRAME] for i in range(0, n, FRAME)]


async def one_round(n: int, ids: bool, tag: str) -> float:
    """µs per event of process time: parse, sequence, journal rows."""

    async def load(_account: str, _call_id: str) -> CallState | None:
        return None

    broker = MemoryBroker()
    await broker.start(lambda _events: None, load)
    batches = frames(n, ids, tag)
    started = time.process_time()
    for batch in batches:
        parsed = [p.parse_event(item) for item in batch]
        sequenced = await broker.publish("acme", parsed)
        journal_rows(by_call(sequenced))
    spent = time.process_time() - started
    await broker.close()
    return spent / n * 1e6


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ids_cost", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    best: dict[bool, float] = {False: float("inf"), True: float("inf")}
    for r in range(args.rounds):
        for ids in (False, True):
            best[ids] = min(best[ids], await one_round(args.events, ids, f"r{r}{int(ids)}"))
    print(f"without ids {best[False]:.2f} µs/event, with ids {best[True]:.2f} µs/event "
          f"(best of {args.rounds} × {args.events:,} events, process time)")


if __name__ == "__main__":
    asyncio.run(main())
