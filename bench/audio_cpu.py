"""The node's CPU per live audio frame, in lockstep (what `bench.audio`'s server CPU shows only
through the machine's noise).

    .venv/bin/python -m bench.audio_cpu [--calls 20] [--rounds 3000] [--targets callstream,callstream+PATCH] [--runs 3]

Each round the producer writes one frame of each track of `--calls` calls in one write (16 kHz
PCM, 20 ms), and waits until every listener (2 a call, four calls to a socket, as in
`bench.audio`) has heard them all: the node reads the burst at once and is idle between rounds,
so how many frames it handles per read does not depend on what else runs on the machine, and the
server's CPU time (its process tree, from /proc) over the rounds, per frame it took, compares
across targets measured in the same run (`--targets`, the order flipped each round as in
`bench.audio`). It measures the whole way of a frame through the node, the kernel's work on its
sockets included, not the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import statistics
import tempfile
from pathlib import Path

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.frames import Frame, Opcode

from bench.audio import make_target
from bench.targets import Target
from callstream.audio import encode_frame

WARM_ROUNDS = 300
PAYLOAD = bytes(640)  # 20 ms of 16 kHz 16-bit mono


def masked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=True)


class Ear(WSListener):  # type: ignore[misc]
    """A listening socket: counts the audio frames it hears, and wakes the round when all came."""

    def __init__(self, calls: list[str], heard: list[int], done: asyncio.Event, wanted: list[int]) -> None:
        self.calls, self.heard, self.done, self.wanted = calls, heard, done, wanted

    def on_ws_connected(self, transport: WSTransport) -> None:
        for call_id in self.calls:
            transport.send(WSMsgType.TEXT, orjson.dumps({"type": "listen", "call_id": call_id}))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.BINARY:
            self.heard[0] += 1
            if self.heard[0] >= self.wanted[0]:
                self.done.set()


def producer(target: Target) -> socket.socket:
    """A raw ingest socket, so that each round's burst leaves in one write."""
    sock = socket.create_connection(("127.0.0.1", target.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ingest?token={target.token} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"the ingest socket was refused: {head[:200]!r}")
    return sock


async def measure(target: Target, calls: int, rounds: int) -> float:
    """µs of the server's CPU per audio frame it took, over `rounds` rounds."""
    call_ids = [f"cpu_{i}" for i in range(calls)]
    heard, wanted, done = [0], [0], asyncio.Event()
    ears = []
    for i in range(0, calls, 4):
        for _ in range(2):
            group = call_ids[i : i + 4]
            url = f"{target.base}/v1/events?token={target.token}"
            ears.append(await ws_connect(lambda g=group: Ear(g, heard, done, wanted), url))
    sock = producer(target)
    formats = [{"type": "audio.format", "call_id": c, "codec": "pcm_s16le", "sample_rate": 16000} for c in call_ids]
    sock.sendall(b"".join(masked(Opcode.TEXT, orjson.dumps(f)) for f in formats))
    await asyncio.sleep(1.0)  # the listens and the formats are in
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def drain() -> None:  # the server sends the producer nothing it needs; keep it read
        with contextlib.suppress(OSError):
            while await loop.sock_recv(sock, 65536):
                pass

    reader = asyncio.create_task(drain())
    bursts = [
        b"".join(masked(Opcode.BINARY, encode_frame(t, c, n * 20, PAYLOAD)) for c in call_ids for t in (0, 1))
        for n in range(50)
    ]
    per_round = calls * 2 * 2  # frames out: two tracks, two listeners

    async def run(n: int) -> None:
        for r in range(n):
            done.clear()
            wanted[0] = heard[0] + per_round
            await loop.sock_sendall(sock, bursts[r % len(bursts)])
            await asyncio.wait_for(done.wait(), 30)

    await run(WARM_ROUNDS)
    cpu = target.cpu_s()
    await run(rounds)
    cpu = target.cpu_s() - cpu
    reader.cancel()
    sock.close()
    for transport, _ in ears:
        transport.disconnect()
    return cpu / (rounds * calls * 2) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--targets", default="callstream", help="comma-separated: callstream[+<patch>…]")
    parser.add_argument("--runs", type=int, default=3, help="rounds over the targets, the order flipped each round")
    args = parser.parse_args()
    names = args.targets.split(",")
    results: dict[str, list[float]] = {name: [] for name in names}
    uvloop.install()
    for round_ in range(args.runs):
        for name in names if round_ % 2 == 0 else names[::-1]:
            target = make_target(name, Path(tempfile.mkdtemp(prefix="bench-audio-cpu-")) / "stages.json")
            target.start(None)
            try:
                us = asyncio.run(measure(target, args.calls, args.rounds))
            finally:
                target.stop()
            results[name].append(us)
            load = os.getloadavg()[0]
            print(f"{name}: {us:.2f} µs of server CPU per frame (load average {load:.1f})", flush=True)
    for name, values in results.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name}: median {statistics.median(values):.2f} µs per frame ({runs})")


if __name__ == "__main__":
    main()
