"""Soak: many subscribers with subscription churn, producers with call churn, for a long time.

    python -m bench.soak --minutes 30 --connections 5000          # the documented run (not CI)
    python -m bench.soak --minutes 3 --connections 1000           # a short one

Starts a `callstream serve` process of its own (or uses `--url` + `--key` [+ `--pid`]), then:

- producers keep `--calls` calls live over /v1/ingest: partials and finals with refs, then
  `call.ended` after a random length; every ended call is replaced by a new one (call churn);
- `--connections` subscriber sockets each follow 1-2 live calls with `since=0` and keep moving
  to other calls (subscription churn); a few percent reconnect now and then (connection churn);
- every `--sample-s` seconds it samples the server's RSS, open fds (/proc/PID/fd) and asyncio
  task count (`callstream_tasks` in /metrics).

Checks: every acked final was delivered to each subscription that followed its call from
`since=0` to `call.ended`, and is replayable over REST; RSS grew at most 5 % after warm-up (the
first third); sockets and tasks return to their baseline once every client is closed (file fds
may not: the store keeps its pooled SQLite connections open). Prints a table
and writes it to bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

RESULTS = Path(__file__).parent / "results" / "soak.md"


# ---- the server under test ------------------------------------------------------------------------


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A `callstream serve` child (inherits the raised fd limit) with its limits opened up."""

    def __init__(self, connections: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="callstream-soak-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "CALLSTREAM_LOG_LEVEL": "warning",
            "CALLSTREAM_MAX_CONNECTIONS_PER_KEY": str(connections * 2),
            "CALLSTREAM_MAX_CONNECTIONS_PER_ACCOUNT": str(connections * 2),
            "CALLSTREAM_QUOTA_SOCKETS": str(connections * 2),
        }
        command = [
            sys.executable,
            "-m",
            "callstream",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.dir),
        ]
        self.log = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start; see " + str(self.dir / "server.log"))
            time.sleep(0.1)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "callstream",
                "keys",
                "create",
                "--account",
                "soak",
                "--json",
                "--data-dir",
                str(self.dir),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = orjson.loads(out.stdout)["key"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@dataclass
class Sample:
    t_s: float
    rss_mb: float | None
    fds: int | None
    socket_fds: int | None
    tasks: int | None
    sockets: int
    subs: int
    calls_done: int
    finals: int
    delivered: int


def proc_stats(pid: int | None) -> tuple[float | None, int | None, int | None]:
    """RSS (MiB), open fds, and how many of them are sockets."""
    if pid is None:
        return None, None, None
    try:
        with open(f"/proc/{pid}/status") as status:
            rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        fds = os.listdir(f"/proc/{pid}/fd")
        sockets = 0
        for fd in fds:
            with contextlib.suppress(OSError):
                sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        return rss_kb / 1024, len(fds), sockets
    except (OSError, StopIteration):
        return None, None, None


def tasks_gauge(url: str) -> int | None:
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("callstream_tasks "):
            return int(float(line.split()[1]))
    return None


# ---- the workload ---------------------------------------------------------------------------------


@dataclass
class Call:
    call_id: str
    finals: dict[int, str] = field(default_factory=dict)  # acked seq → text
    ended_seq: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Stats:
    finals: int = 0
    delivered: int = 0
    calls_done: int = 0
    complete_subs: int = 0
    missing_deliveries: int = 0
    missing_replays: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, url: str, key: str, pid: int | None) -> None:
        self.args = args
        self.url = url
        self.ws_url = url.replace("http", "ws", 1)
        self.key = key
        self.pid = pid
        self.live: dict[str, Call] = {}
        self.done: list[Call] = []
        self.stats = Stats()
        self.open_sockets = 0
        self.subscriptions = 0
        self.samples: list[Sample] = []
        self.stop_at = 0.0
        self.rng = random.Random(args.seed)

    # -- producers: call churn over /v1/ingest --

    async def producer(self, slot: int) -> None:
        n = 0
        while time.monotonic() < self.stop_at:
            call = Call(f"soak_{slot}_{n}_{self.rng.randrange(1 << 30):x}")
            n += 1
            try:
                await self.run_call(call)
            except (ConnectionClosed, OSError) as exc:
                self.stats.errors.append(f"producer {slot}: {exc!r}")
                await asyncio.sleep(1)

    async def run_call(self, call: Call) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with connect(f"{self.ws_url}/v1/ingest", additional_headers=headers, max_queue=None) as ws:
            self.live[call.call_id] = call
            pending: dict[str, str] = {}
            reader = asyncio.create_task(self.read_acks(ws, call, pending))
            length = self.rng.uniform(self.args.call_s / 2, self.args.call_s * 1.5)
            end = time.monotonic() + length
            i = 0
            while time.monotonic() < end and time.monotonic() < self.stop_at:
                speaker = "user" if i % 2 else "agent"
                text = f"utterance {i} of {call.call_id}"
                for k in range(1, 4):
                    frame = {
                        "call_id": call.call_id,
                        "type": "transcript.partial",
                        "data": {
                            "speaker": speaker,
                            "text": text[: len(text) * k // 4],
                            "utterance_id": f"u{i}",
                        },
                    }
                    await ws.send(orjson.dumps(frame).decode())
                    await asyncio.sleep(self.args.event_interval_s)
                ref = f"f{i}"
                pending[ref] = text
                final = {
                    "call_id": call.call_id,
                    "type": "transcript.final",
                    "ref": ref,
                    "data": {"speaker": speaker, "text": text, "utterance_id": f"u{i}"},
                }
                await ws.send(orjson.dumps(final).decode())
                i += 1
                await asyncio.sleep(self.args.event_interval_s)
            ended = {
                "call_id": call.call_id,
                "type": "call.ended",
                "ref": "end",
                "data": {"status": "completed", "duration_ms": int(length * 1000)},
            }
            await ws.send(orjson.dumps(ended).decode())
            await asyncio.wait_for(reader, 30)
        self.live.pop(call.call_id, None)
        self.done.append(call)
        self.stats.calls_done += 1

    async def read_acks(self, ws: ClientConnection, call: Call, pending: dict[str, str]) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if message["type"] != "ack":
                self.stats.errors.append(f"ingest: {message}")
                continue
            if message["ref"] == "end":
                call.ended_seq = message["seq"]
                call.ended.set()
                return
            call.finals[message["seq"]] = pending.pop(message["ref"])
            self.stats.finals += 1

    # -- subscribers: subscription churn over /v1/events --

    async def subscriber(self, index: int) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.args.ramp_s))
        while time.monotonic() < self.stop_at:
            try:
                await self.subscribe_for_a_while()
            except (ConnectionClosed, OSError, InvalidStatus, TimeoutError) as exc:
                if time.monotonic() < self.stop_at:
                    self.stats.errors.append(f"subscriber {index}: {exc!r}")
                    await asyncio.sleep(1)

    async def subscribe_for_a_while(self) -> None:
        ws = await connect(f"{self.ws_url}/v1/events?token={self.key}", max_queue=None, open_timeout=60)
        self.open_sockets += 1
        following: dict[str, dict[int, str]] = {}  # call_id → finals received (seq → text)
        started: set[str] = set()  # followed from since=0
        # Unsubscribed, `unsubscribed` not seen yet: frames of the old subscription still in
        # flight are not the new one's (the wire order is old frames, `unsubscribed`, new ones).
        draining: set[str] = set()
        # a few percent of the connections reconnect now and then; the rest stay to the end
        lifetime = self.rng.uniform(30, 120) if self.rng.random() < self.args.reconnect_share else 1e9
        leave_at = min(self.stop_at, time.monotonic() + lifetime)
        try:
            while time.monotonic() < leave_at:
                want = self.rng.choice([1, 1, 2])
                while len(following) < want and self.live:
                    call_id = self.rng.choice(list(self.live))
                    if call_id not in following:
                        await ws.send(
                            orjson.dumps({"type": "subscribe", "call_id": call_id, "since": 0}).decode()
                        )
                        following[call_id] = {}
                        started.add(call_id)
                        self.subscriptions += 1
                churn_at = min(leave_at, time.monotonic() + self.rng.uniform(5, self.args.churn_s))
                while time.monotonic() < churn_at:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), max(0.05, churn_at - time.monotonic()))
                    except TimeoutError:
                        break
                    message = orjson.loads(raw)
                    if message.get("call_id") in draining:
                        if message.get("type") == "unsubscribed":
                            draining.discard(message["call_id"])
                        continue
                    self.on_message(message, following, started)
                if following and self.rng.random() < 0.5:  # move to another call
                    call_id = self.rng.choice(list(following))
                    await ws.send(orjson.dumps({"type": "unsubscribe", "call_id": call_id}).decode())
                    following.pop(call_id)
                    started.discard(call_id)
                    draining.add(call_id)
                    self.subscriptions -= 1
        finally:
            self.subscriptions -= len(following)
            self.open_sockets -= 1
            await ws.close()

    def on_message(
        self, message: dict[str, Any], following: dict[str, dict[int, str]], started: set[str]
    ) -> None:
        kind, call_id = message.get("type"), message.get("call_id")
        if kind == "transcript.final" and call_id in following:
            following[call_id][message["seq"]] = message["data"]["text"]
            self.stats.delivered += 1
        elif kind == "call.ended" and call_id in following:
            received = following.pop(call_id)
            self.subscriptions -= 1
            if call_id in started:
                started.discard(call_id)
                self.check_complete(call_id, received)
        elif kind == "error":
            self.stats.errors.append(f"events: {message['data']}")

    def check_complete(self, call_id: str, received: dict[int, str]) -> None:
        call = next((c for c in self.done if c.call_id == call_id), None) or self.live.get(call_id)
        if call is None:
            return
        self.stats.complete_subs += 1
        # the subscriber saw call.ended, so every final before it was acked or is in flight
        expected = {s: t for s, t in call.finals.items() if call.ended_seq is None or s < call.ended_seq}
        missing = [s for s in expected if received.get(s) != expected[s]]
        self.stats.missing_deliveries += len(missing)
        if missing:
            got = sorted(received)
            self.stats.errors.append(
                f"missing {call_id}: seqs {missing[:8]} of {len(expected)} (ended at {call.ended_seq}); "
                f"received {len(got)}: {got[:3]}…{got[-3:]}"
            )

    # -- sampling and the end --

    async def sampler(self, started: float) -> None:
        while True:
            await asyncio.sleep(self.args.sample_s)
            self.sample(started)

    def sample(self, started: float) -> Sample:
        rss, fds, socket_fds = proc_stats(self.pid)
        tasks = tasks_gauge(self.url)
        s = Sample(
            time.monotonic() - started,
            rss,
            fds,
            socket_fds,
            tasks,
            self.open_sockets,
            self.subscriptions,
            self.stats.calls_done,
            self.stats.finals,
            self.stats.delivered,
        )
        self.samples.append(s)
        print(row(s), flush=True)
        return s

    async def verify_replayable(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30) as http:
            for call in self.done:
                response = await http.get(f"/v1/calls/{call.call_id}/events")
                stored = {e["seq"]: e["data"].get("text") for e in response.json()["events"]}
                self.stats.missing_replays += sum(stored.get(s) != t for s, t in call.finals.items())

    async def warm_up(self) -> None:
        """One short call and one socket first, so the baseline has the store's pool open."""
        call = Call("soak_warmup")
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30) as http:
            events = [
                {"type": "transcript.final", "data": {"speaker": "user", "text": "warm"}},
                {"type": "call.ended", "data": {"status": "completed", "duration_ms": 1}},
            ]
            await http.post(f"/v1/calls/{call.call_id}/events", content=orjson.dumps(events))
            await http.get(f"/v1/calls/{call.call_id}/events")
        async with connect(f"{self.ws_url}/v1/events?token={self.key}") as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "call_id": call.call_id, "since": 0}).decode())
            while orjson.loads(await ws.recv())["type"] != "subscribed":
                pass
        await asyncio.sleep(2)

    async def run(self) -> None:
        await self.warm_up()
        started = time.monotonic()
        self.stop_at = started + self.args.minutes * 60
        baseline = self.sample(started)
        sampler = asyncio.create_task(self.sampler(started))
        producers = [asyncio.create_task(self.producer(i)) for i in range(self.args.calls)]
        await asyncio.sleep(2)
        subscribers = [asyncio.create_task(self.subscriber(i)) for i in range(self.args.connections)]
        await asyncio.gather(*producers, *subscribers, return_exceptions=True)
        sampler.cancel()
        await self.verify_replayable()
        await asyncio.sleep(5)  # let the server reap closed sockets
        final = self.sample(started)
        write_report(self, baseline, final)


# ---- reporting ------------------------------------------------------------------------------------

HEADER = "| t (s) | RSS (MiB) | fds | tasks | sockets | subs | calls done | finals acked | finals delivered |"


def row(s: Sample) -> str:
    rss = "-" if s.rss_mb is None else f"{s.rss_mb:.1f}"
    return (
        f"| {s.t_s:.0f} | {rss} | {s.fds if s.fds is not None else '-'} | {s.tasks if s.tasks is not None else '-'} "
        f"| {s.sockets} | {s.subs} | {s.calls_done} | {s.finals} | {s.delivered} |"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write_report(soak: Soak, baseline: Sample, final: Sample) -> None:
    samples, args, st = soak.samples, soak.args, soak.stats
    loaded = [s for s in samples[1:-1] if s.rss_mb is not None]
    warm = [s for s in loaded if s.t_s >= args.minutes * 60 / 3]
    growth = None
    if len(warm) >= 2 and warm[0].rss_mb and warm[-1].rss_mb:
        growth = (warm[-1].rss_mb - warm[0].rss_mb) / warm[0].rss_mb * 100
    peak_sockets = max((s.sockets for s in samples), default=0)

    def span(values: list[int | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{min(known)} – {max(known)}" if known else "-"

    def files(sample: Sample) -> int | None:
        return None if sample.fds is None or sample.socket_fds is None else sample.fds - sample.socket_fds

    def delta(a: int | None, b: int | None) -> str:
        return "-" if a is None or b is None else f"{b - a:+d} ({a} → {b})"

    lines = [
        "# Soak",
        "",
        f"`python -m bench.soak --minutes {args.minutes:g} --connections {args.connections} --calls {args.calls}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, client and server on one host.",
        "",
        "| result | value |",
        "|---|---|",
        f"| peak open subscriber sockets | {peak_sockets} |",
        f"| calls run to the end (call churn) | {st.calls_done} |",
        f"| finals acked | {st.finals} |",
        f"| finals delivered (all subscriptions) | {st.delivered} |",
        f"| subscriptions followed from since=0 to call.ended | {st.complete_subs} |",
        f"| finals missing from such a subscription | {st.missing_deliveries} |",
        f"| acked finals not replayable over REST | {st.missing_replays} |",
        f"| RSS growth after warm-up (first third) | {'-' if growth is None else f'{growth:+.1f} %'} |",
        f"| open fds, before load → after every socket closed | {delta(baseline.fds, final.fds)} |",
        f"| of which sockets | {delta(baseline.socket_fds, final.socket_fds)} |",
        f"| of which files (the store's pooled SQLite connections: db, -wal, -shm each) | {delta(files(baseline), files(final))} |",
        f"| open fds while loaded (after warm-up), min – max | {span([s.fds for s in warm if s.sockets])} |",
        f"| asyncio tasks while loaded (after warm-up), min – max | {span([s.tasks for s in warm if s.sockets])} |",
        f"| asyncio tasks, before load → after every socket closed | {delta(baseline.tasks, final.tasks)} |",
        f"| client-side errors | {len(st.errors)} |",
        "",
        "Checks (issue 7):",
        "",
        f"- every acked final delivered or replayable: {verdict(st.missing_deliveries == 0 and st.missing_replays == 0)}",
        f"- RSS growth after warm-up ≤ 5 %: {verdict(growth is not None and growth <= 5.0)}",
        f"- no socket left open after every client closed: {verdict(baseline.socket_fds is not None and final.socket_fds == baseline.socket_fds)}",
        f"- no task leak (tasks back to the baseline): {verdict(baseline.tasks is not None and final.tasks == baseline.tasks)}",
        "",
        "Samples:",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|",
        *(row(s) for s in samples),
        "",
    ]
    if st.errors:
        lines += ["First errors:", "", *(f"- `{e[:200]}`" for e in st.errors[:10]), ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument(
        "--calls", type=int, default=40, help="calls live at once (each replaced when it ends)"
    )
    parser.add_argument("--call-s", type=float, default=40, help="mean call length")
    parser.add_argument("--event-interval-s", type=float, default=0.25)
    parser.add_argument("--churn-s", type=float, default=30, help="a subscriber moves within 5..this many s")
    parser.add_argument("--reconnect-share", type=float, default=0.05)
    parser.add_argument("--ramp-s", type=float, default=20)
    parser.add_argument("--sample-s", type=float, default=15)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--url", help="an already running server (with --key; --pid to sample it)")
    parser.add_argument("--key")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    limit = raise_fd_limit(args.connections * 2 + 1024)
    if limit < args.connections + 256:
        sys.exit(f"the fd limit is {limit}: too low for {args.connections} connections (raise ulimit -n)")
    server = None
    if args.url:
        url, key, pid = args.url, args.key, args.pid
    else:
        server = Server(args.connections)
        url, key, pid = server.url, server.key, server.proc.pid
    print(
        f"soak: {args.connections} connections, {args.calls} live calls, {args.minutes:g} min against {url}"
    )
    print(HEADER)
    soak = Soak(args, url, key, pid)
    try:
        asyncio.run(soak.run())
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
