"""`GET /v1/ingest`: the producer socket, with cumulative acks (PROTOCOL.md §4).

Frames are sequenced in the order they arrive; acks are sent in that same order, each only once
the store has committed its event (and so every event before it). A bad event gets an `error`
with its `ref` and is skipped; the others of the frame still go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from callstream import metrics
from callstream import protocol as p
from callstream.broker import BrokerUnavailableError, CallEndedError
from callstream.events import NewEvent, text_frame
from callstream.limits import IngestLimiter
from callstream.server.deps import limits_of, runtime_of
from callstream.server.events_socket import close_urgently, handshake, rate_limited_message, release_slot
from callstream.server.runtime import Runtime
from callstream.server.transport import FRAME_WRITER, FrameWriter

log = logging.getLogger("callstream.ingest")

_AckItem = tuple[Any, int, "asyncio.Future[None]"]
_ACK_BATCH = 256  # acks per socket write at most


async def ingest_endpoint(ws: WebSocket) -> None:
    admitted = await handshake(ws, "publish")
    if admitted is None:
        return
    principal, via_subprotocol = admitted
    try:
        await ws.accept(subprotocol="bearer" if via_subprotocol else None)
        connection = IngestConnection(ws, runtime_of(ws), principal.account, principal.key_id)
        connection.limiter = limits_of(ws).ingest
        await connection.run()
    finally:
        release_slot(ws, principal)


class IngestConnection:
    def __init__(self, ws: WebSocket, runtime: Runtime, account: str, key_id: str) -> None:
        self.ws = ws
        self.runtime = runtime
        self.account = account
        self.key_id = key_id
        self._acks: asyncio.Queue[_AckItem | None] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self.closed = False
        self.limiter: IngestLimiter | None = None
        self._store_timeout_s = runtime.settings.store_timeout_s
        self._frame_writer: FrameWriter | None = ws.scope.get(FRAME_WRITER)  # set by the accept

    async def run(self) -> None:
        self.runtime.connections.add(self)
        metrics.CONNECTIONS.labels("ingest").inc()
        acker = asyncio.create_task(self._ack_forever())
        try:
            await self._read_forever()
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            acker.cancel()
            self.runtime.connections.discard(self)
            metrics.CONNECTIONS.labels("ingest").dec()

    async def terminate(self, code: int, error_code: str | None, message: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if code == p.CLOSE_GOING_AWAY:  # send the acks we owe before going away
                await asyncio.wait_for(self._acks.join(), 5.0)
        await close_urgently(self.ws, code, error_code, message)

    async def _send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_text(frame.decode())

    async def _read_forever(self) -> None:
        limit = self.runtime.settings.max_ingest_message_bytes
        while not self.closed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self._send(p.error_message(p.INVALID_MESSAGE, "send events as JSON text frames"))
                continue
            if len(text) > limit and len(text.encode()) > limit:
                await self._send(p.error_message(p.MESSAGE_TOO_LARGE, f"frames are limited to {limit} bytes"))
                continue
            await self._handle(text)

    async def _handle(self, text: str) -> None:
        try:
            obj = p.decode_json(text)
        except p.ProtocolError as exc:
            await self._send(p.error_from(exc))
            return
        items = obj if isinstance(obj, list) else [obj]
        valid: list[NewEvent] = []
        for item in items:
            try:
                valid.append(p.parse_event(item))
            except p.ProtocolError as exc:
                await self._send(p.error_from(exc))
        if valid and await self._admitted(valid):
            await self._publish(valid)

    async def _admitted(self, events: list[NewEvent]) -> bool:
        """The key's events/s budget (shared with REST and its other sockets); refused: not applied."""
        refusal = None if self.limiter is None else self.limiter.take(self.key_id, len(events))
        if refusal is None:
            return True
        metrics.CLIENT_ERRORS.labels(p.RATE_LIMITED).inc()
        message = f"not applied: {refusal.message}"
        unreferenced = [e for e in events if e.ref is None]
        for event in events:
            if event.ref is not None:
                await self._send(rate_limited_message(message, refusal.retry_after_s, event.ref, event.call_id))
        if unreferenced:
            note = f"{len(unreferenced)} event(s) without ref {message}"
            await self._send(rate_limited_message(note, refusal.retry_after_s))
        return False

    async def _publish(self, events: list[NewEvent]) -> None:
        try:
            sequenced, durable = await self.runtime.publish(self.account, events)
        except CallEndedError:
            if len(events) > 1:  # apply the others one by one; only the late ones are refused
                for event in events:
                    await self._publish([event])
                return
            event = events[0]
            message = f"call {event.call_id} has ended; no events are accepted after call.ended"
            await self._send(p.error_message(p.INVALID_MESSAGE, message, event.call_id, event.ref))
            return
        except BrokerUnavailableError as exc:
            for event in events:
                await self._send(p.error_message(p.INTERNAL, str(exc), event.call_id, event.ref))
            return
        except Exception as exc:  # e.g. the store is unreachable while loading a call: say so, stay open
            log.warning("publish failed: %s", exc.__class__.__name__, exc_info=True)
            message = f"not applied: the node cannot reach its store ({exc.__class__.__name__}); retry"
            for event in events:
                await self._send(p.error_message(p.INTERNAL, message, event.call_id, event.ref))
            return
        for new, accepted in zip(events, sequenced, strict=True):
            if new.ref is not None:
                self._acks.put_nowait((new.ref, accepted.seq, durable))

    async def _ack_forever(self) -> None:
        """Send each ack once its event is durable, in order; acks already due go out together.

        One commit makes a run of acks due at once: they leave as pre-encoded frames in one
        socket write (one `send` each, with its wait for the store, cost more than the publish).
        """
        queue = self._acks
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < _ACK_BATCH:
                batch.append(queue.get_nowait())
            try:
                frames: list[bytes] = []
                for item in batch:
                    if item is None:
                        return
                    ref, seq, durable = item
                    if not durable.done():
                        await self._send_frames(frames)
                        frames = []
                    frames.append(await self._ack_for(ref, seq, durable))
                await self._send_frames(frames)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _ack_for(self, ref: Any, seq: int, durable: asyncio.Future[None]) -> bytes:
        """The ack, or the error that says why there is none, once the store has answered."""
        try:
            if not durable.done():
                await asyncio.wait_for(asyncio.shield(durable), self._store_timeout_s)
            durable.result()
        except TimeoutError:  # a hung database must not hang the producer: say so
            message = f"not confirmed: the store did not commit within {self._store_timeout_s:g} s"
            return p.error_message(p.INTERNAL, message, None, ref)
        except Exception as exc:  # not stored: the producer must know, and may retry
            return p.error_message(p.INTERNAL, f"not stored: {exc}", None, ref)
        return p.ack_message(ref, seq)

    async def _send_frames(self, messages: list[bytes]) -> None:
        if not messages:
            return
        writer = self._frame_writer
        if writer is None:  # another ASGI server: one message at a time
            for message in messages:
                await self._send(message)
            return
        async with self._send_lock:
            if not writer.writable.is_set():
                await writer.writable.wait()  # the socket's own backpressure
            writer.write_frames(b"".join(map(text_frame, messages)))
