"""What one fan-out delivery costs the node, on an event stream (SSE) and on a WebSocket.

The fan-out scenario's target for SSE (≥ 0.7× the WebSocket's rate at p99 ≤ 25 ms) is a latency
target, which a shared machine blurs: when other work takes the core, every step misses it. What
sets the rate a node keeps up with is the CPU each delivery costs it, and that this measures with
the machine's noise mostly out of it: CPU time of the node's own thread (`time.thread_time`) across
the fan-out itself, with no latency in it.

A real node (`callstream serve`'s app on uvicorn and uvloop, as `serve` runs it) in a child process
pinned to one core; a reader process on the other core opens `--streams` subscribers, spread over
`--calls` calls (10 a call by default, as in `fanout`), as event streams or as sockets, and reads
and counts what arrives. The node then fans out `--batches` batches of one event per call through
its runtime (`Runtime._deliver`, what a commit hands the hub), each timed from the hub to the end
of the flush that follows it, with a short pause between batches so that the readers keep up (a
client that keeps up is the case the target is about). The events are built before the clock
starts. Each variant runs in a fresh process, rounds interleaved; `--patch NAME` adds this tree
with bench/patches/NAME.diff applied (as `fanout`'s `callstream+NAME`). Prints CPU µs per delivery
(median over rounds) per variant and dialect, and the deliveries the readers counted.

    .venv/bin/python -m bench.sse_floor [--streams 1000] [--calls 100] [--batches 300] [--rounds 5] [--patch NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
DIALECTS = ("ws", "sse")


class _Reader(asyncio.Protocol):
    """One subscriber: sends its request (on a socket, its subscribe once the upgrade is answered),
    then counts events."""

    def __init__(self, request: bytes, then: bytes, counts: dict[str, Any]) -> None:
        self._request, self._then, self._counts = request, then, counts
        self._transport: Any = None
        self._subscribed = False
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        text = self._tail + data
        self._tail = text[-32:]  # a marker split between two reads is counted once
        if self._then:
            self._transport.write(self._then)
            self._then = b""
        if not self._counts["head"]:
            self._counts["head"] = text[:300].decode(errors="replace")  # what a refusal says
        if not self._subscribed and b'"subscribed"' in text:
            self._subscribed = True
            self._counts["subscribed"] += 1
        self._counts["events"] += data.count(b'"transcript.final"')


def _requests(dialect: str, port: int, token: str, call: str) -> tuple[bytes, bytes]:
    """The request, and what follows its answer."""
    if dialect == "sse":
        return (f"GET /v1/events/stream?call_id={call} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n").encode(), b""
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n")
    payload = json.dumps({"type": "subscribe", "call_id": call}).encode()
    frame = bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload  # masked with a zero key
    return upgrade.encode(), frame


async def _read(dialect: str, port: int, token: str, calls: list[str], per_call: int, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    counts: dict[str, Any] = {"subscribed": 0, "events": 0, "head": ""}
    for n in range(len(calls) * per_call):
        request, then = _requests(dialect, port, token, calls[n % len(calls)])
        await loop.create_connection(lambda r=request, t=then: _Reader(r, t, counts), "127.0.0.1", port)  # type: ignore[misc]
    while True:
        pipe.send(dict(counts))
        if pipe.poll(0.2) and pipe.recv() == "stop":
            return
        await asyncio.sleep(0.05)


def _reader_process(dialect: str, port: int, token: str, calls: list[str], per_call: int, cpu: int | None,
                    pipe: Connection) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    uvloop.run(_read(dialect, port, token, calls, per_call, pipe))


def _latest(pipe: Connection) -> dict[str, Any]:
    counts = pipe.recv()
    while pipe.poll():
        counts = pipe.recv()
    return counts  # type: ignore[no-any-return]


async def _node(args: argparse.Namespace, token: str) -> dict[str, Any]:
    """The child: a node, its readers, and the timed fan-outs."""
    from callstream.events import Event
    from callstream.server.serve import bound_port, serve
    from callstream.settings import Settings

    result: dict[str, Any] = {}
    settings = Settings(port=0, host="127.0.0.1", data_dir=args.data_dir, log_level="warning")

    async def fan_out(server: Any) -> None:
        runtime = server.runtime
        calls = [f"floor{c:03d}" for c in range(args.calls)]
        here, there = multiprocessing.Pipe()
        reader = multiprocessing.get_context("spawn").Process(
            target=_reader_process, daemon=True,
            args=(args.dialect, bound_port(server), token, calls, args.per_call, args.reader_cpu, there),
        )
        reader.start()
        try:
            streams = len(calls) * args.per_call
            deadline = time.monotonic() + 120
            while (counts := _latest(here))["subscribed"] < streams:
                assert time.monotonic() < deadline, f"the subscribers did not all subscribe: {counts}"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            text = "thank you for calling, how can I help you today with your reservation " * 2
            spent = 0.0
            for seq in range(1, args.batches + 1):
                events = [Event("bench", call, seq, 1_765_000_000_000, "transcript.final",
                                {"speaker": "agent", "text": text, "is_final": True}) for call in calls]
                started = time.thread_time()
                runtime._deliver(events)
                await asyncio.sleep(0)  # the flush after the fan-out (a call_soon) runs here
                spent += time.thread_time() - started
                await asyncio.sleep(args.pause_ms / 1000)
            expected = streams * args.batches
            for _ in range(600):  # a minute at most for the readers to count the last ones
                if (got := _latest(here)["events"]) >= expected:
                    break
                await asyncio.sleep(0.1)
            result.update(us=spent / expected * 1e6, delivered=got, expected=expected)
            here.send("stop")
        finally:
            reader.join(5)
            reader.kill()
            server.should_exit = True

    await serve(settings, fan_out)
    return result


def _child(args: argparse.Namespace) -> None:
    if args.node_cpu is not None:
        os.sched_setaffinity(0, {args.node_cpu})
    token = os.environ["SSE_FLOOR_TOKEN"]
    print(json.dumps(uvloop.run(_node(args, token))))


def _tree(patch: str | None, workdir: Path) -> dict[str, str]:
    """The environment that runs this tree's src, or a copy with `patch` applied."""
    env = {**os.environ, "CALLSTREAM_MAX_CONNECTIONS_PER_KEY": "0", "CALLSTREAM_MAX_CONNECTIONS_PER_ACCOUNT": "0"}
    env["PYTHONPATH"] = str(ROOT / "src")  # this tree's, not whichever the venv's editable install names
    if patch is not None:
        shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        subprocess.run(["git", "apply", "--unsafe-paths", str(ROOT / "bench/patches" / f"{patch}.diff")],
                       cwd=workdir, check=True)
        env["PYTHONPATH"] = str(workdir / "src")
    return env


def _one(args: argparse.Namespace, env: dict[str, str], dialect: str) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="sse-floor-"))
    try:
        created = subprocess.run(
            [sys.executable, "-m", "callstream", "keys", "create", "--account", "bench", "--json",
             "--data-dir", str(data)], env=env, cwd=ROOT, check=True, capture_output=True,
        )
        token = json.loads(created.stdout)["key"]
        command = [sys.executable, "-m", "bench.sse_floor", "--child", "--dialect", dialect, "--data-dir", str(data),
                   "--streams", str(args.streams), "--calls", str(args.calls), "--batches", str(args.batches),
                   "--pause-ms", str(args.pause_ms), "--cpus", args.cpus]
        out = subprocess.run(command, env={**env, "SSE_FLOOR_TOKEN": token}, cwd=ROOT, capture_output=True,
                             timeout=600)
        if out.returncode:
            raise RuntimeError(f"the node failed:\n{out.stderr.decode()[-3000:]}")
        return json.loads(out.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--pause-ms", type=float, default=5.0, help="between batches: the readers keep up")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--patch", action="append", default=[], help="also this tree + bench/patches/NAME.diff")
    parser.add_argument("--dialects", default="ws,sse")
    parser.add_argument("--cpus", default="0,1", help="the node's core, the readers' core ('' not to pin)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dialect", default="sse", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else [None, None]
    args.node_cpu, args.reader_cpu = cpus
    args.per_call = max(1, args.streams // args.calls)
    if args.child:
        _child(args)
        return
    variants: dict[str, dict[str, str]] = {}
    workdirs = []
    for patch in [None, *args.patch]:
        workdir = Path(tempfile.mkdtemp(prefix="sse-floor-tree-"))
        workdirs.append(workdir)
        variants["this tree" if patch is None else f"+{patch}"] = _tree(patch, workdir)
    dialects = args.dialects.split(",")
    samples: dict[tuple[str, str], list[float]] = {(v, d): [] for v in variants for d in dialects}
    delivered: dict[tuple[str, str], str] = {}
    try:
        for n in range(args.rounds):
            order = list(samples)
            order = order[n % len(order):] + order[: n % len(order)]
            for variant, dialect in order:
                got = _one(args, variants[variant], dialect)
                samples[(variant, dialect)].append(got["us"])
                delivered[(variant, dialect)] = f"{got['delivered']:,}/{got['expected']:,}"
                print(f"round {n + 1} {variant:24} {dialect:3} {got['us']:6.2f} µs/delivery "
                      f"(delivered {delivered[(variant, dialect)]})", flush=True)
    finally:
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.streams} subscribers on {args.calls} calls, {args.batches} batches of one event a call, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}: CPU µs per delivery, median of "
          f"{args.rounds} rounds")
    for (variant, dialect), values in samples.items():
        print(f"{variant:24} {dialect:3} median {statistics.median(values):6.2f}  "
              f"rounds {', '.join(f'{v:.2f}' for v in values)}  delivered (last) {delivered[(variant, dialect)]}")


if __name__ == "__main__":
    main()
