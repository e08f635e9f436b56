"""`GET /v1/ingest`: the producer socket, with cumulative acks (docs/protocol.md, Producing).

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

Live audio comes on the same socket: `audio.format` (text) declares a call's format on this
socket, and binary frames (`callstream.audio`) follow. A frame is checked and handed to
`Runtime.audio_frame` with no await and nothing stored: it takes no event's budget (frames have
their own per-key rate, `CALLSTREAM_AUDIO_RATE`) and delays no event. A frame read while the
read loop waits for a message is handled in the protocol's read callback (`binary_sink`, see
server/transport.py), without a trip through the receive queue; one read behind other messages
waits its turn in the read loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from starlette.websockets import WebSocket

from callstream import metrics
from callstream import protocol as p
from callstream.acks import AckLine
from callstream.audio import AudioFormat, check_payload, parse_format, parse_frame
from callstream.auth import Principal
from callstream.broker import (
    BrokerUnavailableError,
    CallEndedError,
    ControlResultError,
    MetadataRefusedError,
    QuotaExceededError,
)
from callstream.control import parse_actions
from callstream.events import ENDED, EventInvalidError, NewEvent, text_frame
from callstream.limits import IngestLimiter
from callstream.server.deps import limits_of
from callstream.server.runtime import Runtime
from callstream.server.socket_base import SOCKET_GONE, SocketConnection, rate_limited_message, socket_endpoint
from callstream.server.transport import FRAME_WRITER, FrameWriter
from callstream.store import CallFailedError, StoreUnavailableError

log = logging.getLogger("callstream.ingest")

MAX_AUDIO_CALLS: Final = 10_000  # calls one socket has an audio format for at once
_AUDIO_REFUSAL_EVERY_S: Final = 1.0  # at most one rate_limited error a second for refused frames


class IngestConnection(SocketConnection):
    kind = "ingest"

    def __init__(self, ws: WebSocket, runtime: Runtime, principal: Principal) -> None:
        super().__init__(ws, runtime, principal, runtime.settings.max_ingest_message_bytes)
        self.account = principal.account
        self._acks = AckLine(runtime.settings.store_timeout_s, asyncio.get_running_loop().time)
        self._unsent: list[bytes] = []  # acks due that wait for the socket (`_send_unsent`)
        self._unsent_sender: asyncio.Task[None] | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._send_lock = asyncio.Lock()
        self._gone = False  # the socket is gone: nothing more can be sent
        self._sink_failure: Exception | None = None  # what `_audio_now` hit: the read loop raises it (1011)
        self.limiter: IngestLimiter = limits_of(ws).ingest
        self._audio_limiter: IngestLimiter = limits_of(ws).audio
        self._formats: dict[str, AudioFormat] = {}  # live audio: each call's format on this socket
        self._audio_refused_at = 0.0
        self._frame_writer: FrameWriter | None = ws.scope.get(FRAME_WRITER)  # set by the accept
        if self._frame_writer is not None:
            self._frame_writer.binary_sink = self._audio_now
        # Live control: what this producer declared it can do, and the calls it holds (those it
        # published an event of, until their end); `hello` may declare only before any event.
        self._conn_id = runtime.control.register(self)
        self._first_seen = False
        self._bad_controls: str | None = None
        try:
            actions = parse_actions(ws.query_params.get("controls", ""))
        except EventInvalidError as exc:
            actions, self._bad_controls = frozenset(), f"?controls: {exc}; this socket declares none"
        self._holder = runtime.control.holder(self._conn_id, actions)
        self._held: set[str] = set()

    def _started(self) -> None:
        if self._bad_controls is not None:
            error = p.error_message(p.ErrorCode.INVALID_MESSAGE, self._bad_controls)
            self.runtime.tasks.start(self._send_quietly(error))

    def _ended(self) -> None:
        self._gone = True
        if self._frame_writer is not None:
            self._frame_writer.binary_sink = None
        self._cancel(self._ack_timer, self._unsent_sender)
        held, self._held = self._held, set()
        self.runtime.tasks.start(self.runtime.control.producer_gone(self._conn_id, self.account, held, self._holder))

    def send_control(self, frame: bytes) -> None:
        """A control request for a call this socket holds (relayed from any node): written at
        once, in the callback that received it, when the socket takes it; else it queues with
        the acks that wait for the socket."""
        if not self._gone:
            self._write_or_queue([frame])

    async def _send_quietly(self, frame: bytes) -> None:
        if not self._gone:
            with contextlib.suppress(*SOCKET_GONE):
                await self._send(frame)

    async def _closing(self, code: int) -> None:
        """Closed (the socket may still send what it owes): going away, the acks owed go first."""
        if code == p.CloseCode.GOING_AWAY:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks_sent(), 5.0)

    async def _send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_text(frame.decode())

    async def _not_text(self) -> None:
        await self._send(p.error_message(p.ErrorCode.INVALID_MESSAGE, "send events as JSON text frames"))

    async def _too_large(self, limit: int) -> bool:
        await self._send(p.error_message(p.ErrorCode.MESSAGE_TOO_LARGE, f"frames are limited to {limit} bytes"))
        return True

    async def _handle(self, text: str) -> None:
        try:
            obj = p.decode_json(text)
        except p.ProtocolError as exc:
            await self._send(p.error_from(exc))
            return
        first, self._first_seen = not self._first_seen, True
        if isinstance(obj, dict) and obj.get("type") == "hello":
            await self._hello(obj, first)
            return
        if isinstance(obj, dict) and obj.get("type") == "audio.format":
            await self._audio_format(obj)
            return
        try:
            items = p.batch_items(obj)  # past the cap: one answer, not one error per item
        except p.ProtocolError as exc:
            await self._send(p.error_from(exc))
            return
        valid: list[NewEvent] = []
        for item in items:
            try:
                valid.append(p.parse_event(item))
            except p.ProtocolError as exc:
                await self._send(p.error_from(exc))
        if valid and await self._admitted(valid):
            await self._publish(valid)

    async def _hello(self, obj: dict[str, object], first: bool) -> None:
        """`{"type": "hello", "controls": [...]}`: the actions this producer carries out."""
        if not first:
            message = "hello must be the socket's first message (or declare with ?controls=)"
            await self._send(p.error_message(p.ErrorCode.INVALID_MESSAGE, message))
            return
        try:
            actions = p.hello_controls(obj)
        except p.ProtocolError as exc:
            await self._send(p.error_from(exc))
            return
        self._holder = self.runtime.control.holder(self._conn_id, actions)

    async def _admitted(self, events: list[NewEvent]) -> bool:
        """The key's events/s budget (shared with REST and its other sockets); refused: not applied."""
        refusal = self.limiter.take(self.key_id, len(events))
        if refusal is None:
            return True
        metrics.CLIENT_ERRORS.labels(p.ErrorCode.RATE_LIMITED).inc()
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
            sequenced, durable = await self.runtime.publish(self.account, events, self._holder)
        except (CallEndedError, QuotaExceededError, ControlResultError, MetadataRefusedError) as exc:
            if len(events) > 1:  # apply the others one by one; only the offending ones are refused
                for event in events:
                    await self._publish([event])
                return
            event = events[0]
            if isinstance(exc, QuotaExceededError):
                await self._send(p.error_message(p.ErrorCode.QUOTA_EXCEEDED, exc.reason, event.call_id, event.ref))
                return
            message = f"call {event.call_id} has ended; no events are accepted after call.ended"
            if isinstance(exc, MetadataRefusedError):
                message = f"not applied: {exc.reason}"
            elif isinstance(exc, ControlResultError):
                message = f"not applied: call {event.call_id} has no control request {exc.request_id} waiting for a result (unknown, answered already, or timed out)"
            await self._send(p.error_message(p.ErrorCode.INVALID_MESSAGE, message, event.call_id, event.ref))
            return
        except CallFailedError as exc:
            if len(events) > 1:  # the other calls' events go on
                for event in events:
                    await self._publish([event])
                return
            await self._send(p.error_message(p.ErrorCode.INTERNAL, str(exc), events[0].call_id, events[0].ref))
            return
        except BrokerUnavailableError as exc:
            for event in events:
                await self._send(p.error_message(p.ErrorCode.INTERNAL, str(exc), event.call_id, event.ref))
            return
        except StoreUnavailableError as exc:  # e.g. while loading a call: say so, stay open
            log.warning("publish failed: %s", exc)
            message = f"not applied: the node cannot reach its store ({exc}); retry"
            for event in events:
                await self._send(p.error_message(p.ErrorCode.INTERNAL, message, event.call_id, event.ref))
            return
        self._hold(events)
        pairs = zip(events, sequenced, strict=True)
        refs = [(new.ref, accepted.seq, new.call_id) for new, accepted in pairs if new.ref is not None]
        if refs:
            self._acks.add(refs, durable)
            durable.add_done_callback(self._on_durable)
            if self._ack_timer is None:
                self._arm_ack_timer()

    def _hold(self, events: list[NewEvent]) -> None:
        """This socket now holds the calls it published (the broker has it as their holder)."""
        for event in events:
            if event.type == ENDED:
                self._held.discard(event.call_id)
                self._formats.pop(event.call_id, None)  # its audio is over
            else:
                self._held.add(event.call_id)

    # ---- live audio (docs/protocol.md, Live audio) -------------------------------------------

    async def _audio_format(self, obj: dict[str, Any]) -> None:
        """`audio.format`: the format of a call's frames on this socket, from now on."""
        try:
            call_id, fmt = parse_format(obj)
        except p.ProtocolError as exc:
            await self._send(p.error_from(exc))
            return
        if call_id not in self._formats and len(self._formats) >= MAX_AUDIO_CALLS:
            message = f"audio.format: at most {MAX_AUDIO_CALLS} calls with audio per socket (a call's end frees one)"
            await self._send(p.error_message(p.ErrorCode.INVALID_MESSAGE, message, call_id))
            return
        try:
            state = await self.runtime.broker.state(self.account, call_id)
        except (BrokerUnavailableError, StoreUnavailableError) as exc:
            await self._send(p.error_message(p.ErrorCode.INTERNAL, f"audio.format not applied, retry: {exc}", call_id))
            return
        if state.status == "ended":
            message = f"call {call_id} has ended; no audio is accepted after call.ended"
            await self._send(p.error_message(p.ErrorCode.CALL_NOT_LIVE, message, call_id))
            return
        self._formats[call_id] = fmt
        self.runtime.audio_format(self.account, call_id, fmt)

    async def _binary(self, data: bytes) -> None:
        """An audio frame read behind other messages, in the read loop (or one `_audio_now` failed
        on, whose error ends the socket here, as any of the loop's: 1011)."""
        if self._sink_failure is not None:
            raise self._sink_failure
        error = self._audio(data)
        if error is not None:
            await self._send(error)

    def _audio_now(self, data: bytes) -> bool:
        """An audio frame read while the read loop waits (the protocol's `binary_sink`): handled
        at once; an error it earns is written, or queued behind what the socket still owes."""
        if self.closed or self._gone or self._sink_failure is not None:
            return False
        try:
            error = self._audio(data)
        except Exception as exc:  # not inside uvloop's read callback: the read loop raises it
            self._sink_failure = exc
            return False
        if error is not None:
            self._write_or_queue([error])
        return True

    def _audio(self, data: bytes) -> bytes | None:
        """One audio frame: parsed, checked against its call's format and the key's audio rate,
        then handed to the runtime (which never waits). A bad one: the `error` it gets."""
        try:
            frame = parse_frame(data)
            fmt = self._formats.get(frame.call_id)
            if fmt is None:
                message = f"no audio.format for call {frame.call_id} on this socket: send one before its frames"
                raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, message, frame.call_id)
            check_payload(fmt, frame)
        except p.ProtocolError as exc:
            return p.error_from(exc)
        refusal = self._audio_limiter.take(self.key_id, 1)
        if refusal is not None:
            metrics.CLIENT_ERRORS.labels(p.ErrorCode.RATE_LIMITED).inc()
            now = time.monotonic()
            if now - self._audio_refused_at >= _AUDIO_REFUSAL_EVERY_S:  # not one error per frame
                self._audio_refused_at = now
                message = f"audio frames dropped: {refusal.message}"
                return rate_limited_message(message, refusal.retry_after_s, None, frame.call_id)
            return None
        metrics.AUDIO_FRAMES_RECEIVED.inc()
        self.runtime.audio_frame(self.account, frame.call_id, fmt, frame)
        return None

    # ---- acks --------------------------------------------------------------------------------

    def _on_durable(self, _: asyncio.Future[None]) -> None:
        self._emit_due_acks()

    def _emit_due_acks(self) -> None:
        if self._gone:
            return
        messages = self._acks.due()
        if messages:
            self._write_or_queue(messages)

    def _write_or_queue(self, messages: list[bytes]) -> None:
        """Write `messages` now if the socket takes them at once, else after what waits already."""
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
        if deadline is None or self._gone:
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


ingest_endpoint = socket_endpoint(IngestConnection, "publish")
