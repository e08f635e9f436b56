"""`GET /v1/ingest`: the producer socket, with cumulative acks (PROTOCOL.md §4).

Frames are sequenced in the order they arrive; acks are sent in that same order, each only once
the store has committed its event (and so every event before it). A bad event gets an `error`
with its `ref` and is skipped; the others of the frame still go through.

Acks leave from the commit itself: each frame's refs wait in arrival order on the store's
future for that frame (`callstream.acks.AckLine`), and when a commit settles, every ack it made
due is written at once, in order, as pre-encoded frames in one socket write. A producer that
sends one small frame per tick makes thousands of frames a second; a task per socket that woke
for each of them and waited on each one's future (a `wait_for`, a `shield`, a timer) cost more
than the publish. When the socket cannot take frames straight away (its buffer is over the
mark, another send is under way, or the server is not uvicorn with callstream's transport) the
acks queue up behind whatever is being sent, and a task sends them in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from callstream import metrics
from callstream import protocol as p
from callstream.acks import AckLine
from callstream.broker import BrokerUnavailableError, CallEndedError
from callstream.events import NewEvent, text_frame
from callstream.limits import IngestLimiter
from callstream.server.deps import limits_of, runtime_of
from callstream.server.events_socket import close_urgently, handshake, rate_limited_message, release_slot
from callstream.server.runtime import Runtime
from callstream.server.transport import FRAME_WRITER, FrameWriter
from callstream.store import CallFailedError

log = logging.getLogger("callstream.ingest")

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
        self._acks = AckLine(runtime.settings.store_timeout_s, asyncio.get_running_loop().time)
        self._unsent: list[bytes] = []  # acks due that wait for the socket (`_send_unsent`)
        self._unsent_sender: asyncio.Task[None] | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._send_lock = asyncio.Lock()
        self.closed = False  # no more frames are read (the socket may still send what it owes)
        self._ended = False  # the socket is gone: nothing more can be sent
        self.limiter: IngestLimiter | None = None
        self._frame_writer: FrameWriter | None = ws.scope.get(FRAME_WRITER)  # set by the accept

    async def run(self) -> None:
        self.runtime.connections.add(self)
        metrics.CONNECTIONS.labels("ingest").inc()
        try:
            await self._read_forever()
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = self._ended = True
            if self._ack_timer is not None:
                self._ack_timer.cancel()
            if self._unsent_sender is not None:
                self._unsent_sender.cancel()
            self.runtime.connections.discard(self)
            metrics.CONNECTIONS.labels("ingest").dec()

    async def terminate(self, code: int, error_code: str | None, message: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if code == p.CLOSE_GOING_AWAY:  # send the acks we owe before going away
                await asyncio.wait_for(self._acks_sent(), 5.0)
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
            # A character is at most 4 bytes: only a frame past a quarter of the limit is measured.
            if len(text) > limit // 4 and len(text.encode()) > limit:
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
        if len(items) > p.MAX_FRAME_EVENTS:  # one answer, not one error per item, each a send
            message = f"a frame carries at most {p.MAX_FRAME_EVENTS} events, not {len(items)}; none applied"
            await self._send(p.error_message(p.INVALID_MESSAGE, message))
            return
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
        except CallFailedError as exc:
            if len(events) > 1:  # the other calls' events go on
                for event in events:
                    await self._publish([event])
                return
            await self._send(p.error_message(p.INTERNAL, str(exc), events[0].call_id, events[0].ref))
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
        pairs = zip(events, sequenced, strict=True)
        refs = [(new.ref, accepted.seq) for new, accepted in pairs if new.ref is not None]
        if refs:
            self._acks.add(refs, durable)
            durable.add_done_callback(self._on_durable)
            if self._ack_timer is None:
                self._arm_ack_timer()

    # ---- acks --------------------------------------------------------------------------------

    def _on_durable(self, _: asyncio.Future[None]) -> None:
        self._emit_due_acks()

    def _emit_due_acks(self) -> None:
        if self._ended:
            return
        messages = self._acks.due()
        if not messages:
            return
        writer = self._frame_writer
        if (
            writer is not None
            and not self._unsent
            and not self._send_lock.locked()
            and writer.writable.is_set()
            and writer.write_frames(b"".join(map(text_frame, messages)))
        ):
            return
        self._unsent.extend(messages)
        if self._unsent_sender is None or self._unsent_sender.done():
            self._unsent_sender = asyncio.get_running_loop().create_task(self._send_unsent())

    async def _send_unsent(self) -> None:
        """Acks that could not go straight out, in order, once the socket takes them."""
        while self._unsent:
            messages, self._unsent = self._unsent, []
            await self._send_frames(messages)

    def _arm_ack_timer(self) -> None:
        """Wake when the oldest frame waiting for its commit times out (none armed: none waits)."""
        deadline = self._acks.next_deadline()
        if deadline is None or self._ended:
            self._ack_timer = None
            return
        self._ack_timer = asyncio.get_running_loop().call_at(deadline, self._on_ack_timer)

    def _on_ack_timer(self) -> None:
        self._emit_due_acks()
        self._arm_ack_timer()

    async def _acks_sent(self) -> None:
        """Until every ack owed is out (or timed out): polled, as it runs once, when draining."""
        sender = self._unsent_sender
        while len(self._acks) or self._unsent or (sender is not None and not sender.done()):
            await asyncio.sleep(0.01)
            sender = self._unsent_sender

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
