"""Publisher: the producer side of the ``/v1/ingest`` socket (docs/protocol.md, Producing).

A voice-agent runtime emits events faster than a request per event allows, and it must not stall
its audio loop on a network hiccup. So the publisher keeps one WebSocket open, tags every event
with a ``ref``, and keeps each event until the server's cumulative ack says it is durably stored.
If the socket drops, it reconnects with capped exponential backoff and jitter and re-sends every
event not acked yet, in the original order.

Every event carries an ``id`` (docs/protocol.md, Idempotent publish): the publisher's own,
unique per event (a random prefix per publisher and the event's ref), or the one the caller
gives. It is part of the frame, so a re-send carries the same id, and an event the server stored
just before the connection dropped, but whose ack was lost, is not stored again: its ack carries
the seq it got the first time. A re-sent ``call.ended`` resolves to its seq the same way, for as
long as the server remembers the call's ids (the call's replay window).

Backpressure is bounded (no unbounded buffers): at most ``max_in_flight`` events wait
for an ack. :meth:`Publisher.send` raises ``PublishError("backpressure")`` beyond that;
:meth:`Publisher.send_wait` and :meth:`Publisher.publish` wait for room instead.

Live control (docs/control.md): ``controls`` declares what the producer can do on the socket;
the server relays a supervisor's requests for the calls this publisher holds (those it published
an event of). Each goes to its action's handler, whose outcome is published as the request's one
``control.result``, or, for an action declared without a handler, to :meth:`control_requests`.

Live audio (docs/protocol.md, Live audio): :meth:`Publisher.send_audio` streams a call's PCM beside
its events on the same socket. Audio is live or nothing: it is never acked, never re-sent, and
never delays an event (the writer sends every queued event before the next audio frame). While
the socket is down it is dropped, not buffered, and at most :data:`MAX_AUDIO_FRAMES` frames wait
for a slow socket, the oldest dropped first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callstream.audio_send import AudioCall, track_number
from callstream.control import RESULT, ControlHandler, ControlRequest, parse_actions, parse_relay, result_data
from callstream.errors import PublishError
from callstream.events import ENDED, EventInvalidError, is_valid_call_id
from callstream.protocol import CloseCode
from callstream.wire import AUTH_STATUSES, DROPPED, Reconnecting, refusal_reason, socket_url

__all__ = ["Publisher", "PublisherStats", "ingest_url"]

logger = logging.getLogger("callstream.publisher")

INITIAL_DELAY: Final = 0.1
MAX_WAITING_REQUESTS: Final = 1_000  # control requests queued for control_requests(), unread
_ANSWERED_WINDOW: Final = 10_000  # request ids remembered as answered
MAX_AUDIO_FRAMES: Final = 500  # audio frames waiting for the socket (10 s of one 20 ms track)
MAX_AUDIO_CALLS: Final = 10_000  # calls whose audio format and track positions are remembered


def ingest_url(base_url: str) -> str:
    """Map the server's base URL (``http://host:8080``) to its ingest socket URL.

    Users configure one URL for REST and sockets alike; the scheme mapping lives here so nobody
    hand-writes ``ws://`` URLs. A ``ws``/``wss`` base is accepted as is.
    """
    return socket_url(base_url, "/v1/ingest")


@dataclass(slots=True)
class _Pending:
    """An event sent (or about to be) and not acknowledged yet; kept for re-sending."""

    ref: int
    frame: bytes
    future: asyncio.Future[int | None]


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot of the publisher's queues, for live views and health checks."""

    in_flight: int  # events sent or queued, not acked yet
    unsent: int  # of those, not yet written to the current socket
    connected: bool
    connections: int  # successful handshakes so far (reconnects = connections - 1)
    acked: int
    errors: int
    audio_sent: int = 0  # audio frames written to the socket
    audio_dropped: int = 0  # audio frames dropped: sent while disconnected, or the oldest of a full queue


class Publisher(Reconnecting):
    """Publish events of live calls through the ingest socket, with acks and reconnects.

    Use it as ``async with Publisher(url, key) as pub:``. Leaving the block normally waits until
    every event is acked (:meth:`flush`); leaving it with an exception does not.
    """

    _name = "callstream-publisher"

    def __init__(
        self,
        url: str,
        key: str,
        *,
        max_in_flight: int = 10_000,
        reconnect_max_delay: float = 10.0,
        controls: Mapping[str, ControlHandler | None] | None = None,
    ) -> None:
        """``controls`` maps each action this producer carries out (``say``, ``instruct``,
        ``pause``, ``resume``, ``transfer``, ``end``) to its handler, or to None to take its
        requests from :meth:`control_requests` instead."""
        if max_in_flight < 1:
            msg = "max_in_flight must be at least 1"
            raise ValueError(msg)
        try:
            declared = parse_actions(list(controls or {}))
        except EventInvalidError as exc:
            raise ValueError(str(exc)) from None
        url = ingest_url(url)
        if declared:
            url += "?" + urllib.parse.urlencode({"controls": ",".join(sorted(declared))})
        super().__init__(url, INITIAL_DELAY, reconnect_max_delay)
        self._controls: dict[str, ControlHandler | None] = dict(controls or {})
        self._requests: asyncio.Queue[ControlRequest | None] = asyncio.Queue(MAX_WAITING_REQUESTS)
        self._answered: OrderedDict[str, None] = OrderedDict()  # request ids answered (or being)
        self._handlers: set[asyncio.Task[None]] = set()
        self._key = key
        self._max_in_flight = max_in_flight
        self._next_ref = 1
        self._id_prefix = f"p{secrets.token_hex(8)}-"  # this publisher's ids: the prefix and the ref
        self._pending: dict[int, _Pending] = {}  # insertion order == ref order
        self._outbox: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._failure: PublishError | None = None
        self._acked = 0
        self._errors = 0
        self._audio_calls: OrderedDict[str, AudioCall] = OrderedDict()
        # Audio frames waiting for the socket, each with its call (whose format goes first).
        self._audio_out: deque[tuple[AudioCall, bytes]] = deque()
        self._audio_sent = 0
        self._audio_dropped = 0

    async def start(self) -> None:
        """Connect in the background and wait for the first handshake's outcome.

        A refused key raises ``PublishError("unauthorized")`` here, so a misconfigured producer
        fails at start-up. An unreachable server does not raise: the publisher keeps retrying
        and buffers up to ``max_in_flight`` events meanwhile, because a producer should ride
        out a server restart.
        """
        if self._task is not None:
            return
        await self._launch()
        self._raise_if_failed()

    def send(
        self, call_id: str, type: str, data: dict[str, Any], *, id: str | None = None
    ) -> asyncio.Future[int | None]:
        """Queue one event without waiting; the future resolves to its ``seq`` once stored.

        ``id`` (1-128 characters of ``A-Z a-z 0-9 _ . : -``, unique within the call) makes the
        event idempotent under the caller's own retries too; without one the publisher picks
        one. Raises ``ValueError`` for an invalid ``id``, ``PublishError("backpressure")`` when
        ``max_in_flight`` events are waiting for an ack (use :meth:`send_wait` to wait for room
        instead). The future fails with ``PublishError`` when the server refuses the event. It
        resolves to ``None`` only if the server's cumulative ack skipped this event's ref
        (callstream's server acks every ref).
        """
        if id is not None and not is_valid_call_id(id):  # the same alphabet and length
            msg = "id must be 1-128 characters of A-Z a-z 0-9 _ . : -"
            raise ValueError(msg)
        self._raise_if_failed()
        if self._task is None:
            msg = "start the publisher first: `async with Publisher(...)` or `await pub.start()`"
            raise RuntimeError(msg)
        if len(self._pending) >= self._max_in_flight:
            msg = f"{len(self._pending)} events are waiting for an ack (max_in_flight)"
            raise PublishError("backpressure", msg)
        ref = self._next_ref
        event_id = id if id is not None else f"{self._id_prefix}{ref}"
        frame = orjson.dumps({"call_id": call_id, "type": type, "data": data, "ref": ref, "id": event_id})
        self._next_ref += 1
        if type == ENDED:
            self._forget_audio(call_id)
        pending = _Pending(ref, frame, asyncio.get_running_loop().create_future())
        self._pending[ref] = pending
        self._outbox.append(pending)
        self._drained.clear()
        if len(self._pending) >= self._max_in_flight:
            self._room.clear()
        self._wakeup.set()
        return pending.future

    def send_audio(
        self,
        call_id: str,
        track: str | int,
        pcm: bytes | bytearray | memoryview,
        *,
        sample_rate: int = 16_000,
        codec: str = "pcm_s16le",
    ) -> bool:
        """Stream a chunk of a call's live audio; True when it was queued, False when dropped.

        ``track`` is ``"caller"`` (or 0) or ``"agent"`` (or 1); ``pcm`` is mono audio in
        ``codec`` (``"pcm_s16le"``: 16-bit little-endian samples, or ``"mulaw"``) at
        ``sample_rate`` (8000, 16000, 24000 or 48000 Hz), any length: it is cut into frames of
        at most 20 ms. The call's first chunk fixes its format (the publisher sends the
        ``audio.format`` message for you, again after a reconnect); a later chunk in another
        format is refused. Frames are stamped so that both tracks line up: see
        :mod:`callstream.audio_send`.

        Never blocks and never delays an event: audio goes out after the events queued before
        it. While the socket is down the chunk is dropped (False), and a socket too slow for
        the audio loses its oldest frames first (``statistics().audio_dropped``). After the
        call's ``call.ended`` is sent, a chunk starts the call's audio anew.

        Raises ``ValueError`` for an unknown track, codec or rate, an invalid call id, a partial
        sample (an odd byte count of 16-bit audio), or a format change; nothing is sent then.
        """
        number = track_number(track)
        self._raise_if_failed()
        if self._task is None:
            msg = "start the publisher first: `async with Publisher(...)` or `await pub.start()`"
            raise RuntimeError(msg)
        now = asyncio.get_running_loop().time()
        call = self._audio_calls.get(call_id)
        if call is None:
            call = AudioCall(call_id, codec, sample_rate, now)
        else:
            call.check(codec, sample_rate)
        frames = call.frames(number, pcm, now)
        self._audio_calls[call_id] = call
        self._audio_calls.move_to_end(call_id)
        if len(self._audio_calls) > MAX_AUDIO_CALLS:  # the call heard from least recently goes
            self._audio_calls.popitem(last=False)
        if self._ws is None:
            self._audio_dropped += len(frames)
            return False
        self._audio_out.extend((call, frame) for frame in frames)
        while len(self._audio_out) > MAX_AUDIO_FRAMES:  # the socket is behind: the oldest audio goes
            self._audio_out.popleft()
            self._audio_dropped += 1
        self._wakeup.set()
        return True

    def _forget_audio(self, call_id: str) -> None:
        """The call ended: its audio state goes, and its frames not sent yet are dropped."""
        call = self._audio_calls.pop(call_id, None)
        if call is not None and self._audio_out:
            kept = [out for out in self._audio_out if out[0] is not call]
            self._audio_dropped += len(self._audio_out) - len(kept)
            self._audio_out = deque(kept)

    async def send_wait(
        self, call_id: str, type: str, data: dict[str, Any], *, id: str | None = None
    ) -> asyncio.Future[int | None]:
        """Like :meth:`send`, but wait for room instead of raising on backpressure.

        Returns as soon as the event is queued, not when it is acked, so a producer can keep
        many events in flight and still be slowed down when the server falls behind.
        """
        while len(self._pending) >= self._max_in_flight:
            self._raise_if_failed()
            await self._room.wait()
        return self.send(call_id, type, data, id=id)

    async def publish(self, call_id: str, type: str, data: dict[str, Any], *, id: str | None = None) -> int | None:
        """Send one event and wait until the server has durably stored it; return its ``seq``
        (for an ``id`` the call holds already, the seq that event got)."""
        return await (await self.send_wait(call_id, type, data, id=id))

    async def flush(self) -> None:
        """Wait until every event sent so far is acked (or refused).

        Raises the publisher's permanent failure (``unauthorized``, ``closed``) if events were
        dropped because of it; per-event refusals stay on their own futures.
        """
        await self._drained.wait()
        self._raise_if_failed()

    async def close(self) -> None:
        """Close the socket and stop reconnecting; events still unacked fail with ``closed``.

        Call :meth:`flush` first to wait for them (``async with`` does).
        """
        if await self._stop():
            self._fail_pending(PublishError("closed", "the publisher was closed before the ack"))
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        with contextlib.suppress(asyncio.QueueFull):
            self._requests.put_nowait(None)  # ends control_requests()

    # -- live control -------------------------------------------------------------------------------

    async def control_requests(self) -> AsyncIterator[ControlRequest]:
        """The control requests of actions declared without a handler, as the server relays them.

        Answer each with :meth:`control_result` (the server answers ``timeout`` for you after
        its control timeout). Ends when the publisher is closed. Read it from one task.
        """
        while True:
            request = await self._requests.get()
            if request is None:
                self._requests.put_nowait(None)  # later iterators end too
                return
            yield request

    async def control_result(self, request: ControlRequest, *, ok: bool, error: str | None = None) -> bool:
        """Publish the one ``control.result`` of ``request``; True once it is stored as that.

        False when the request was answered already: by this publisher, by the server's timeout,
        or by its call's end (which settles ``end`` and ``transfer`` as done, the rest as not).
        Raises :class:`~callstream.errors.PublishError` when the result could not be published.
        """
        if request.request_id in self._answered:
            return False
        self._answered[request.request_id] = None
        if len(self._answered) > _ANSWERED_WINDOW:
            self._answered.popitem(last=False)
        data = result_data(request.request_id, ok, None if ok else (error or "failed"))
        try:
            await self.publish(request.call_id, RESULT, data)
        except PublishError as exc:
            if exc.code == "invalid_message":  # settled already on the server, or the call ended
                logger.info("control request %s was settled before its result: %s", request.request_id, exc.message)
                return False
            raise
        return True

    def _on_control(self, message: dict[str, Any]) -> None:
        request = parse_relay(message)
        if request is None or request.action not in self._controls or request.request_id in self._answered:
            logger.warning("ignoring a control message this publisher did not declare: %r", message.get("action"))
            return
        handler = self._controls[request.action]
        if handler is None:
            try:
                self._requests.put_nowait(request)
            except asyncio.QueueFull:
                self._start_handler(self._answer(request, False, "the producer has too many requests waiting"))
            return
        self._start_handler(self._handle_control(handler, request))

    def _start_handler(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle_control(self, handler: ControlHandler, request: ControlRequest) -> None:
        """Run the action's handler; its outcome (returned, or the message of what it raised) is
        the request's result."""
        try:
            await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.info("control handler for %s raised %r", request.action, exc)
            await self._answer(request, False, str(exc) or type(exc).__name__)
            return
        await self._answer(request, True, None)

    async def _answer(self, request: ControlRequest, ok: bool, error: str | None) -> None:
        try:
            await self.control_result(request, ok=ok, error=error)
        except PublishError as exc:
            logger.warning("could not publish the result of control request %s: %s", request.request_id, exc)

    def statistics(self) -> PublisherStats:
        """Return counters and queue sizes (trio's ``statistics()`` habit)."""
        return PublisherStats(
            in_flight=len(self._pending),
            unsent=len(self._outbox) if self._ws is not None else len(self._pending),
            connected=self._ws is not None,
            connections=self._connections,
            acked=self._acked,
            errors=self._errors,
            audio_sent=self._audio_sent,
            audio_dropped=self._audio_dropped,
        )

    async def _settle(self) -> None:
        # Not flush(): a permanent failure was already raised on the events' futures.
        await self._drained.wait()

    # -- connection loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve, and reconnect until closed or the key is refused."""
        try:
            while not self._closed and self._failure is None:
                if await self._attempt():
                    return
                self._first_attempt.set()
                await asyncio.sleep(self._next_delay())
        except Exception as exc:  # a bug here must not leave futures hanging forever
            logger.exception("publisher loop failed")
            self._fail_permanently(PublishError("internal", f"publisher loop failed: {exc!r}"))

    async def _attempt(self) -> bool:
        """Run one connection to its end; return True when reconnecting would be pointless."""
        try:
            await self._connect_and_serve()
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in AUTH_STATUSES:
                reason = refusal_reason(status, exc.response.body)
                self._fail_permanently(PublishError("unauthorized", reason))
                return True
            logger.warning("ingest handshake refused with HTTP %d; retrying", status)
        except DROPPED as exc:
            logger.warning("ingest connection lost (%s); reconnecting", exc)
        return False

    async def _connect_and_serve(self) -> None:
        async with self._connection(self._key) as ws:
            self._attempts = 0
            try:
                await self._serve(ws)
            except ConnectionClosed:
                if ws.close_code != CloseCode.AUTH:  # the server ends sockets of a revoked key with 4001
                    raise
            if ws.close_code == CloseCode.AUTH:
                self._fail_permanently(PublishError("unauthorized", "the server revoked the key"))

    async def _serve(self, ws: ClientConnection) -> None:
        """Re-send what is unacked, then read acks while a writer task sends new events."""
        self._outbox = deque(self._pending.values())
        self._wakeup.set()
        writer = asyncio.create_task(self._write(ws, self._connections))
        try:
            async for raw in ws:
                self._on_message(raw)
        finally:
            writer.cancel()
            await asyncio.wait([writer])
            self._audio_dropped += len(self._audio_out)  # live or nothing: not sent on the next socket
            self._audio_out.clear()
        if not writer.cancelled() and (error := writer.exception()) is not None:
            raise error

    async def _write(self, ws: ClientConnection, connection: int) -> None:
        """Send the queued events, then audio one frame at a time: an event queued meanwhile
        goes before the next frame. A call's ``audio.format`` precedes its first frame on each
        socket."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outbox or self._audio_out:
                    if self._outbox:
                        await ws.send(self._outbox.popleft().frame, text=True)
                        continue
                    call, frame = self._audio_out.popleft()
                    if call.announced != connection:
                        call.announced = connection
                        await ws.send(call.format_message, text=True)
                    await ws.send(frame)
                    self._audio_sent += 1
        except ConnectionClosed:
            return  # the reader sees the close too and ends the connection
        except Exception:
            await ws.close(1011)  # unblock the reader so the loop reports this
            raise

    def _next_delay(self) -> float:
        """Capped exponential backoff, equal jitter: many producers must not reconnect in step."""
        cap = self._backoff()
        return cap / 2 + random.random() * cap / 2

    # -- messages from the server ----------------------------------------------------------------

    def _on_message(self, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("ignoring a non-JSON frame from the server")
            return
        if not isinstance(msg, dict):
            logger.warning("ignoring a non-object frame from the server")
        elif msg.get("type") == "ack":
            self._on_ack(msg.get("ref"), msg.get("seq"))
        elif msg.get("type") == "error":
            self._on_error(msg)
        elif msg.get("type") == "control":
            self._on_control(msg)

    def _on_ack(self, ref: object, seq: object) -> None:
        """Resolve ``ref`` and, since acks are cumulative, every earlier pending event."""
        if not isinstance(ref, int):
            return
        while self._pending:
            first = next(iter(self._pending))
            if first > ref:
                break
            done = self._pending.pop(first)
            self._acked += 1
            if not done.future.done():
                done.future.set_result(seq if first == ref and isinstance(seq, int) else None)
        self._after_removal()

    def _on_error(self, msg: dict[str, Any]) -> None:
        data = msg.get("data")
        data = data if isinstance(data, dict) else {}
        code, message = str(data.get("code", "internal")), str(data.get("message", ""))
        pending = self._pending.pop(msg["ref"], None) if isinstance(msg.get("ref"), int) else None
        if pending is None:
            logger.warning("ingest error not tied to a pending event: %s: %s", code, message)
            return
        self._errors += 1
        if not pending.future.done():
            pending.future.set_exception(PublishError(code, message))
        self._after_removal()

    # -- bookkeeping -----------------------------------------------------------------------------

    def _after_removal(self) -> None:
        if len(self._pending) < self._max_in_flight:
            self._room.set()
        if not self._pending:
            self._drained.set()

    def _fail_pending(self, error: PublishError) -> None:
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(PublishError(error.code, error.message))
        self._room.set()
        self._drained.set()

    def _fail_permanently(self, error: PublishError) -> None:
        self._failure = error
        self._fail_pending(error)
        self._first_attempt.set()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise PublishError(self._failure.code, self._failure.message)
        if self._closed:
            raise PublishError("closed", "the publisher is closed")
