"""`GET /v1/events`: the subscriber socket (docs/protocol.md, Client → server on /v1/events).

One reader loop handles client messages in order; one writer task drains the connection's
outbox at the socket's pace. Fan-out never waits for this socket: it appends to the outbox,
and the outbox's policy decides when the client is too slow to keep.

Live audio (`listen`) waits in a buffer of its own (`ListenBuffer`): every write takes the
events first and audio only once none is queued, so audio never holds an event back; a
listener that falls behind loses its oldest audio, and one that keeps losing is a slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence

from starlette.websockets import WebSocket

from callstream import metrics
from callstream import protocol as p
from callstream.audio import (
    AudioFormat,
    binary_call_id,
    binary_payload,
    listening_message,
    unlistened_message,
)
from callstream.auth import AuthError, Principal
from callstream.broker import BrokerUnavailableError
from callstream.errors import UnavailableError
from callstream.events import ENDED, Event, text_frame
from callstream.hub import Subscription
from callstream.limits import TokenBucket
from callstream.listen_buffer import ListenBuffer
from callstream.outbox import Outbox
from callstream.server.control_desk import ControlRefusedError
from callstream.server.runtime import Runtime
from callstream.server.socket_base import SOCKET_GONE, SocketConnection, rate_limited_message, socket_endpoint
from callstream.server.transport import FRAME_WRITER, FrameWriter, frame_payload
from callstream.store import StoreUnavailableError

log = logging.getLogger("callstream.events")

_WRITE_BATCH_BYTES = 256 * 1024  # bounds one write, so one busy socket cannot hog the loop
MAX_LISTENS = 4  # calls one connection listens to at once (docs/protocol.md, Live audio)


class _Flusher:
    """Writes every socket a fan-out touched, once, right after that fan-out.

    Waking one writer task per socket per fan-out (an asyncio.Event.set, a task switch, an
    Event.wait) costs more than the write itself (bench/README.md, direct-flush). A connection
    starts a drain task only for what needs waiting: a socket that pushes back, or a server
    without the frame writer. The runtime calls `flush` at the end of each fan-out of events
    (`Runtime.after_fan_out`), so they leave in that loop iteration, with what their sockets
    queued before them (audio after the events); what queues otherwise (audio, control
    messages) is written in the next iteration.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[EventsConnection] = []

    def add(self, conn: EventsConnection) -> None:
        if not self._dirty:
            self._loop.call_soon(self.flush)
        self._dirty.append(conn)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        sent = 0
        for conn in dirty:
            sent += conn.flush_now()
        if sent:
            metrics.EVENTS_DELIVERED.inc(sent)  # once per fan-out, not once per socket


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class EventsConnection(SocketConnection):
    kind = "events"

    def __init__(self, ws: WebSocket, runtime: Runtime, principal: Principal) -> None:
        super().__init__(ws, runtime, principal, runtime.settings.max_message_bytes)
        settings = runtime.settings
        self.outbox = Outbox(settings.outbox_high_water, metrics.PARTIALS_DROPPED.inc)
        self.bucket = TokenBucket(settings.client_rate, settings.client_burst)
        self._control_bucket: TokenBucket | None = None  # made on the first control message
        self.subs: dict[str, Subscription] = {}
        # Calls whose audio this socket hears (`listen`), as the keys of a dict: few sockets
        # listen, and an empty dict, unlike an empty set, holds no table (`lazy-listen`).
        self.listens: dict[str, None] = {}
        self.audio = ListenBuffer(settings.listen_buffer_bytes, metrics.AUDIO_FRAMES_DROPPED.inc)
        self._cut_off = False
        # An idle subscriber holds no task and no Event of its own: fan-out writes its socket
        # directly (`flush_now`); a drain task exists only while the socket pushes back, and
        # the room event only while a replay waits for the outbox to empty.
        self._drainer: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._frame_writer: FrameWriter | None = ws.scope.get(FRAME_WRITER)
        self._dirty = False
        self._flusher = _flusher()
        if self._flusher.flush not in runtime.after_fan_out:
            runtime.after_fan_out.append(self._flusher.flush)
        # The socket's `transport.write` while a block may go straight out (one live subscription,
        # nothing queued here, the socket open and writable), else None: the hub calls it directly.
        self.direct_write: Callable[[bytes], None] | None = None
        if self._frame_writer is not None:
            self._frame_writer.on_change = self._refresh_direct

    # ---- the hub's side: never blocks ------------------------------------------------------

    def enqueue_event(self, event: Event) -> None:
        if self.outbox.push(event.wire, event.key, event.is_partial):
            self._queued()
        else:
            self._too_slow()

    def enqueue_block(self, block: bytes, events: Sequence[Event]) -> int:
        """A call's events of one fan-out when this socket offers no direct write
        (`_refresh_direct`): other calls, a backlog or a socket that pushes back. They go into the
        outbox one by one, where the slow-consumer policy applies, and the flush after the
        fan-out writes everything it brought this socket together."""
        for event in events:
            self.enqueue_event(event)
        return 0

    def _refresh_direct(self) -> None:
        """Offer the hub the socket's write exactly while nothing may come between: called on
        every change of the subscriptions, the outbox emptying and the socket's state."""
        writer = self._frame_writer
        direct = (
            writer is not None
            and not self.closed
            and not self._cut_off
            and len(self.subs) == 1
            and not self.outbox.queued_bytes
            and not self.audio.queued_bytes
            and writer.frames_open
        )
        self.direct_write = writer.transport.write if direct and writer is not None else None

    def _queued(self) -> None:
        self.direct_write = None  # queued frames go first
        if not self._dirty:
            self._dirty = True
            self._flusher.add(self)

    def subscription_over(self, sub: Subscription) -> None:
        """The call ended and the hub dropped `sub` (a pending one is settled by `_catch_up`)."""
        if sub.parked is None and self.subs.get(sub.call_id) is sub:
            del self.subs[sub.call_id]
            self._refresh_direct()

    def flush_now(self) -> int:
        """Write what was queued straight to the socket; hand the rest to a drain task when the
        socket pushes back (or this server has no frame writer). Returns the frames written."""
        self._dirty = False
        writer = self._frame_writer
        if self.closed:
            return 0
        if writer is None or not writer.writable.is_set():
            self._drain_later()
            return 0
        sent = 0
        while self.outbox.queued_bytes and writer.writable.is_set():
            batch = self.outbox.pop_batch(_WRITE_BATCH_BYTES)
            if not writer.write_frames(b"".join(batch)):
                return sent
            sent += len(batch)
        while self.audio.queued_bytes and not self.outbox.queued_bytes and writer.writable.is_set():
            if not writer.write_frames(b"".join(self.audio.pop_batch(_WRITE_BATCH_BYTES))):
                return sent
        if self.outbox.queued_bytes or self.audio.queued_bytes:
            self._drain_later()
        else:
            self._refresh_direct()
        if self._room is not None:
            self._made_room()
        return sent

    def _drain_later(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    def _made_room(self) -> None:
        if self._room is not None and self.outbox.has_room:
            self._room.set()

    def send(self, message: bytes | str) -> None:
        """Queue a control message (subscribed, error, pong) behind the events already queued."""
        payload = message if isinstance(message, bytes) else message.encode()
        if self.outbox.push(text_frame(payload)):
            self._queued()
        else:
            self._too_slow()

    def _too_slow(self, why: str = "outbound buffer full: resubscribe with since") -> None:
        # Called from inside the hub's fan-out loop: the hub's index must not change here. The
        # overflowed outbox refuses every later push, and `terminate` unsubscribes next tick.
        self.direct_write = None
        if not self.closed and not self._cut_off:
            self._cut_off = True
            metrics.SLOW_CONSUMERS.inc()
            self.runtime.tasks.start(self.terminate(p.CloseCode.POLICY, p.ErrorCode.SLOW_CONSUMER, why))

    # ---- life cycle ----------------------------------------------------------------------

    def _started(self) -> None:
        self._arm_expiry()

    def _ended(self) -> None:
        self.direct_write = None
        if self._frame_writer is not None:
            self._frame_writer.on_change = None
        self._unsubscribe_all()
        self._unlisten_all()
        self._cancel(self._expiry, self._drainer)

    async def _closing(self, code: int) -> None:
        self.direct_write = None
        if self._room is not None:
            self._room.set()  # release a replay waiting for room
        self._unsubscribe_all()
        self._unlisten_all()
        self._cancel(self._drainer)

    async def _drain(self) -> None:
        """Empty the outbox at the socket's pace (a batch of pre-encoded frames per write), then end."""
        writer = self._frame_writer
        with contextlib.suppress(*SOCKET_GONE):
            while (self.outbox or self.audio) and not self.closed:
                if writer is None:  # another ASGI server: one message at a time
                    await self._send_plain()
                    continue
                if not writer.writable.is_set():
                    await writer.writable.wait()  # the socket's own backpressure
                events = bool(self.outbox)  # events first: audio goes only once none waits
                batch = (self.outbox if events else self.audio).pop_batch(_WRITE_BATCH_BYTES)
                if not batch:
                    continue  # a direct flush emptied it meanwhile
                if not writer.write_frames(b"".join(batch)):
                    return
                if events:
                    metrics.EVENTS_DELIVERED.inc(len(batch))
                    self._made_room()
            self._refresh_direct()

    async def _send_plain(self) -> None:
        """One batch as ASGI messages, events first (a server without the frame writer)."""
        if self.outbox:
            batch = self.outbox.pop_batch(_WRITE_BATCH_BYTES)
            for frame in batch:
                await self.ws.send_text(frame_payload(frame))
            metrics.EVENTS_DELIVERED.inc(len(batch))
            self._made_room()
            return
        for frame in self.audio.pop_batch(_WRITE_BATCH_BYTES):
            await self.ws.send_bytes(binary_payload(frame))

    async def _not_text(self) -> None:
        self._error(p.ErrorCode.INVALID_MESSAGE, "binary frames are not accepted: send JSON as text")

    async def _too_large(self, limit: int) -> bool:
        await self.terminate(p.CloseCode.TOO_LARGE, p.ErrorCode.MESSAGE_TOO_LARGE, f"messages are limited to {limit} bytes")
        return False

    # ---- client messages -------------------------------------------------------------------

    def _error(self, code: str, message: str, call_id: str | None = None) -> None:
        metrics.CLIENT_ERRORS.labels(code).inc()
        self.send(p.error_message(code, message, call_id))

    async def _handle(self, text: str) -> None:
        if wait_s := self.bucket.take():
            if self.bucket.refused_in_a_row > self.bucket.burst:
                await self.terminate(p.CloseCode.POLICY, p.ErrorCode.RATE_LIMITED, "too many messages: closing")
                return
            metrics.CLIENT_ERRORS.labels(p.ErrorCode.RATE_LIMITED).inc()
            self.send(rate_limited_message(f"too many messages; retry in {int(wait_s * 1000) + 1} ms", wait_s))
            return
        try:
            message = p.parse_client_message(text)
        except p.ProtocolError as exc:
            metrics.CLIENT_ERRORS.labels(exc.code).inc()
            self.send(p.error_from(exc))
            return
        if isinstance(message, p.Ping):
            self.send(p.PONG)
        elif isinstance(message, p.Subscribe):
            await self._subscribe(message)
        elif isinstance(message, p.Unsubscribe):
            await self._unsubscribe(message.call_id)
            self.send(p.unsubscribed_message(message.call_id))
        elif isinstance(message, p.Control):
            await self._control(message)
        elif isinstance(message, p.Listen):
            await self._listen(message.call_id)
        elif isinstance(message, p.Unlisten):
            self._unlisten(message.call_id)
            self.send(unlistened_message(message.call_id))
        else:
            await self._reauthenticate(message.token)

    async def _control(self, message: p.Control) -> None:
        """A supervisor's request (docs/protocol.md, Live control): `control_ack` or an `error`
        carrying the request's `ref` and `call_id`. Limited on its own bucket per connection."""
        settings = self.runtime.settings
        if self._control_bucket is None:
            self._control_bucket = TokenBucket(settings.control_rate, settings.control_burst)
        if wait_s := self._control_bucket.take():
            metrics.CLIENT_ERRORS.labels(p.ErrorCode.RATE_LIMITED).inc()
            text = f"at most {settings.control_rate:g} control messages/s (burst {settings.control_burst}); retry in {int(wait_s * 1000) + 1} ms"
            self.send(rate_limited_message(text, wait_s, message.ref, message.call_id))
            return
        def acknowledge(request_id: str, seq: int) -> None:
            self.send(p.control_ack_message(message.ref, message.call_id, request_id, seq))

        try:
            await self.runtime.control.request(self.principal, message.call_id, message.action, message.args, acknowledge)
        except ControlRefusedError as exc:
            metrics.CLIENT_ERRORS.labels(exc.code).inc()
            self.send(p.error_message(exc.code, exc.message, message.call_id, message.ref))
            return
        except UnavailableError as exc:  # nothing was recorded nor relayed: the socket stays open
            self.send(p.error_message(p.ErrorCode.INTERNAL, f"not sent, try again: {exc}", message.call_id, message.ref))
            return

    async def _subscribe(self, message: p.Subscribe) -> None:
        call_id, account = message.call_id, self.principal.account
        if call_id == p.WILDCARD and self.principal.calls is not None:
            self._error(p.ErrorCode.FORBIDDEN, "this token is limited to named calls; '*' is not allowed", call_id)
            return
        if not self.principal.may_see(call_id):
            self._error(p.ErrorCode.FORBIDDEN, "this token may not subscribe to that call", call_id)
            return
        if call_id not in self.subs and len(self.subs) >= self.runtime.settings.max_subscriptions:
            limit = self.runtime.settings.max_subscriptions
            self._error(p.ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} subscriptions per connection", call_id)
            return
        sub = Subscription(self, account, call_id, message.types, message.where)
        previous = self.runtime.hub.add(sub)
        self.subs[call_id] = sub
        self._refresh_direct()
        try:
            if previous is None:
                await self.runtime.broker.watch(account, call_id)
            if call_id == p.WILDCARD:
                self.send(p.subscribed_message(call_id, "live", 0, 0))
                for event in sub.go_live(0):
                    self.enqueue_event(event)
            else:
                await self._catch_up(sub, message.since)
        except (StoreUnavailableError, BrokerUnavailableError) as exc:
            log.warning("subscribe to %s failed: %s", call_id, exc)
            await self._unsubscribe(call_id)
            self._error(p.ErrorCode.INTERNAL, "the subscription could not be set up; try again", call_id)

    async def _catch_up(self, sub: Subscription, since: int | None) -> None:
        """Replay (if asked), announce, then release what arrived meanwhile: no gap, no duplicate."""
        account, call_id = self.principal.account, sub.call_id
        state = await self.runtime.broker.state(account, call_id)
        if since is not None and since > state.last_seq:
            # The client claims events this server never had (say, a store restored from a
            # backup): resuming here would silently skip everything up to `since`.
            await self._unsubscribe(call_id)
            message = f"since={since} is ahead of this call's last seq {state.last_seq}: fetch it over REST"
            self._error(p.ErrorCode.HISTORY_UNAVAILABLE, message, call_id)
            return
        replayed, last_seq, ended = 0, state.last_seq, False
        if since is not None:
            # Page by page, each paced by the socket: the call's history never sits here whole.
            # Live events meanwhile are parked on the pending `sub` (hub.py).
            async with contextlib.aclosing(self.runtime.replay(account, call_id, since)) as pages:
                async for page in pages:
                    if self.subs.get(call_id) is not sub or self.closed:
                        return  # replaced, unsubscribed or closed while we were reading history
                    for event in page:
                        if event.seq <= since:
                            continue
                        last_seq = max(last_seq, event.seq)
                        ended = ended or event.type == ENDED
                        if sub.types is not None and event.type not in sub.types:
                            continue
                        await self._wait_for_room()
                        if self.closed:
                            return
                        self.enqueue_event(event)
                        replayed += 1
                    page.clear()  # sent (or queued as frames): let it go before the next is read
        status = state.status
        if ended:
            status = "ended"
        elif status == "pending" and last_seq > 0:
            status = "live"
        if self.subs.get(call_id) is not sub or self.closed:
            return
        self.send(p.subscribed_message(call_id, status, last_seq, replayed))
        for event in sub.go_live(max(last_seq, since or 0)):
            self.enqueue_event(event)
        if sub.over:  # the call ended while we replayed: the hub has let go of it already
            if self.subs.get(call_id) is sub:
                del self.subs[call_id]
                self._refresh_direct()
        elif status == "ended":  # nothing can follow: hold no subscription (see Hub.end_call)
            await self._unsubscribe(call_id)

    async def _wait_for_room(self) -> None:
        """Pace a replay by the socket: history may be far larger than the outbox."""
        while not self.outbox.has_room and not self.closed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    async def _unsubscribe(self, call_id: str) -> None:
        sub = self.subs.pop(call_id, None)
        self._refresh_direct()
        if sub is not None and self.runtime.hub.remove(self, sub.account, call_id) is sub:
            await self.runtime.broker.unwatch(sub.account, call_id)

    def _unsubscribe_all(self) -> None:
        hub, broker = self.runtime.hub, self.runtime.broker
        for call_id, sub in self.subs.items():
            if hub.remove(self, sub.account, call_id) is sub:
                self.runtime.tasks.start(broker.unwatch(sub.account, call_id))
        self.subs.clear()

    async def _reauthenticate(self, token: str) -> None:
        assert self.runtime.auth is not None
        try:
            principal = await self.runtime.auth.authenticate(token)
        except AuthError as exc:
            self._error(p.ErrorCode.TOKEN_EXPIRED if exc.expired else p.ErrorCode.UNAUTHORIZED, f"auth refused: {exc}")
            return
        except StoreUnavailableError:  # neither yes nor no: the socket goes on with its credential
            self._error(p.ErrorCode.INTERNAL, "auth not checked: the node cannot reach its store; try again")
            return
        if principal.account != self.principal.account or not principal.may("subscribe"):
            self._error(p.ErrorCode.FORBIDDEN, "auth refused: the new credential is for another account or scope")
            return
        self.principal, self.key_id = principal, principal.key_id
        self._arm_expiry()
        for call_id in [c for c in self.subs if c != p.WILDCARD and not principal.may_see(c)]:
            await self._unsubscribe(call_id)
            self._error(p.ErrorCode.FORBIDDEN, "the new token does not cover this call: unsubscribed", call_id)
        if principal.calls is not None and p.WILDCARD in self.subs:
            await self._unsubscribe(p.WILDCARD)
            self._error(p.ErrorCode.FORBIDDEN, "the new token does not allow '*': unsubscribed", p.WILDCARD)
        for call_id in [c for c in self.listens if not principal.may("listen") or not principal.may_see(c)]:
            self._unlisten(call_id)
            self._error(p.ErrorCode.FORBIDDEN, "the new credential may not listen to this call: unlistened", call_id)

    # ---- live audio (docs/protocol.md, Live audio) ---------------------------------------------

    async def _listen(self, call_id: str) -> None:
        """Hear the call's audio: `listening` as soon as the call is known not to have ended if
        its format is known here, else with its first audio. Like a subscription, a call not
        started yet may be listened to, and a call of another account is one that never plays:
        nothing tells them apart. A call of this account that has ended answers only
        `unlistened` (reason `ended`), as a subscription to it answers `subscribed` with status
        `ended`: nothing can follow."""
        if not self.principal.may("listen"):
            self._error(p.ErrorCode.FORBIDDEN, "this credential lacks the listen scope", call_id)
            return
        if not self.principal.may_see(call_id):
            self._error(p.ErrorCode.FORBIDDEN, "this token may not listen to that call", call_id)
            return
        if call_id not in self.listens and len(self.listens) >= MAX_LISTENS:
            message = f"at most {MAX_LISTENS} calls listened per connection; unlisten one first"
            self._error(p.ErrorCode.TOO_MANY_SUBSCRIPTIONS, message, call_id)
            return
        account = self.principal.account
        self.listens[call_id] = None  # again: `listening` comes again (when the format is known)
        self.runtime.audio.listen(self, account, call_id)
        try:  # after the desk has the listen: an end from now on is told either way, once
            state = await self.runtime.broker.state(account, call_id)
        except (StoreUnavailableError, BrokerUnavailableError) as exc:
            log.warning("listen to %s failed: %s", call_id, exc)
            self._unlisten(call_id)
            self._error(p.ErrorCode.INTERNAL, "the listen could not be set up; try again", call_id)
            return
        if call_id not in self.listens:
            return  # the call ended meanwhile (told already), or the socket closed
        if state.status == "ended":
            self.audio_ended(call_id)
            self.runtime.audio.unlisten(self, account, call_id)
        else:
            self.runtime.audio.announce(self, account, call_id)

    def _unlisten(self, call_id: str) -> None:
        if call_id in self.listens:
            del self.listens[call_id]
            self.runtime.audio.unlisten(self, self.principal.account, call_id)

    def _unlisten_all(self) -> None:
        for call_id in list(self.listens):
            self._unlisten(call_id)

    def audio_listening(self, call_id: str, fmt: AudioFormat) -> None:
        """`listening` goes with the events, ahead of any audio still queued: the call's, in the
        format it replaces, is dropped rather than played in the wrong one; the other calls'
        stays."""
        name = call_id.encode()
        self.audio.drop_where(lambda frame: binary_call_id(frame) == name)
        self.send(listening_message(call_id, fmt))

    def audio_ended(self, call_id: str) -> None:
        if call_id in self.listens:
            del self.listens[call_id]
            self.send(unlistened_message(call_id, "ended"))

    def audio_out(self, frame: bytes) -> None:
        """One binary frame for this listener (the desk's fan-out: never blocks)."""
        if self.closed or self._cut_off:
            return
        if self.audio.push(frame):
            self._queued()
        else:
            self._too_slow("audio kept falling behind (its oldest was dropped): listen again, or resubscribe with since")

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.principal.expires_at is None:
            return
        delay = max(0.0, self.principal.expires_at - time.time())
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        self.runtime.tasks.start(
            self.terminate(p.CloseCode.AUTH, p.ErrorCode.TOKEN_EXPIRED, "the token expired: reconnect with a fresh one")
        )


events_endpoint = socket_endpoint(EventsConnection, "subscribe")
