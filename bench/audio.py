"""Live audio beside the usual events (issue 28's target: no audio frame later than 150 ms at
p99, event p99 unchanged beyond noise, RSS growth bounded by the listeners' buffers).

    .venv/bin/python -m bench.audio [--calls 200] [--listeners 2] [--seconds 20] [--workers 2]
                                    [--no-audio] [--aligned] [--server-cpus 0] [--load-cpus 1]
                                    [--targets callstream,callstream+PATCH] [--runs 3]

`--calls` calls each send 16 kHz `pcm_s16le` on both tracks in 20 ms frames (100 frames/s a
call) on their producer's `/v1/ingest` socket, and their events beside it: a
`transcript.partial` every 200 ms and a `transcript.final` every 2 s. Each call has
`--listeners` listeners on `/v1/events` that listen to it and subscribe to its events, four calls
to a socket (the most a socket may listen to). Calls are written 25 to a producer socket, and
each socket keeps its own 20 ms clock, spread over the 20 ms as independent calls' are (a
worker's sockets at even slots; each worker's clock starts where its start-up put it); each
call's events fall on the tick its index picks. `--aligned` is the worst case instead: every
socket of a worker on one tick and every call's event on the same tick, so the node reads the
worker's whole step of audio in one burst with the events among it. Frames carry their send time (wall clock, ms, in
the frame's `ms`), events theirs in `data.t` (µs), so a listener measures each one's latency on
arrival. The load runs in `--workers` processes (a slice of the calls each, producers and
listeners), so the client is not what saturates; the server runs on `--server-cpus` (core 0)
and the load on `--load-cpus` (core 1), as in bench.run. `--no-audio` sends the events alone:
the reference for "event p99 unchanged". The first 3 s are warm-up. Results go to stdout and
bench/results/audio.md.

Each event's latency is split at the `ts` the server gave it when it sequenced it (wall clock,
same machine): sent → sequenced, sequenced → arrived. Each worker also measures its own loop's
lag (a 5 ms timer), which every latency it measures includes. `--targets` runs several servers
in turn, `--runs` times over (the order flipped each round), for an A/B in one run: this tree's
`src/` as `callstream`, with patches of bench/patches as `callstream+<patch>`;
`callstream+diag-audio-stages` adds the server's own timings of each event from the read of its
text frame (sequenced, committed, fanned out, written) and of each audio frame (written), and
its loop's lag.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.targets import CALLSTREAM_BENCH_ENV, ROOT, Target
from callstream.audio import encode_frame

RESULTS = Path(__file__).parent / "results" / "audio.md"
WARM_S = 3.0
FRAME_MS = 20
PAYLOAD = bytes(640)  # 20 ms of 16 kHz 16-bit mono
CALLS_A_PRODUCER = 25  # calls written on one /v1/ingest socket
_ID_LEN = struct.Struct(">H")
_MS = struct.Struct(">I")
_DIGITS = re.compile(rb"\d+")
LAG_PROBE_S = 0.005
# What each worker measures: latencies of audio frames (ms: a frame's `ms`) and events (µs), each
# event's split at the server's own `ts` (ms: producer → sequenced, sequenced → listener), the
# workers' loop lag (µs).
OUTPUTS = ("audio", "events_us", "to_server", "from_server", "loop_lag_us", "errors")


class WorkingTreeTarget(Target):
    """The server of this working tree's `src/` (a plain target runs the installed package)."""

    def _callstream(self, env: dict[str, str]) -> list[str]:
        env["PYTHONPATH"] = str(ROOT / "src")
        return super()._callstream(env)


def now_ms() -> int:
    return int(time.time() * 1000) % 2**32


def now_us() -> int:
    return time.time_ns() // 1000


class Ear(WSListener):  # type: ignore[misc]
    """A listening socket: four calls' audio and events; the latency of each on arrival."""

    def __init__(self, calls: list[str], out: dict[str, array.array[int]], warm_until: float) -> None:
        self.calls, self.out, self.warm_until = calls, out, warm_until

    def on_ws_connected(self, transport: WSTransport) -> None:
        for call_id in self.calls:
            transport.send(WSMsgType.TEXT, orjson.dumps({"type": "listen", "call_id": call_id}))
            transport.send(WSMsgType.TEXT, orjson.dumps({"type": "subscribe", "call_id": call_id}))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        arrived_us = now_us()
        arrived = arrived_us // 1000 % 2**32
        if time.monotonic() < self.warm_until:
            return
        data = frame.get_payload_as_bytes()
        if frame.msg_type is WSMsgType.BINARY:
            (id_len,) = _ID_LEN.unpack_from(data, 2)
            (sent,) = _MS.unpack_from(data, 4 + id_len)
            self.out["audio"].append((arrived - sent) % 2**32)
        elif frame.msg_type is WSMsgType.TEXT:
            i = data.find(b'"t":')
            if i >= 0:
                sent_us = int(_DIGITS.match(data, i + 4).group())  # type: ignore[union-attr]
                self.out["events_us"].append(arrived_us - sent_us)
                j = data.find(b'"ts":')
                if j >= 0:  # the server's own time of the event (ms, when it sequenced it)
                    ts = int(_DIGITS.match(data, j + 5).group())  # type: ignore[union-attr]
                    self.out["to_server"].append(ts - sent_us // 1000)
                    self.out["from_server"].append(arrived_us // 1000 - ts)
            elif b'"error"' in data[:20]:
                self.out["errors"].append(1)


class Mouth(WSListener):  # type: ignore[misc]
    """A producer socket; it reads nothing it needs (no refs: no acks)."""


async def produce(transport: WSTransport, calls: list[str], until: float, audio: bool, offset_s: float, aligned: bool) -> None:
    """Write `calls`' frames every 20 ms from `offset_s` on, and each call's events every 10th tick:
    the same tick for every call when `aligned`, else the tick the call's index picks."""
    if audio:
        for call_id in calls:
            fmt = {"type": "audio.format", "call_id": call_id, "codec": "pcm_s16le", "sample_rate": 16000}
            transport.send(WSMsgType.TEXT, orjson.dumps(fmt))
    await asyncio.sleep(offset_s)
    tick = 0
    start = time.monotonic()
    while time.monotonic() < until:
        for index, call_id in enumerate(calls):
            if audio:
                ms = now_ms()
                transport.send(WSMsgType.BINARY, encode_frame(0, call_id, ms, PAYLOAD))
                transport.send(WSMsgType.BINARY, encode_frame(1, call_id, ms, PAYLOAD))
            turn = tick if aligned else tick + index
            if turn % 10 == 0:
                kind = "transcript.final" if turn % 100 == 0 else "transcript.partial"
                event = {"call_id": call_id, "type": kind, "data": {"speaker": "user", "text": f"words {tick}", "t": now_us()}}
                transport.send(WSMsgType.TEXT, orjson.dumps(event))
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * FRAME_MS / 1000 - time.monotonic()))


async def loop_lag(out: array.array[int], warm_until: float, until: float) -> None:
    """How late this process's loop runs a timer (µs): what its own work adds to every latency."""
    while time.monotonic() < until:
        due = time.monotonic() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        if due > warm_until:
            out.append(int((time.monotonic() - due) * 1e6))


def worker(
    base: str, token: str, calls: list[str], listeners: int, seconds: float, audio: bool,
    phase: tuple[int, int] | None, cpus: str, queue: Any,
) -> None:
    """One load process: `calls`' listeners and producers. `phase` is (this worker's index, the
    number of workers) to spread the producer sockets' ticks over the 20 ms, or None to align them;
    `cpus` the cores it runs on ('' = any)."""
    async def main() -> dict[str, list[int]]:
        out: dict[str, array.array[int]] = {k: array.array("q") for k in OUTPUTS}
        warm_until = time.monotonic() + WARM_S
        ears = []
        for i in range(0, len(calls), 4):
            for _ in range(listeners):
                url = f"{base}/v1/events?token={token}"
                ears.append(await ws_connect(lambda g=calls[i : i + 4]: Ear(g, out, warm_until), url, max_frame_size=1 << 24))
        await asyncio.sleep(0.5)  # the listens are in
        until = time.monotonic() + seconds
        mouths = []
        sockets = range(0, len(calls), CALLS_A_PRODUCER)
        for j, i in enumerate(sockets):
            transport, _ = await ws_connect(Mouth, f"{base}/v1/ingest?token={token}", max_frame_size=1 << 24)
            slot = 0.0 if phase is None else (j * phase[1] + phase[0]) / (len(sockets) * phase[1])
            mouths.append(produce(transport, calls[i : i + CALLS_A_PRODUCER], until, audio, slot * FRAME_MS / 1000, phase is None))
        await asyncio.gather(loop_lag(out["loop_lag_us"], warm_until, until), *mouths)
        await asyncio.sleep(1.0)  # the last deliveries
        for transport, _ in ears:
            transport.disconnect()
        return {k: v.tolist() for k, v in out.items()}

    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    uvloop.install()
    queue.put(asyncio.run(main()))


def percentile(values: list[int] | list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def make_target(name: str, stages: Path) -> WorkingTreeTarget:
    """`callstream` (this tree's `src/`) or `callstream+<patch>[+<patch>…]` (bench/patches), limits
    lifted; `diag-audio-stages` writes the server's own stage timings to `stages`."""
    env = {**CALLSTREAM_BENCH_ENV, "CALLSTREAM_AUDIO_RATE": "0", "CALLSTREAM_DIAG_STAGES": str(stages)}
    kind, *patches = name.split("+")
    if kind != "callstream":
        raise SystemExit(f"--targets: {name}: only callstream[+<patch>…] is measured here")
    return WorkingTreeTarget(name, "callstream", "callstream", patches=[f"{p}.diff" for p in patches], env=env)


def run_once(name: str, args: argparse.Namespace) -> str:
    """One measurement of target `name`: its table (Markdown)."""
    stages = Path(tempfile.mkdtemp(prefix="bench-audio-")) / "stages.json"
    target = make_target(name, stages)
    target.start(args.server_cpus or None)
    try:
        rss_before = target.rss_kib()
        cpu_before, wait_before, wall_before = target.cpu_s(), target.runq_wait_s(), time.monotonic()
        calls = [f"audio_{i}" for i in range(args.calls)]
        share = -(-len(calls) // args.workers)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        base = target.base
        procs = [
            multiprocessing.get_context("spawn").Process(
                target=worker,
                args=(
                    base, target.token, calls[i : i + share], args.listeners, args.seconds, not args.no_audio,
                    None if args.aligned else (w, args.workers), args.load_cpus, queue,
                ),
            )
            for w, i in enumerate(range(0, len(calls), share))
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
        wall = time.monotonic() - wall_before
        server_cores = (target.cpu_s() - cpu_before) / wall
        server_waiting = (target.runq_wait_s() - wait_before) / wall
    finally:
        target.stop()
    audio = [x for r in results for x in r["audio"]]
    events = [x / 1000 for r in results for x in r["events_us"]]
    to_server = [x for r in results for x in r["to_server"]]
    from_server = [x for r in results for x in r["from_server"]]
    lag = [x / 1000 for r in results for x in r["loop_lag_us"]]
    errors = sum(len(r["errors"]) for r in results)
    load = os.getloadavg()
    lines = [
        f"#### {name}: {args.calls} calls × 2 tracks of 16 kHz PCM{' (no audio)' if args.no_audio else ''}, "
        f"{args.listeners} listeners each, {args.seconds:g} s, {args.workers} client workers, "
        f"{'every call on one tick (--aligned)' if args.aligned else 'calls phased over the 20 ms'}, "
        f"server on core {args.server_cpus or 'any'}, load on core {args.load_cpus or 'any'} "
        f"(load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores at the end)",
        "",
        "| what | count | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        f"| audio frames | {len(audio)} | {percentile(audio, 0.5):.0f} | {percentile(audio, 0.99):.0f} | {max(audio, default=0)} |",
        f"| events | {len(events)} | {percentile(events, 0.5):.1f} | {percentile(events, 0.99):.1f} | {max(events, default=0):.1f} |",
        f"| events: sent → sequenced (`ts`) | {len(to_server)} | {percentile(to_server, 0.5):.0f} | {percentile(to_server, 0.99):.0f} | {max(to_server, default=0)} |",
        f"| events: sequenced → arrived | {len(from_server)} | {percentile(from_server, 0.5):.0f} | {percentile(from_server, 0.99):.0f} | {max(from_server, default=0)} |",
        f"| load generator's loop lag (a {LAG_PROBE_S * 1000:g} ms timer) | {len(lag)} | {percentile(lag, 0.5):.1f} | {percentile(lag, 0.99):.1f} | {max(lag, default=0):.1f} |",
    ]
    if stages.exists():  # the server's own stages (diag-audio-stages), from its text frame's read
        for stage, row in orjson.loads(stages.read_bytes()).items():
            what = "server: its loop's lag (a 5 ms timer)" if stage == "loop_lag" else f"server: read → {stage.replace('_', ' ')}"
            lines.append(f"| {what} | {row['n']} | {row['p50']:.1f} | {row['p99']:.1f} | {row['max']:.1f} |")
        shutil.rmtree(stages.parent, ignore_errors=True)
    lines += [
        "",
        f"errors: {errors}; server RSS {rss_before // 1024} MiB before, {peak // 1024} MiB at peak; "
        f"server CPU {server_cores:.2f} cores, waiting for a core {server_waiting:.2f} of the time",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--listeners", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--aligned", action="store_true", help="every call's frames on one tick, and its events too: the worst case")
    parser.add_argument("--server-cpus", default="0", help="taskset list for the server ('' = not pinned)")
    parser.add_argument("--load-cpus", default="1", help="cores for the load processes ('' = not pinned)")
    parser.add_argument("--targets", default="callstream", help="comma-separated: callstream[+<patch>…]")
    parser.add_argument("--runs", type=int, default=1, help="rounds over the targets, the order flipped each round")
    args = parser.parse_args()
    names = args.targets.split(",")
    for round_ in range(args.runs):
        for name in names if round_ % 2 == 0 else names[::-1]:
            text = run_once(name, args)
            print(text, flush=True)
            with RESULTS.open("a") as out:
                out.write(text + "\n")


if __name__ == "__main__":
    main()
