"""What one write to a subscriber's socket costs on this machine, by the path that makes it.

Fan-out at 100k deliveries/s is one socket write per delivery, and a profile of the node has that
write at 60 % of its samples: most of it is the kernel's (on loopback the sender's core also runs
the receiver's TCP input), which every server pays alike. What a server can choose is the path to
the kernel. This measures it with no server around: one process holds N loopback connections on
uvloop (pinned to one core; the reading side is another process on the other core) and writes a
frame to each in turn, by each path, in interleaved rounds (medians over rounds):

- `transport.write`: uvloop's transport, what callstream's fan-out writes with;
- `os.write`: a write on the transport's own descriptor (`send_now`, tried and removed: bench/README,
  `nosendnow`);
- `socket.send`: a send on a duplicate of the descriptor (which would halve the sockets a
  descriptor limit allows).

    .venv/bin/python -m bench.write_floor [--sockets 1000] [--size 300] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import uvloop


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def _readers(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        await loop.create_connection(_Sink, "127.0.0.1", port)
    await asyncio.sleep(3600)


def _reader_process(port: int, count: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    uvloop.run(_readers(port, count))


class _Accepted(asyncio.Protocol):
    def __init__(self, accepted: list[asyncio.Transport], count: int, all_in: asyncio.Event) -> None:
        self._accepted, self._count, self._all_in = accepted, count, all_in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._accepted.append(transport)  # type: ignore[arg-type]  # uvloop's TCPTransport: not a subclass
        if len(self._accepted) == self._count:
            self._all_in.set()


async def measure(count: int, size: int, rounds: int, cpus: tuple[int, int] | None) -> dict[str, list[float]]:
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.Transport] = []
    all_in = asyncio.Event()
    server = await loop.create_server(lambda: _Accepted(accepted, count, all_in), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    reader = multiprocessing.get_context("spawn").Process(
        target=_reader_process, args=(port, count, None if cpus is None else cpus[1]), daemon=True
    )
    reader.start()
    try:
        await asyncio.wait_for(all_in.wait(), 60)
        frame = bytes((0x81, 126)) + size.to_bytes(2, "big") + b"x" * size
        descriptors = [t.get_extra_info("socket").fileno() for t in accepted]
        duplicates = [socket.socket(fileno=os.dup(fd)) for fd in descriptors]
        for duplicate in duplicates:
            duplicate.setblocking(False)
        writes: dict[str, list[Callable[[bytes], Any]]] = {
            "transport.write": [t.write for t in accepted],
            "os.write": [functools.partial(os.write, fd) for fd in descriptors],
            "socket.send": [d.send for d in duplicates],
        }
        per_write: dict[str, list[float]] = {name: [] for name in writes}
        for _ in range(rounds):
            for name, each in writes.items():
                started = time.process_time()
                for _ in range(50):
                    for write in each:
                        write(frame)
                    await asyncio.sleep(0.002)  # the readers drain; uvloop flushes what it held
                per_write[name].append((time.process_time() - started) / (50 * count) * 1e6)
        for duplicate in duplicates:
            duplicate.close()
        return per_write
    finally:
        reader.kill()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--size", type=int, default=300, help="payload bytes per frame (126–65535)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpus", default="0,1", help="writer's core, readers' core ('' not to pin)")
    args = parser.parse_args()
    if not 126 <= args.size <= 65535:
        parser.error("--size must be 126–65535 (one frame with a 16-bit length)")
    cpus = tuple(int(c) for c in args.cpus.split(",")) if args.cpus else None
    if cpus is not None and len(cpus) != 2:
        parser.error("--cpus takes two cores: the writer's, then the readers'")
    results = uvloop.run(measure(args.sockets, args.size, args.rounds, cpus))  # type: ignore[arg-type]
    base = statistics.median(results["transport.write"])
    print(f"{args.sockets} loopback sockets, {args.size}-byte frames, {args.rounds} rounds (CPU µs per write)")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:16} median {median:5.2f} µs  {median / base:4.2f}× transport.write  "
              f"rounds {', '.join(f'{s:.2f}' for s in samples)}")


if __name__ == "__main__":
    main()
