"""`GET /v1/events/stream`: the events as Server-Sent Events (docs/protocol.md, Server-Sent Events).

A stream is an events connection whose subscriptions come from its URL and whose frames are SSE
messages: `SseConnection` is an `EventsConnection` (the same subscribe, replay, parking, outbox,
slow-consumer policy, token expiry and revocation) with another writer. Fan-out appends an SSE
message to the same per-connection outbox the socket uses; the flush after the fan-out writes it
into the HTTP response at once while the response takes it without waiting, and a writer task
drains it at the client's pace otherwise. The message `id` is the stream's cursor
(`callstream.sse`).

A stream of one call, with nothing queued, takes a fan-out's events of its call as one HTTP chunk
built once for every such stream (`_alone_chunk`), written straight to the response's transport
(`chunked_body`) while uvicorn's own `send` would not wait: the socket's direct write, for SSE.

The endpoint is reached before the app's middleware, as the sockets are (`app.CallstreamApp`):
a stream lives for hours, and its writes should not pass through layers made for short requests.
It answers CORS itself (`Access-Control-Allow-Origin`) from the same allow-list.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any, cast

import orjson
from fastapi import Header, Query
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from callstream import metrics, sse
from callstream import protocol as p
from callstream.auth import Principal
from callstream.events import ENDED, MAX_INT64, Event
from callstream.server.chunked_body import ChunkedBody, chunk, chunked_body
from callstream.server.deps import runtime_of
from callstream.server.events_socket import EventsConnection
from callstream.server.runtime import Runtime
from callstream.server.socket_base import admit, denial, release_slot
from callstream.server.transport import ABORT_AFTER_CLOSE_S

PATH = "/v1/events/stream"
RECONNECT_MS = 1000  # the `retry:` a stream starts with: how soon EventSource comes back
_WRITE_BATCH_BYTES = 256 * 1024
_FINAL_WRITE_S = 2.0  # how long `terminate` waits for a stream's last words to go out


class SseConnection(EventsConnection):
    """An events connection written as an SSE response. It reads nothing from the client: its
    subscriptions are the URL's (`sse.StreamRequest`), set up once the writer runs."""

    kind = "sse"

    def __init__(self, request: Request, send: Send, runtime: Runtime, principal: Principal, stream: sse.StreamRequest) -> None:
        # EventsConnection reads only the scope of its socket (no frame writer here: fan-out then
        # always queues); every path that would use it as a socket is this class's own.
        super().__init__(cast(WebSocket, request), runtime, principal)
        self._request = request
        self._send = send
        self._stream = stream
        self._cursor = sse.StreamCursor(stream.since)
        self._alone = not stream.wildcard and len(stream.call_ids) == 1  # one call: shared messages
        self._wake = asyncio.Event()
        self._final = b""  # the last message, written after the outbox is dropped
        self._idle = False  # a keepalive is due: nothing was written for a whole tick
        self._wrote = False  # something was written since the last tick
        self._writer: asyncio.Task[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._sending = False  # the writer task is inside a send: nothing else may write
        self._held = b""  # messages taken from the outbox that a flush could not write
        self._held_count = 0
        # A one-call stream's direct write (once the `retry` field is out; None on servers
        # without one), and the last seq it sent of that call: its cursor, read when a message
        # other than an event needs it (`send`) rather than written out per event.
        self._direct: ChunkedBody | None = None
        self._sent_seq = 0

    # ---- the hub's side: never blocks ------------------------------------------------------

    def enqueue_event(self, event: Event) -> None:
        if self._alone:
            self.enqueue_block(b"", (event,))
            return
        cursor = self._cursor
        known = cursor.seq(event.call_id)
        if known is not None and event.seq <= known:
            return  # sent already (a `*` stream resumed a call it had named in its cursor)
        cursor.advance(event.call_id, event.seq)
        if event.type == ENDED and self._stream.wildcard:
            cursor.drop(event.call_id)
        frame = b"id: " + cursor.text().encode() + event.sse
        if self.outbox.push(frame, event.key, event.is_partial):
            self._queued()
        else:
            self._too_slow()

    def enqueue_block(self, block: bytes, events: Sequence[Event]) -> int:
        """One call's events of a fan-out. On a stream of that call alone each message is the same
        for every such stream (`sse.alone_message`, built once per event); the hub has already
        dropped what this stream sent (`Subscription.last_seq`). With nothing queued ahead and a
        response that takes them without waiting, they are written at once as one chunk (the
        same for every such stream); returns how many were written so."""
        if not self._alone:
            return super().enqueue_block(block, events)
        direct = self._direct
        if (
            direct is not None
            and not (self._sending or self._held or self.closed or self.outbox.queued_bytes)
            and direct.open
        ):
            try:
                direct.write(_alone_chunk(events))
            except RuntimeError:  # the transport is gone under us: its end is on its way
                self._direct = None
            else:
                self._sent_seq = events[-1].seq
                self._wrote = True
                return len(events)
        push = self.outbox.push
        for event in events:
            message = event.sse_alone or sse.alone_message(event)
            if not push(message, event.key, event.is_partial):
                self._too_slow()
                return 0
        self._sent_seq = events[-1].seq
        self._queued()
        return 0

    def send(self, message: bytes | str) -> None:
        """A server message that is not an event (`subscribed`, `error`), as the socket sends it."""
        payload = message if isinstance(message, bytes) else message.encode()
        body: dict[str, Any] = orjson.loads(payload)
        kind, call_id = str(body.get("type")), body.get("call_id")
        if self._alone and self._sent_seq:
            self._cursor.advance(self._stream.call_ids[0], self._sent_seq)
        if kind == "subscribed" and isinstance(call_id, str) and call_id != p.WILDCARD:
            self._cursor.advance(call_id, int(body["data"]["seq"]))
        if self.outbox.push(sse.message(kind, payload, self._cursor.text())):
            self._queued()
        else:
            self._too_slow()

    def flush_now(self) -> int:
        """After a fan-out touched this stream: write what is queued at once when the response
        takes it without waiting (no task switch: the socket's flush does the same), else wake the
        writer, which waits for the client. Returns the messages written here."""
        self._dirty = False
        if self._sending or self.closed or self._held:
            self._wake.set()
            return 0
        batch = self.outbox.pop_batch(_WRITE_BATCH_BYTES)
        chunk = b"".join(batch)
        if not chunk:
            return 0
        if not self._write_now(chunk):
            self._held, self._held_count = chunk, len(batch)  # the writer sends it first
            self._wake.set()
            return 0
        self._wrote = True
        self._made_room()
        return len(batch)

    def _write_now(self, chunk: bytes) -> bool:
        """Run the server's `send` of `chunk` to its end now, if it does not wait; False (nothing
        written) when it would wait for the client to read. uvicorn waits for room before it
        writes, so a send closed at its first wait has written nothing
        (tests/test_transport_contract.py checks that on the installed uvicorn)."""
        step = self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not isinstance(step, Coroutine):
            return False
        try:
            step.send(None)
        except StopIteration:
            return True
        step.close()
        return False

    # ---- life cycle ----------------------------------------------------------------------

    async def run(self) -> None:
        self.runtime.connections.add(self)
        metrics.CONNECTIONS.labels(self.kind).inc()
        self._started()
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect())
        self._arm_keepalive()
        try:
            for subscribe in self._stream.subscriptions():
                if self.closed:
                    break
                await self._subscribe(subscribe)
            await asyncio.wait({self._writer})
        finally:
            self.closed = True
            self._wake.set()
            self._ended()
            self._cancel(watcher, self._writer, self._keepalive)
            self.runtime.connections.discard(self)
            metrics.CONNECTIONS.labels(self.kind).dec()

    async def terminate(self, code: int, error_code: str | None, message: str) -> None:
        """End the stream: what is queued is dropped, the `error` (if any) is its last message.

        That message has no `id`, so EventSource resumes from the last event it received."""
        if self.closed:
            return
        self.closed = True
        await self._closing(code)
        if error_code is not None:
            self._final = sse.message("error", p.error_message(error_code, message), None)
        self._wake.set()
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            # A client that reads nothing gets its last words once it reads again, or has its
            # response cut short (and its connection closed) after a grace period.
            _, pending = await asyncio.wait({writer}, timeout=_FINAL_WRITE_S)
            if pending:
                asyncio.get_running_loop().call_later(ABORT_AFTER_CLOSE_S, writer.cancel)

    async def _write_forever(self) -> None:
        """Drain the outbox into the response, a batch per write, at the client's pace."""
        send, outbox = self._send, self.outbox
        with contextlib.suppress(OSError):
            await self._body(sse.retry_field(RECONNECT_MS))
            if self._alone:
                self._direct = chunked_body(send)
            while not self.closed:
                if self._held:
                    chunk, count, self._held, self._held_count = self._held, self._held_count, b"", 0
                    await self._body(chunk)
                    metrics.EVENTS_DELIVERED.inc(count)
                    self._made_room()  # a replay may be waiting for this write
                    continue
                if not outbox.queued_bytes:
                    if self._idle:
                        self._idle = False
                        await self._body(sse.KEEPALIVE)
                        continue
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = outbox.pop_batch(_WRITE_BATCH_BYTES)
                await self._body(b"".join(batch))
                self._wrote = True
                metrics.EVENTS_DELIVERED.inc(len(batch))
                self._made_room()
            await send({"type": "http.response.body", "body": self._final, "more_body": False})

    async def _body(self, chunk: bytes) -> None:
        self._sending = True
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self._sending = False

    async def _watch_disconnect(self) -> None:
        """The client went away: end the stream (nothing else is ever read from it)."""
        while (await self._request.receive())["type"] != "http.disconnect":
            pass
        self.closed = True
        self._wake.set()

    def _arm_keepalive(self) -> None:
        """Every `sse_keepalive_s`: a comment, unless something was written meanwhile."""
        delay = self.runtime.settings.sse_keepalive_s
        self._keepalive = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        if not self._wrote:
            self._idle = True
            self._wake.set()
        self._wrote = False
        self._arm_keepalive()

    async def _not_text(self) -> None:  # nothing is read from a stream
        return None

    async def _too_large(self, limit: int) -> bool:
        return False


def _alone_chunk(events: Sequence[Event]) -> bytes:
    """One call's events of a fan-out as the chunk every stream of that call alone writes: built
    once, kept on the first event with the group's size and last seq (the hub hands every
    subscriber of the call the same group)."""
    first, last_seq = events[0], events[-1].seq
    kept = first.sse_block
    if kept is not None and kept[0] == len(events) and kept[1] == last_seq:
        return kept[2]
    if len(events) == 1:
        body = first.sse_alone or sse.alone_message(first)
    else:
        body = b"".join([e.sse_alone or sse.alone_message(e) for e in events])
    data = chunk(body)
    first.sse_block = (len(events), last_seq, data)
    return data


async def stream_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI endpoint: admit (as a socket's handshake), check the query, then stream."""
    request = Request(scope, receive)
    runtime = runtime_of(request)
    cors = _cors_headers(request, runtime.settings.allowed_origins)
    if request.method != "GET":
        await _answer(denial(405, "method_not_allowed", "GET only"), cors, scope, receive, send, {"Allow": "GET"})
        return
    if not _accepts_event_stream(request.headers.get("accept")):
        await _answer(denial(406, "not_acceptable", "this endpoint answers text/event-stream"), cors, scope, receive, send)
        return
    admitted = await admit(request, "subscribe")
    if isinstance(admitted, JSONResponse):
        await _answer(admitted, cors, scope, receive, send)
        return
    principal, _ = admitted
    try:
        refusal, stream = _stream_of(request, principal, runtime.settings.max_subscriptions)
        if refusal is not None:
            await _answer(refusal, cors, scope, receive, send)
            return
        assert stream is not None
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache, no-store"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each message on at once
            *((k.lower().encode(), v.encode()) for k, v in cors.items()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await SseConnection(request, send, runtime, principal, stream).run()
    finally:
        await release_slot(request, principal)


def _stream_of(
    request: Request, principal: Principal, max_calls: int
) -> tuple[JSONResponse | None, sse.StreamRequest | None]:
    query = request.query_params
    cursor = request.headers.get("last-event-id", query.get("last_event_id"))
    try:
        stream = sse.parse_stream_request(
            query.getlist("call_id"), query.getlist("types"), query.getlist("since"), cursor, max_calls
        )
    except sse.CursorError as exc:
        return denial(400, "invalid_cursor", f"Last-Event-ID: {exc}"), None
    except p.ProtocolError as exc:
        return denial(422, exc.code, exc.message), None
    if stream.wildcard and principal.calls is not None:
        return denial(403, p.ErrorCode.FORBIDDEN, "this token is limited to named calls; '*' is not allowed"), None
    if hidden := [c for c in (*stream.call_ids, *stream.since) if c != p.WILDCARD and not principal.may_see(c)]:
        return denial(403, p.ErrorCode.FORBIDDEN, f"this token may not see call {hidden[0]}"), None
    return None, stream


def _accepts_event_stream(accept: str | None) -> bool:
    if not accept:
        return True
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & {"text/event-stream", "text/*", "*/*"})


def _cors_headers(request: Request, allowed: list[str]) -> dict[str, str]:
    origin = request.headers.get("origin")
    if not allowed or origin is None or not (origin.rstrip("/") in allowed or "*" in allowed):
        return {}
    return {"Access-Control-Allow-Origin": "*" if "*" in allowed else origin, "Vary": "Origin"}


async def _answer(
    response: JSONResponse, cors: dict[str, str], scope: Scope, receive: Receive, send: Send, extra: dict[str, str] | None = None
) -> None:
    response.headers.update({**cors, **(extra or {})})
    await response(scope, receive, send)


_EXAMPLE = (
    "retry: 1000\n\n"
    'id: call_42=3\nevent: subscribed\ndata: {"type":"subscribed","call_id":"call_42","data":{"call_id":"call_42",'
    '"status":"live","seq":3,"replayed":0}}\n\n'
    'id: call_42=4\nevent: transcript.final\ndata: {"type":"transcript.final","call_id":"call_42","seq":4,'
    '"ts":1765000000000,"data":{"speaker":"user","text":"Hi","is_final":true}}\n\n'
    ": keepalive\n\n"
)

OPENAPI: dict[str, Any] = {
    "tags": ["events"],
    "summary": "Live events as Server-Sent Events",
    "response_class": JSONResponse,
    "responses": {
        200: {"description": "an endless `text/event-stream`", "content": {"text/event-stream": {"example": _EXAMPLE}}},
        400: {"description": "`invalid_cursor`: the Last-Event-ID is not a cursor of this stream"},
        401: {"description": "missing, invalid or expired credential"},
        403: {"description": "Origin not allowed, scope missing, or a call the token may not see"},
        406: {"description": "the Accept header excludes text/event-stream"},
        422: {"description": "invalid query (call_id, types, since)"},
        429: {"description": "too many connections of the key or the account"},
    },
}


async def described(
    call_id: list[str] = Query(..., description="a call id (repeatable), or `*` for every call of the account"),  # noqa: B008
    types: list[str] | None = Query(None, description="only these event types (repeatable or comma-separated)"),  # noqa: B008
    since: int | None = Query(None, ge=0, le=MAX_INT64, description="one call only: replay what follows this seq, then go live"),
    token: str | None = Query(None, description="the credential, for EventSource (else `Authorization: Bearer`)"),
    last_event_id: str | None = Query(
        None, description="a cursor (the `id` of the last message) when the `Last-Event-ID` header cannot be set"
    ),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID", description="resume from this cursor"),
) -> None:
    """Subscribe with `GET` and read events as they happen (`curl -N`, `EventSource`).

    Each message is `id:` (the resume cursor: every call with the last seq sent), `event:` (the
    type) and `data:` (the same JSON as on the events socket). A `: keepalive` comment comes every
    15 s. Reconnect with `Last-Event-ID` to resume with no gap and no duplicate. The stream ends
    with an `error` message on revocation, token expiry or a slow consumer (then resume).
    """
    raise NotImplementedError  # the app serves this path before its router (stream_endpoint)
