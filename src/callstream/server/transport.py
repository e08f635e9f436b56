"""uvicorn's sans-I/O WebSocket protocol, with six additions for a fan-out server.

1. Urgent frames skip the write wait. uvicorn makes every `send` wait while the socket's write
   buffer is over its high-water mark, which is right for data and wrong for the last words to a
   slow consumer: the `slow_consumer` error and the 4008 close would wait forever behind the very
   backlog they are about. An urgent frame is appended to the transport buffer at once (one small
   frame; the client reads it after the backlog, in order), and a peer that never drains is
   aborted after a grace period instead of holding the connection open.

2. A lighter receive queue. uvicorn gives every socket an `asyncio.Queue` for what it reads: three
   deques, about 2 KiB a socket, most of it idle. `_ReceiveQueue` does the same for the one
   consumer there is (the app's `receive`) on a list and one future.

3. Pre-encoded frames. A server's frames are unmasked, so the bytes of one event's frame are the
   same for every subscriber (compression is off: `ws_per_message_deflate=False`). After the
   handshake the protocol puts itself in the ASGI scope under `FRAME_WRITER`; the events socket
   then writes a batch of frames with one `transport.write`, instead of one ASGI message, one
   encode and one write per frame per subscriber. This is websockets' `broadcast()` idea behind
   the same ASGI app; without this transport (tests, other servers) the socket falls back to
   plain ASGI sends.

4. Word of every change that decides whether frames may go straight to the socket (written out:
   `frames_open`): the write buffer passed its high-water mark or drained, a close was sent or
   received, the connection ended. The events socket keeps the socket's `transport.write` at
   hand for the hub while that holds (`EventsConnection.direct_write`) and drops it at once when
   it stops holding, so fan-out writes a live single-call subscriber with no Python call between.

5. A refused handshake is one INFO line. The app refuses a handshake with an HTTP answer (401,
   403, 429, 503: socket_base.denial). uvicorn logs that status without its reason, then, once
   the app returns, an ERROR ("returned without completing handshake") that an operator reads as
   a fault. Here the refusal is logged once, at INFO, with the answer's error code and message,
   and the handshake counts as complete once the answer is written, as for an accepted socket.

6. Binary frames straight to the app. uvicorn hands every message to the app through its receive
   queue: a dict, a wake-up of the app's task, Starlette's checks, one loop iteration each. A
   producer's live audio is a binary frame every 20 ms a track, each handled without waiting,
   so the ingest socket offers a `binary_sink`, and the protocol calls it with each
   whole binary message it reads while the app waits for one with nothing queued: the frame is
   handled in the read callback, in order, since nothing came before it that the app has not
   handled. Otherwise (a message queued or being handled) it queues as before
   (bench/README.md, audio-sink).

None of uvicorn's protocol state is its public API: tests/test_transport_contract.py checks every
part of it used here, on the installed uvicorn, websockets and uvloop, and names what changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import orjson
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import State

URGENT = "callstream.urgent"
_SILENT = logging.Logger("callstream.silent")
_SILENT.disabled = True
FRAME_WRITER = "callstream.frame_writer"
ABORT_AFTER_CLOSE_S = 30.0


class FrameWriter(Protocol):
    """What the events socket needs to write pre-encoded frames."""

    writable: asyncio.Event
    transport: asyncio.Transport
    on_change: Callable[[], None] | None
    binary_sink: Callable[[bytes], bool] | None

    def write_frames(self, data: bytes) -> bool: ...

    @property
    def frames_open(self) -> bool: ...


def frame_payload(frame: bytes) -> str:
    """The text inside a frame built by `events.text_frame` (for the plain-ASGI fallback)."""
    marker = frame[1]
    offset = 2 if marker < 126 else 4 if marker == 126 else 10
    return frame[offset:].decode()


def refusal_reason(body: bytes) -> str:
    """`code: message` of a refused handshake's error body (socket_base.denial), else its text."""
    try:
        error = orjson.loads(body)["error"]
        return f"{error['code']}: {error['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace") or "(no reason given)"


T = TypeVar("T")


class _ReceiveQueue(Generic[T]):
    """What uvicorn uses of `asyncio.Queue` (put_nowait, get, empty), for a single consumer."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    @property
    def waiting(self) -> bool:
        """The consumer waits in `get` and nothing is queued: it has handled every message."""
        return self._waiter is not None and not self._items

    async def get(self) -> T:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


def _then(method: Callable[..., None], after: Callable[[Any], None]) -> Callable[..., None]:
    """uvicorn's `method`, then `after`: how the protocol hears of what uvicorn does itself."""

    @functools.wraps(method)
    def hook(self: Any, *args: Any) -> None:
        method(self, *args)
        after(self)

    return hook


class CallstreamWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.on_change: Callable[[], None] | None = None
        # The app's handler of a whole binary message (6.): True when it took it, False to have
        # it queued for the app's receive instead.
        self.binary_sink: Callable[[bytes], bool] | None = None
        self._close_sent = False
        super().__init__(*args, **kwargs)
        self._received: _ReceiveQueue[Any] = _ReceiveQueue()
        self.queue = self._received  # type: ignore[assignment]

    # ---- word of changes to `frames_open` (4.) ---------------------------------------------------

    @property
    def close_sent(self) -> bool:
        return self._close_sent

    @close_sent.setter
    def close_sent(self, value: bool) -> None:  # uvicorn sets it wherever it sends a close
        self._close_sent = value
        self._changed()

    @property
    def frames_open(self) -> bool:
        """Frames may be written now: open, no close either way, the write buffer below its mark."""
        return (
            not self._close_sent
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
            and self.writable.is_set()
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    pause_writing = _then(WebSocketsSansIOProtocol.pause_writing, _changed)
    resume_writing = _then(WebSocketsSansIOProtocol.resume_writing, _changed)
    handle_close = _then(WebSocketsSansIOProtocol.handle_close, _changed)
    shutdown = _then(WebSocketsSansIOProtocol.shutdown, _changed)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._changed()

    # ---- frames ------------------------------------------------------------------------------

    def handle_bytes(self, event: Frame) -> None:
        sink = self.binary_sink
        if sink is not None and event.fin and not self._close_sent and self._received.waiting and sink(bytes(event.data)):
            return
        super().handle_bytes(event)

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "websocket.http.response.start" and self._refusing():
            self._hold_refusal(message)
            return
        if kind == "websocket.http.response.body" and not self.handshake_complete:
            await self._send_refusal(message)
            return
        if not message.get(URGENT) or self.writable.is_set():
            await super().send(message)
        else:
            self.writable.set()
            try:
                await super().send(message)
            finally:
                self.writable.clear()
        if kind == "websocket.accept" and self.handshake_complete:
            self.scope[FRAME_WRITER] = self  # type: ignore[literal-required]
        elif message.get(URGENT) and kind == "websocket.close":
            self.loop.call_later(ABORT_AFTER_CLOSE_S, self._abort_if_open)

    # ---- refused handshakes (5.) ---------------------------------------------------------------

    def _refusing(self) -> bool:
        """No handshake answer has started yet: an HTTP answer now is a refusal."""
        return not self.handshake_complete and self.initial_response is None

    def _hold_refusal(self, message: Any) -> None:
        """What uvicorn does with a refusal's status line, without its log line (`_log_refusal`
        writes one with the reason once the body is known)."""
        status = int(message["status"])
        if not 100 <= status < 600:
            raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in message.get("headers", [])]
        self.initial_response = (status, headers, b"")

    async def _send_refusal(self, message: Any) -> None:
        """uvicorn writes the refusal (websockets' own "connection rejected" line silenced), then
        `_log_refusal` logs it once the whole body is out."""
        logger, self.conn.logger = self.conn.logger, _SILENT
        try:
            await super().send(message)
        finally:
            self.conn.logger = logger
        if self.close_sent:
            self._log_refusal()

    def _log_refusal(self) -> None:
        """One INFO line for the refusal just written, with its reason; the handshake is over."""
        self.handshake_complete = True  # answered: uvicorn must not log it as never completed
        assert self.initial_response is not None
        status, _, body = self.initial_response
        self.logger.info(
            '%s - "WebSocket %s" %d refused: %s',
            get_client_addr(self.scope),
            get_path_with_query_string(self.scope),
            status,
            refusal_reason(body),
        )

    def write_frames(self, data: bytes) -> bool:
        """Append complete frames to the socket; False once the connection is closing."""
        if self._close_sent or self.conn.state is not State.OPEN or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def _abort_if_open(self) -> None:
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.transport.abort()
            self._changed()
