"""The load generator: worker processes of picows clients that speak each target's public protocol.

A worker is a separate process (pinned to the load core) running uvloop. The orchestrator
(`bench.run`) drives it over a `multiprocessing` pipe with small commands: open subscribers,
start or change a producer's rate, reset and collect statistics, drop and resume sockets.

The hot path is `on_ws_frame`: it finds `"sent_ns":` in the frame's bytes (no JSON decode),
computes producer→subscriber latency against `time.time_ns()` (same machine) and counts the
delivery when its send time lies inside the orchestrator's measurement window. Latencies are
kept as microseconds in an `array('q')` and shipped back as bytes.

Dialects (how each target spells subscribe / publish / confirm):

- `callstream` and `bare`: callstream's protocol (`/v1/events` subscribe, `/v1/ingest` arrays
  with `ref` → `ack`); `bare` is the minimal bare-websockets reference speaking the same subset.
- `socketio`: Engine.IO v4 + Socket.IO v5 framing over the WebSocket transport (`40` connect,
  `42[...]` events, `421[...]`/`431[...]` acks, `2`/`3` ping/pong), the python-socketio server's
  own client semantics: `subscribe` joins a room per call, `publish` emits to the room.
- `sse`: callstream's Server-Sent Events (`GET /v1/events/stream?call_id=…`, one HTTP/1.1 stream per
  subscriber, read by a plain asyncio protocol: each message's bytes are searched for `"sent_ns":` as
  a WebSocket frame's are); producing as `callstream`.
- `nchan`: a subscriber WebSocket per call channel (`/sub/<call>`), a publisher WebSocket per
  call channel (`/pub/<call>`): every text message is one event. nchan has no envelope, so the
  event JSON is the message.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import resource
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
time_ns = time.time_ns
SENT_KEY = b'"sent_ns":'

# ---- event payloads ---------------------------------------------------------------------------

_TEXTS = (
    "I would like to change my booking",
    "Sure, let me check what we have on Tuesday afternoon.",
    "Can you also add a second passenger to the reservation please",
)
# The ingest scenario's `--redact` A/B: the same shape of call, but two utterances in three carry
# personal data (written and spoken), so the redactor's full path runs, not only its fast path.
_PII_TEXTS = (
    "I would like to change my booking for two people",
    "Sure, my card is 4111 1111 1111 1111 and the zip code is 94107",
    "You can call me back on four one five, five five five, two six seven one please",
)
TEXTS = {"plain": _TEXTS, "pii": _PII_TEXTS}
MIXES = {
    # fan-out, connections, campaign, ingest: what a live call looks like (partials dominate).
    "call": ("transcript.partial", "agent.state", "transcript.partial", "transcript.final", "transcript.partial",
             "agent.state", "transcript.partial", "transcript.final", "function.call", "function.result"),
    # reconnect storm: nothing a replay may leave out (no partials), so any gap is a real loss.
    "durable": ("agent.state", "transcript.final", "agent.state", "function.call"),
}


def make_data(kind: str, i: int, sent_ns: int, texts: tuple[str, ...] = _TEXTS) -> dict[str, Any]:
    if kind == "transcript.partial":
        return {"speaker": "user", "text": texts[i % 3][: 12 + i % 20], "sent_ns": sent_ns}
    if kind == "transcript.final":
        return {"speaker": "agent" if i % 2 else "user", "text": texts[i % 3], "sent_ns": sent_ns}
    if kind == "agent.state":
        return {"state": ("listening", "thinking", "speaking")[i % 3], "sent_ns": sent_ns}
    if kind == "function.call":
        return {"name": "lookup_booking", "tool_call_id": f"t{i}", "args": {"ref": "ABC123"}, "sent_ns": sent_ns}
    return {"name": "lookup_booking", "tool_call_id": f"t{i}", "result": {"ok": True}, "sent_ns": sent_ns}


# ---- statistics of this process ---------------------------------------------------------------


class Stats:
    """Counters of this worker; one instance per process (the hot path reads it as a global)."""

    def __init__(self) -> None:
        self.t0 = 0
        self.t1 = 1 << 62
        self.reset()
        self.total = 0

    def reset(self) -> None:
        self.lat = array.array("q")
        self.sent = array.array("q")  # µs, beside `lat`, only when BENCH_TIMELINE asks for it
        self.n = 0  # non-partial deliveries inside the window
        self.n_partial = 0
        self.rx = 0  # deliveries received inside the window (by receive time): throughput
        self.errors = 0
        self.error_samples: list[str] = []
        self.closes = 0
        self.close_codes: dict[str, int] = {}

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])

    def closed(self, code: str) -> None:
        self.closes += 1
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "lat": self.lat.tobytes(),
            "sent": self.sent.tobytes(),
            "n": self.n,
            "n_partial": self.n_partial,
            "rx": self.rx,
            "total": self.total,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "closes": self.closes,
            "close_codes": self.close_codes,
        }


S = Stats()
# Keep each delivery's send time too, so a step's latency can be laid out over its window
# (`bench.run` writes timeline-*.json): where the slow deliveries were sent, and how they bunch.
TIMELINE = bool(os.environ.get("BENCH_TIMELINE"))


def record(p: bytes, i: int) -> None:
    """Count one delivery whose frame holds `"sent_ns":` at index i (the hot path)."""
    now = time_ns()
    S.total += 1
    j = i + 10
    if p[j] == 32:  # json.dumps puts a space after the colon
        j += 1
    sent = int(p[j : j + 19])
    if S.t0 <= now < S.t1:
        S.rx += 1
    if S.t0 <= sent < S.t1:
        if b'.partial"' in p:
            S.n_partial += 1
        else:
            S.n += 1
        S.lat.append((now - sent) // 1000)
        if TIMELINE:
            S.sent.append(sent // 1000)


# ---- subscribers --------------------------------------------------------------------------------


class Subscriber(WSListener):  # type: ignore[misc]
    """One subscriber socket; `expect` confirmations (subscribed / ack / connect) resolve `ready`."""

    dialect = "callstream"

    def __init__(self, calls: list[str], since: dict[str, int] | None = None, track: bool = False,
                 prev: Subscriber | None = None, inflate: bool = False, where: dict[str, Any] | None = None) -> None:
        self.inflater = zlib.decompressobj(-15) if inflate else None
        self.calls = calls
        self.where = where  # a `*` subscription's filter (`{"metadata": {...}}`)
        self.since = since
        self.track = track
        self.confirmed = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None
        self.last_seq: dict[str, int] = {}
        self.gaps = 0
        self.dups = 0
        self.confirmed_at = 0
        self.subscribed_seq: dict[str, int] = {}
        if prev is not None:  # a resumed socket carries on the seq bookkeeping of the dropped one
            self.last_seq = dict(prev.last_seq)
            self.gaps, self.dups = prev.gaps, prev.dups

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.start()

    def start(self) -> None:
        assert self.transport is not None
        for call in self.calls:
            msg: dict[str, Any] = {"type": "subscribe", "call_id": call}
            if self.since is not None and call in self.since:
                msg["since"] = self.since[call]
            if self.where is not None and call == "*":
                msg["where"] = self.where
            self.transport.send(TEXT, orjson.dumps(msg))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is TEXT:
            p = frame.get_payload_as_bytes()
            if frame.rsv1 and self.inflater is not None:  # permessage-deflate, as browsers negotiate it
                p = self.inflater.decompress(p + b"\x00\x00\xff\xff")
            i = p.find(SENT_KEY)
            if i >= 0:
                record(p, i)
                if self.track:
                    self.track_frame(p)
            else:
                self.control(p)
        elif frame.msg_type is CLOSE:
            S.closed(str(frame.get_close_code().value))
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before confirmed"))
            self.ready.exception()

    def track_frame(self, p: bytes) -> None:
        obj = orjson.loads(p)
        call, seq = obj["call_id"], obj["seq"]
        last = self.last_seq.get(call, 0)
        if seq <= last:
            self.dups += 1
            return
        if last and seq != last + 1:
            self.gaps += seq - last - 1
        self.last_seq[call] = seq

    def confirm(self) -> None:
        self.confirmed += 1
        if self.confirmed >= len(self.calls) and not self.ready.done():
            self.confirmed_at = time_ns()
            self.ready.set_result(None)

    def control(self, p: bytes) -> None:
        if b'"subscribed"' in p:
            if self.track:
                obj = orjson.loads(p)
                self.subscribed_seq[obj["call_id"]] = obj["data"]["seq"]
                if obj["data"]["seq"] and obj["call_id"] not in self.last_seq:
                    # First subscribe without since: live from here on.
                    self.last_seq[obj["call_id"]] = obj["data"]["seq"]
            self.confirm()
        elif b'"error"' in p:
            S.error(p.decode(errors="replace"))


class SocketIOSubscriber(Subscriber):
    dialect = "socketio"

    def start(self) -> None:
        pass  # wait for the Engine.IO open packet

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            super().on_ws_frame(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        i = p.find(SENT_KEY)
        if i >= 0:
            record(p, i)
            return
        if p == b"2":
            transport.send(TEXT, b"3")
        elif p[:1] == b"0":
            transport.send(TEXT, b"40")
        elif p[:2] == b"40":
            for n, call in enumerate(self.calls):
                transport.send(TEXT, b"42%d" % (n + 1) + orjson.dumps(["subscribe", call]))
        elif p[:2] == b"43":
            self.confirm()
        elif p[:2] == b"44":
            S.error(p.decode(errors="replace"))


class NchanSubscriber(Subscriber):
    dialect = "nchan"

    def start(self) -> None:
        for _ in self.calls:  # the channels are in the URL; nchan confirms nothing
            self.confirm()


class SseSubscriber(asyncio.Protocol):
    """One event stream (`GET /v1/events/stream`) of its calls; `ready` once every call's `subscribed`
    came. The response is chunked, and each chunk the server writes holds whole messages, so a chunk's
    size line only ever precedes a message: splitting the body at blank lines finds every message."""

    dialect = "sse"

    def __init__(self, calls: list[str], token: str, **_: Any) -> None:
        self.calls = calls
        self.token = token
        self.confirmed = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.head = True  # still reading the response's status line and headers
        self.buf = b""
        self.aborted = False  # closed by us: not counted as a close the server made

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport subclass
        self.transport = transport
        query = "&".join(f"call_id={c}" for c in self.calls)
        transport.write(
            f"GET /v1/events/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                S.error(buf[:200].decode(errors="replace"))
                self.connection_lost(None)
                return
            self.head, buf = False, buf[end + 4 :]
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2 :]
        for p in buf[:end].split(b"\n\n"):
            i = p.find(SENT_KEY)
            if i >= 0:
                record(p, i)
            elif b'"subscribed"' in p:
                self.confirmed += 1
                if self.confirmed >= len(self.calls) and not self.ready.done():
                    self.ready.set_result(None)
            elif b"event: error" in p:
                S.error(p.decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("the stream ended before it was confirmed"))
            self.ready.exception()
        elif not self.aborted:
            S.closed("sse-end")


async def open_stream(base: str, token: str, calls: list[str]) -> SseSubscriber:
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    _, sub = await asyncio.get_running_loop().create_connection(lambda: SseSubscriber(calls, token), host, int(port))
    await asyncio.wait_for(sub.ready, 60)
    return sub


SUBSCRIBERS: dict[str, type[Subscriber]] = {
    "callstream": Subscriber,
    "bare": Subscriber,
    "socketio": SocketIOSubscriber,
    "nchan": NchanSubscriber,
}


def sub_url(dialect: str, base: str, token: str, calls: list[str]) -> str:
    if dialect == "socketio":
        return f"{base}/socket.io/?EIO=4&transport=websocket"
    if dialect == "nchan":
        return f"{base}/sub/{','.join(calls)}"
    return f"{base}/v1/events?token={token}"


# ---- producers ----------------------------------------------------------------------------------


class ProducerSocket(WSListener):  # type: ignore[misc]
    """One producer connection: sends frames, counts acks (events acknowledged)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, int] = {}  # ref → events it acknowledges
        self.acked = 0
        self.inflight_frames = 0
        self.room = asyncio.Event()
        self.room.set()
        self.window = 0
        self.errors = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.dialect != "socketio" and not self.ready.done():
            self.ready.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is CLOSE:
            S.closed("producer:" + str(frame.get_close_code().value))
            transport.disconnect()
            return
        if frame.msg_type is not TEXT:
            return
        p = frame.get_payload_as_bytes()
        if self.dialect == "socketio":
            if p == b"2":
                transport.send(TEXT, b"3")
            elif p[:1] == b"0":
                transport.send(TEXT, b"40")
            if p[:2] == b"40" and not self.ready.done():
                self.ready.set_result(None)
            elif p[:2] == b"43":
                k = 2
                while p[k : k + 1].isdigit():
                    k += 1
                self._acked(int(p[2:k]))
            return
        if self.dialect == "nchan":
            return
        if b'"ack"' in p:
            obj = orjson.loads(p)
            self._acked(obj["ref"])
        elif b'"error"' in p:
            self.errors += 1
            S.error("producer: " + p.decode(errors="replace"))

    def _acked(self, ref: int) -> None:
        self.acked += self.pending.pop(ref, 0)
        self.inflight_frames -= 1
        if self.window and self.inflight_frames < self.window:
            self.room.set()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("producer disconnected"))
            self.ready.exception()


class Producer:
    """Publishes events round-robin over `calls` at `rate` events/s (open loop, 5 ms ticks).

    Records (send time, events, non-partial events) per tick so the orchestrator can ask how
    many were sent inside a measurement window. For the ingest scenario `window` > 0 turns it
    into a closed loop: at most `window` unacknowledged frames per connection.
    """

    TICK = 0.005

    def __init__(self, dialect: str, base: str, token: str, calls: list[str], conns: int, mix: str,
                 batch: int = 0, window: int = 0, ref_every: bool = False, texts: str = "plain",
                 metadata: dict[str, Any] | None = None, ids: bool = False) -> None:
        self.dialect = dialect
        self.texts = TEXTS[texts]
        self.metadata = metadata  # set on each call's first event (`data.metadata`)
        self.base = base
        self.token = token
        self.calls = calls
        self.nconns = len(calls) if dialect == "nchan" else max(1, min(conns, len(calls)))
        self.mix = MIXES[mix]
        self.batch = batch
        self.window = window
        self.ref_every = ref_every
        self.ids = ids  # an `id` on every event (idempotent publish), unique within its call
        self.rate = 0.0
        self.sockets: list[ProducerSocket] = []
        self.owner: list[int] = []  # call index → socket index
        self.log: list[tuple[int, int, int]] = []
        self.per_call: dict[str, int] = {}
        self.sent = 0
        self.ref = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.i = 0

    def url(self, k: int) -> str:
        if self.dialect == "socketio":
            return f"{self.base}/socket.io/?EIO=4&transport=websocket"
        if self.dialect == "nchan":
            return f"{self.base}/pub/{self.calls[k]}"
        return f"{self.base}/v1/ingest?token={self.token}"

    async def connect(self) -> None:
        for k in range(self.nconns):
            _, sock = await ws_connect(lambda: ProducerSocket(self.dialect), self.url(k), max_frame_size=1 << 24)
            await asyncio.wait_for(sock.ready, 10)
            sock.window = self.window
            self.sockets.append(sock)
        self.owner = [c % self.nconns for c in range(len(self.calls))]

    def frames_for(self, n: int, sent_ns: int) -> tuple[list[list[dict[str, Any]]], int]:
        groups: list[list[dict[str, Any]]] = [[] for _ in self.sockets]
        nonpartial = 0
        calls, mix, owner, per_call = self.calls, self.mix, self.owner, self.per_call
        ncalls = len(calls)
        for _ in range(n):
            i = self.i
            self.i += 1
            c = i % ncalls
            kind = mix[(i // ncalls) % len(mix)]
            if kind != "transcript.partial":
                nonpartial += 1
            call = calls[c]
            first = call not in per_call
            per_call[call] = per_call.get(call, 0) + 1
            data = make_data(kind, i, sent_ns, self.texts)
            if first and self.metadata is not None:
                data["metadata"] = self.metadata
            event = {"call_id": call, "type": kind, "data": data}
            if self.ids:
                event["id"] = f"e{i}"
            groups[owner[c]].append(event)
        return groups, nonpartial

    def send_group(self, k: int, events: list[dict[str, Any]]) -> None:
        sock = self.sockets[k]
        t = sock.transport
        assert t is not None
        if self.dialect == "nchan":
            for ev in events:
                t.send(TEXT, orjson.dumps(ev))
            return
        limit = self.batch or len(events)
        for start in range(0, len(events), limit):
            chunk = events[start : start + limit]
            self.ref += 1
            ref = self.ref
            sock.pending[ref] = len(chunk)
            sock.inflight_frames += 1
            if self.dialect == "socketio":
                t.send(TEXT, b"42%d" % ref + orjson.dumps(["publish", chunk]))
                continue
            if self.ref_every:  # one ack per event: the storm needs every seq
                sock.pending[ref] = 1
                for ev in chunk[:-1]:
                    self.ref += 1
                    ev["ref"] = self.ref
                    sock.pending[self.ref] = 1
                    sock.inflight_frames += 1
            chunk[-1]["ref"] = ref
            t.send(TEXT, orjson.dumps(chunk))

    async def run_open_loop(self) -> None:
        last = time.monotonic()
        carry = 0.0
        while True:
            await asyncio.sleep(self.TICK)
            now = time.monotonic()
            carry += self.rate * min(now - last, 0.1)
            last = now
            n = int(carry)
            if n <= 0:
                continue
            carry -= n
            sent_ns = time_ns()
            groups, nonpartial = self.frames_for(n, sent_ns)
            for k, events in enumerate(groups):
                if events:
                    self.send_group(k, events)
            self.sent += n
            self.log.append((sent_ns, n, nonpartial))

    async def run_closed_loop(self, k: int) -> None:
        """Ingest: keep `window` frames of `batch` events in flight on socket k."""
        sock = self.sockets[k]
        mine = [c for c in range(len(self.calls)) if self.owner[c] == k]
        while True:
            while sock.inflight_frames >= self.window:
                sock.room.clear()
                await sock.room.wait()
            sent_ns = time_ns()
            events = []
            nonpartial = 0
            for _ in range(self.batch):
                i = self.i
                self.i += 1
                c = mine[i % len(mine)]
                kind = self.mix[(i // len(self.calls)) % len(self.mix)]
                nonpartial += kind != "transcript.partial"
                events.append({"call_id": self.calls[c], "type": kind, "data": make_data(kind, i, sent_ns, self.texts)})
            self.send_group(k, events)
            self.sent += self.batch
            self.log.append((sent_ns, self.batch, nonpartial))
            await asyncio.sleep(0)

    def start(self) -> None:
        if self.window:
            self.tasks = [asyncio.ensure_future(self.run_closed_loop(k)) for k in range(len(self.sockets))]
        else:
            self.tasks = [asyncio.ensure_future(self.run_open_loop())]

    def counts(self, t0: int, t1: int) -> dict[str, Any]:
        n = sum(e[1] for e in self.log if t0 <= e[0] < t1)
        nonpartial = sum(e[2] for e in self.log if t0 <= e[0] < t1)
        return {
            "sent": n,
            "sent_nonpartial": nonpartial,
            "sent_total": self.sent,
            "acked_total": sum(s.acked for s in self.sockets),
            "per_call": dict(self.per_call),
            "errors": sum(s.errors for s in self.sockets),
        }

    def stop(self) -> None:
        for task in self.tasks:  # cancelled one by one: a cancelled gather() logs "never retrieved"
            task.cancel()
        self.tasks = []


# ---- the worker process ---------------------------------------------------------------------------


class Worker:
    def __init__(self) -> None:
        self.subs: list[Subscriber] = []
        self.producer: Producer | None = None
        self.token = ""
        self.base = ""
        self.dialect = "callstream"

    async def open_subscribers(self, dialect: str, base: str, token: str, groups: list[list[str]],
                               concurrency: int = 200, track: bool = False, deflate: bool = False,
                               where: dict[str, Any] | None = None) -> dict[str, Any]:
        self.dialect, self.base, self.token = dialect, base, token
        cls = SUBSCRIBERS.get(dialect, Subscriber)
        sem = asyncio.Semaphore(concurrency)
        failed = 0
        started = time.monotonic()
        headers = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"} if deflate else None

        async def one(calls: list[str]) -> None:
            nonlocal failed
            async with sem:
                for attempt in range(3):
                    try:
                        if dialect == "sse":
                            self.subs.append(await open_stream(base, token, calls))  # type: ignore[arg-type]
                            return
                        _, sub = await ws_connect(lambda: cls(calls, track=track, inflate=deflate, where=where),
                                                  sub_url(dialect, base, token, calls), websocket_handshake_timeout=30,
                                                  max_frame_size=1 << 24, extra_headers=headers)
                        await asyncio.wait_for(sub.ready, 60)
                        self.subs.append(sub)
                        return
                    except Exception as exc:  # retried, then counted
                        if attempt == 2:
                            failed += 1
                            S.error(f"connect: {exc!r}")
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one(g) for g in groups))
        return {"connected": len(self.subs), "failed": failed, "elapsed": time.monotonic() - started}

    async def close_subscribers(self) -> dict[str, Any]:
        for sub in self.subs:
            if isinstance(sub, SseSubscriber):
                sub.aborted = True
                if sub.transport is not None:
                    sub.transport.abort()
            elif sub.transport is not None:
                sub.transport.disconnect(graceful=False)
        self.subs.clear()
        await asyncio.sleep(0.2)
        return {}

    async def storm(self, concurrency: int = 0) -> dict[str, Any]:
        """Drop every socket at once, then reconnect and resubscribe with `since` at once."""
        old = list(self.subs)
        for sub in old:
            if sub.transport is not None:
                sub.transport.disconnect(graceful=False)
        dropped_at = time_ns()
        self.subs = []
        sem = asyncio.Semaphore(concurrency or len(old) or 1)
        failed = 0
        cls = SUBSCRIBERS[self.dialect]

        async def again(prev: Subscriber) -> None:
            nonlocal failed
            since = {c: prev.last_seq.get(c, 0) for c in prev.calls}
            for attempt in range(20):
                try:
                    async with sem:
                        url = sub_url(self.dialect, self.base, self.token, prev.calls)
                        _, sub = await ws_connect(lambda: cls(prev.calls, since=since, track=True, prev=prev), url,
                                                  websocket_handshake_timeout=30, max_frame_size=1 << 24)
                    await asyncio.wait_for(sub.ready, 60)
                    self.subs.append(sub)
                    return
                except Exception as exc:
                    if attempt == 19:
                        failed += 1
                        S.error(f"reconnect: {exc!r}")
                    await asyncio.sleep(0.1 * (attempt + 1))

        await asyncio.gather(*(again(s) for s in old))
        done = [s.confirmed_at for s in self.subs]
        return {
            "dropped_at": dropped_at,
            "caught_up_ns": sorted(t - dropped_at for t in done),
            "failed": failed,
            "reconnected": len(self.subs),
        }

    def seq_report(self, expected: dict[str, int]) -> dict[str, Any]:
        missing = gaps = dups = 0
        for sub in self.subs:
            gaps += sub.gaps
            dups += sub.dups
            for call in sub.calls:
                missing += max(0, expected.get(call, 0) - sub.last_seq.get(call, 0))
        return {"gaps": gaps, "dups": dups, "missing_tail": missing, "subs": len(self.subs)}

    async def start_producer(self, dialect: str, base: str, token: str, calls: list[str], conns: int = 10,
                             mix: str = "call", batch: int = 0, window: int = 0, ref_every: bool = False,
                             rate: float = 0.0, texts: str = "plain",
                             metadata: dict[str, Any] | None = None, ids: bool = False) -> dict[str, Any]:
        self.producer = Producer(dialect, base, token, calls, conns, mix, batch, window, ref_every, texts, metadata,
                                 ids)
        await self.producer.connect()
        self.producer.rate = rate
        self.producer.start()
        return {"conns": len(self.producer.sockets)}

    def set_rate(self, rate: float) -> dict[str, Any]:
        assert self.producer is not None
        self.producer.rate = rate
        return {}

    def window(self, t0: int, t1: int) -> dict[str, Any]:
        S.t0, S.t1 = t0, t1
        S.reset()
        return {}

    async def stop_producer(self) -> dict[str, Any]:
        if self.producer is not None:
            self.producer.stop()
            for sock in self.producer.sockets:
                if sock.transport is not None:
                    sock.transport.disconnect()
        return {}

    def producer_counts(self, t0: int = 0, t1: int = 1 << 62) -> dict[str, Any]:
        assert self.producer is not None
        return self.producer.counts(t0, t1)

    async def control_probe(self, **kwargs: Any) -> dict[str, Any]:
        """The control round trip (bench/control_probe.py) from this load process."""
        from bench.control_probe import probe

        return await probe(**kwargs)

    def cpu(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu_s": ru.ru_utime + ru.ru_stime, "total": S.total}

    def stats(self) -> dict[str, Any]:
        out = S.snapshot()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = ru.ru_utime + ru.ru_stime
        out["subs"] = len(self.subs)
        return out


def worker_main(conn: Any, cpus: list[int] | None) -> None:
    """Entry point of a load process: pin, raise the descriptor limit, serve commands."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    import uvloop

    uvloop.run(_serve(conn))


async def _serve(conn: Any) -> None:
    """Commands arrive on a reader thread; replies leave through a thread too (the pipe blocks)."""
    import threading

    loop = asyncio.get_running_loop()
    worker = Worker()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    send_lock = threading.Lock()

    def read_forever() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("exit", {})
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "exit":
                return

    def send(message: Any) -> None:
        with send_lock:
            conn.send(message)

    threading.Thread(target=read_forever, daemon=True).start()

    async def handle(cmd: str, kwargs: dict[str, Any]) -> None:
        try:
            fn: Callable[..., Any] = getattr(worker, cmd)
            result = fn(**kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            reply = ("ok", result)
        except Exception:
            reply = ("error", traceback.format_exc())
        await loop.run_in_executor(None, send, reply)

    tasks: set[asyncio.Task[None]] = set()
    while True:
        cmd, kwargs = await inbox.get()
        if cmd == "exit":
            with contextlib.suppress(Exception):
                send(("ok", {}))
            return
        task = asyncio.ensure_future(handle(cmd, kwargs))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
