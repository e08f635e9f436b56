"""Live audio beside the usual events (issue 28's target: no audio frame later than 150 ms at
p99, event p99 unchanged beyond noise, RSS growth bounded by the listeners' buffers).

    .venv/bin/python -m bench.audio [--calls 200] [--listeners 2] [--seconds 20] [--workers 2]
                                    [--no-audio]

`--calls` calls each send 16 kHz `pcm_s16le` on both tracks in 20 ms frames (100 frames/s a
call) on their producer's `/v1/ingest` socket, and their events beside it: a
`transcript.partial` every 200 ms and a `transcript.final` every 2 s. Each call has
`--listeners` listeners on `/v1/events` that listen to it and subscribe to its events, four calls
to a socket (the most a socket may listen to). Frames carry their send time (wall clock, ms, in
the frame's `ms`), events theirs in `data.t`, so a listener measures each one's latency on
arrival. The load runs in `--workers` processes (a slice of the calls each, producers and
listeners), so the client is not what saturates. `--no-audio` sends the events alone: the
reference for "event p99 unchanged". The first 3 s are warm-up. Results go to stdout and
bench/results/audio.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue as queue_module
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.targets import make
from callstream.audio import encode_frame, parse_frame

RESULTS = Path(__file__).parent / "results" / "audio.md"
WARM_S = 3.0
FRAME_MS = 20
PAYLOAD = bytes(640)  # 20 ms of 16 kHz 16-bit mono


def now_ms() -> int:
    return int(time.time() * 1000) % 2**32


async def producer(base: str, token: str, calls: list[str], until: float, audio: bool) -> None:
    async with connect(f"{base}/v1/ingest?token={token}", compression=None, max_size=None) as ws:
        for call_id in calls:
            if audio:
                fmt = {"type": "audio.format", "call_id": call_id, "codec": "pcm_s16le", "sample_rate": 16000}
                await ws.send(orjson.dumps(fmt).decode())
        tick = 0
        start = time.monotonic()
        reader = asyncio.create_task(_drain(ws))
        while time.monotonic() < until:
            for call_id in calls:
                if audio:
                    ms = now_ms()
                    await ws.send(encode_frame(0, call_id, ms, PAYLOAD))
                    await ws.send(encode_frame(1, call_id, ms, PAYLOAD))
                if tick % 10 == 0:
                    kind = "transcript.final" if tick % 100 == 0 else "transcript.partial"
                    data = {"speaker": "user", "text": f"words {tick}", "t": now_ms()}
                    await ws.send(orjson.dumps({"call_id": call_id, "type": kind, "data": data}).decode())
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * FRAME_MS / 1000 - time.monotonic()))
        reader.cancel()


async def _drain(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


async def listener(base: str, token: str, calls: list[str], until: float, warm_until: float, out: dict[str, list[int]]) -> None:
    async with connect(f"{base}/v1/events?token={token}", compression=None, max_size=None) as ws:
        for call_id in calls:
            await ws.send(orjson.dumps({"type": "listen", "call_id": call_id}).decode())
            await ws.send(orjson.dumps({"type": "subscribe", "call_id": call_id}).decode())
        while time.monotonic() < until:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.01, until - time.monotonic()))
            except TimeoutError:
                break
            arrived = now_ms()
            if time.monotonic() < warm_until:
                continue
            if isinstance(raw, bytes):
                out["audio"].append((arrived - parse_frame(raw).ms) % 2**32)
                continue
            message = orjson.loads(raw)
            if message.get("type") == "error":
                out["errors"].append(1)
            elif "seq" in message and "t" in message.get("data", {}):
                out["events"].append(arrived - int(message["data"]["t"]))


def worker(base: str, token: str, calls: list[str], listeners: int, seconds: float, audio: bool, queue: Any) -> None:
    async def main() -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"audio": [], "events": [], "errors": []}
        until = time.monotonic() + seconds
        warm_until = time.monotonic() + WARM_S
        groups = [calls[i : i + 4] for i in range(0, len(calls), 4)]
        ears = [listener(base, token, g, until + 1, warm_until, out) for g in groups for _ in range(listeners)]
        mouths = [producer(base, token, calls[i : i + 25], until, audio) for i in range(0, len(calls), 25)]
        await asyncio.gather(*ears, *mouths)
        return out

    queue.put(asyncio.run(main()))


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--listeners", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-audio", action="store_true")
    args = parser.parse_args()
    target = make("callstream")
    target.env["CALLSTREAM_AUDIO_RATE"] = "0"
    target.start(None)
    try:
        rss_before = target.rss_kib()
        calls = [f"audio_{i}" for i in range(args.calls)]
        share = -(-len(calls) // args.workers)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        base = target.base
        procs = [
            multiprocessing.get_context("spawn").Process(
                target=worker,
                args=(base, target.token, calls[i : i + share], args.listeners, args.seconds, not args.no_audio, queue),
            )
            for i in range(0, len(calls), share)
        ]
        for proc in procs:
            proc.start()
        peak = rss_before
        results = []
        while len(results) < len(procs):
            peak = max(peak, target.rss_kib())
            with contextlib.suppress(queue_module.Empty):  # none yet: sample the RSS again
                results.append(queue.get(timeout=0.5))
        for proc in procs:
            proc.join()
        audio = [x for r in results for x in r["audio"]]
        events = [x for r in results for x in r["events"]]
        errors = sum(len(r["errors"]) for r in results)
        load = os.getloadavg()
        lines = [
            f"#### {args.calls} calls × 2 tracks of 16 kHz PCM{' (no audio)' if args.no_audio else ''}, "
            f"{args.listeners} listeners each, {args.seconds:g} s (load average {load[0]:.1f} on {os.cpu_count()} cores)",
            "",
            "| what | count | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|",
            f"| audio frames | {len(audio)} | {percentile(audio, 0.5):.0f} | {percentile(audio, 0.99):.0f} | {max(audio, default=0)} |",
            f"| events | {len(events)} | {percentile(events, 0.5):.0f} | {percentile(events, 0.99):.0f} | {max(events, default=0)} |",
            "",
            f"errors: {errors}; server RSS {rss_before // 1024} MiB before, {peak // 1024} MiB at peak",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        with RESULTS.open("a") as out:
            out.write(text + "\n")
    finally:
        target.stop()


if __name__ == "__main__":
    main()
