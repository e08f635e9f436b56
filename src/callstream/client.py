"""Client: the subscriber side of ``/v1/events`` (docs/protocol.md, Client → server on /v1/events), for Python programs.

A dashboard backend, a supervisor bot or a pipeline wants the events of some calls, in order,
and does not want to write reconnect logic. So the client keeps one WebSocket open, remembers the
last ``seq`` of every call it has seen, and after any drop (a restarted server, a network blip,
a ``slow_consumer`` close) reconnects with capped exponential backoff and full jitter and
resubscribes each call with ``since=<last seq>``. The server then replays what was missed, so
nothing but superseded partials is lost, and the client drops the duplicates a replay can
overlap with (by ``seq``), so nothing is yielded twice.

``*`` cannot take ``since``: on reconnect the client resubscribes ``*`` and, for every live call
it had seen through ``*``, briefly subscribes that call with ``since`` to catch up, then drops
that subscription again (the browser client, ``callstream.js``, does the same).

Delivery to the program is through one bounded queue read by :meth:`Client.events`. A program
that stops reading makes the client stop reading the socket; the server then closes it as a
slow consumer and the client resumes with ``since``: backpressure without unbounded buffers and
without loss.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Concatenate, Final, Generic, Literal, ParamSpec, Self, TypeVar, overload

import httpx
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callstream.client_stream import READ_TIMEOUT_S, StreamPlan, read_stream
from callstream.control_waits import ControlOutcome, ControlWaits
from callstream.errors import AuthError, ClientError, ControlError
from callstream.metadata import Metadata, check_where
from callstream.protocol import CloseCode
from callstream.wire import (
    AUTH_STATUSES,
    DROPPED,
    Reconnecting,
    bearer,
    failure_reason,
    refusal_reason,
    rest_url,
    socket_url,
)

__all__ = [
    "AgentState",
    "CallEnded",
    "Client",
    "ClientStats",
    "ControlOutcome",
    "ControlRequested",
    "ControlResult",
    "ErrorEvent",
    "Event",
    "FunctionCall",
    "FunctionResult",
    "Metrics",
    "Subscribed",
    "SyncClient",
    "TranscriptFinal",
    "TranscriptPartial",
    "UnknownEvent",
    "Unsubscribed",
    "events_url",
    "iter_events",
    "parse_message",
]

logger = logging.getLogger("callstream.client")

WILDCARD: Final = "*"
SEEN_WINDOW: Final = 2048  # seqs remembered per call to drop replay overlaps
STABLE_AFTER_S: Final = 5.0  # a connection that lived this long resets the backoff
TokenProvider = Callable[[], Awaitable[str]]
T = TypeVar("T")
P = ParamSpec("P")
D = TypeVar("D")


# -- typed events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One message from the server. ``raw`` is the message exactly as decoded from the wire.

    ``seq`` and ``ts`` are set on the events of a call (the types a producer publishes) and
    ``None`` on control messages (``subscribed``, ``unsubscribed``, ``error``).
    """

    type: ClassVar[str] = ""
    call_id: str
    seq: int | None
    ts: int | None
    data: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def is_call_event(self) -> bool:
        """True for the events of a call (they carry a ``seq``), False for control messages."""
        return self.seq is not None

    @property
    def id(self) -> str | None:
        """The producer's ``id`` of a call event (idempotent publish), None when it gave none."""
        value = self.raw.get("id")
        return value if isinstance(value, str) else None


class _Data(Generic[T]):
    """A read-only attribute of an event, read from its ``data``; it never raises.

    A message's ``data`` is whatever the producer sent, so each convenience property is one
    read rule (text, a typed value or a default) instead of a hand-written property each.
    """

    def __init__(self, read: Callable[[dict[str, Any]], T], doc: str | None = None) -> None:
        self._read = read
        self.__doc__ = doc

    @overload
    def __get__(self, event: None, owner: type[Event]) -> Self: ...
    @overload
    def __get__(self, event: Event, owner: type[Event]) -> T: ...
    def __get__(self, event: Event | None, owner: type[Event]) -> T | Self:
        return self if event is None else self._read(event.data)


def _text(key: str, doc: str | None = None) -> _Data[str]:
    """``data[key]`` as text, ``""`` when it is missing."""
    return _Data(lambda data: str(data.get(key, "")), doc)


def _typed(key: str, kind: type[T], default: D) -> _Data[T | D]:
    """``data[key]`` when it is a ``kind``, else ``default``."""

    def read(data: dict[str, Any]) -> T | D:
        value = data.get(key)
        return value if isinstance(value, kind) else default

    return _Data(read)


def _object(key: str) -> _Data[dict[str, Any]]:
    """``data[key]`` when it is a JSON object, else an empty one."""

    def read(data: dict[str, Any]) -> dict[str, Any]:
        value = data.get(key)
        return value if isinstance(value, dict) else {}

    return _Data(read)


def _as_sent(key: str) -> _Data[Any]:
    """``data[key]`` as the producer sent it (None when missing)."""
    return _Data(lambda data: data.get(key))


EVENT_CLASSES: Final[dict[str, type[Event]]] = {}  # wire type → its class; filled by @_event
E = TypeVar("E", bound=Event)


def _event(type_: str) -> Callable[[type[E]], type[E]]:
    """Make a class the typed event of the wire type ``type_``: a frozen, slotted dataclass that
    :func:`parse_message` builds for every message of that type."""

    def make(cls: type[E]) -> type[E]:
        cls.type = type_
        made = dataclass(frozen=True, slots=True)(cls)
        EVENT_CLASSES[type_] = made
        return made

    return make


@dataclass(frozen=True, slots=True)
class _Transcript(Event):
    speaker = _text("speaker")
    text = _text("text")
    utterance_id = _typed("utterance_id", str, None)


@_event("transcript.partial")
class TranscriptPartial(_Transcript):
    """``transcript.partial``: words heard so far; a later partial or final replaces it."""


@_event("transcript.final")
class TranscriptFinal(_Transcript):
    """``transcript.final``: a completed sentence; ``sentiment`` is set by the server if enabled."""

    sentiment = _typed("sentiment", dict, None)


@_event("agent.state")
class AgentState(Event):
    """``agent.state``: the agent is ``listening``, ``thinking`` or ``speaking``.

    The server measures turns and writes them in: ``latency_ms`` on the ``speaking`` that answers
    the user's final (``None`` otherwise), ``interrupted`` on the state that ends the agent's
    speech when the user spoke over it.
    """

    state = _text("state")
    latency_ms = _typed("latency_ms", int, None)
    interrupted = _Data(lambda data: data.get("interrupted") is True)


@dataclass(frozen=True, slots=True)
class _Tool(Event):
    name = _text("name")
    tool_call_id = _typed("tool_call_id", str, None)


@_event("function.call")
class FunctionCall(_Tool):
    """``function.call``: the agent invoked a tool; ``tool_call_id`` pairs it with its result."""

    args = _as_sent("args")


@_event("function.result")
class FunctionResult(_Tool):
    """``function.result``: a tool returned."""

    result = _as_sent("result")


def _ms(key: str) -> _Data[float | None]:
    """``data[key]`` when it is a number (not a bool), else None."""

    def read(data: dict[str, Any]) -> float | None:
        value = data.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return _Data(read)


@_event("metrics")
class Metrics(Event):
    """``metrics``: a producer's own measurement of one stage (``stt``, ``llm``, ``tts``, ``eou``, …)."""

    stage = _text("stage")
    ttfb_ms = _ms("ttfb_ms")
    duration_ms = _ms("duration_ms")


@_event("call.ended")
class CallEnded(Event):
    """``call.ended``: the last event of a call."""

    status = _text("status")
    duration_ms = _typed("duration_ms", int, None)
    reason = _typed("reason", str, None)


@dataclass(frozen=True, slots=True)
class _Control(Event):
    request_id = _text("request_id")


@_event("control.requested")
class ControlRequested(_Control):
    """``control.requested``: a supervisor asked the call's producer to act (docs/control.md);
    ``by`` is who asked (``key_id``, and ``name``: the session's own, else the key's)."""

    action = _text("action")
    args = _object("args")
    by = _object("by")


@_event("control.result")
class ControlResult(_Control):
    """``control.result``: the one outcome of a control request; ``error`` when not ``ok``
    (``timeout`` when its producer never answered)."""

    ok = _typed("ok", bool, False)
    error = _typed("error", str, None)


@_event("subscribed")
class Subscribed(Event):
    """``subscribed``: the replay asked for (if any) is done; live events follow.

    Sent again after every reconnect, for each resubscribed call and for ``*``.
    """

    status = _text("status", "``live``, ``ended`` or ``pending`` (no event yet).")
    last_seq = _typed("seq", int, 0)
    replayed = _typed("replayed", int, 0)


@_event("unsubscribed")
class Unsubscribed(Event):
    """``unsubscribed``: the answer to :meth:`Client.unsubscribe`."""


@_event("error")
class ErrorEvent(Event):
    """``error``: a stream-level error. ``call_id`` is ``""`` when it concerns no call.

    The client already acts on ``history_unavailable`` (REST fallback), ``slow_consumer`` and
    ``token_expired`` (reconnect); they are yielded so a program can see what happened.
    """

    code = _text("code")
    message = _text("message")


@dataclass(frozen=True, slots=True)
class UnknownEvent(Event):
    """A message type this client version does not know; ``raw["type"]`` names it."""

    type: ClassVar[str] = "unknown"


def parse_message(message: dict[str, Any]) -> Event:
    """Turn one decoded server message into its typed :class:`Event` (never raises)."""
    data = message.get("data")
    data = data if isinstance(data, dict) else {}
    call_id = message.get("call_id") or data.get("call_id") or ""
    seq, ts = message.get("seq"), message.get("ts")
    cls = EVENT_CLASSES.get(str(message.get("type")), UnknownEvent)
    return cls(
        call_id=str(call_id),
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        ts=ts if isinstance(ts, int) and not isinstance(ts, bool) else None,
        data=data,
        raw=message,
    )


# -- bookkeeping ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Subscription:
    types: list[str] | None
    pending_since: int | None = None  # a replay asked for and not yet confirmed by `subscribed`
    where: Metadata | None = None  # `*` only: the metadata a call must hold, as the server judges it


@dataclass(slots=True)
class _Track:
    """What the client knows of one call: the resume point and a window of seen seqs."""

    last_seq: int = 0
    floor: int = 0
    seen: set[int] = field(default_factory=set)
    ended: bool = False

    def accept(self, seq: int) -> bool:
        """Record ``seq``; False when it was already yielded (a replay overlap, or ``*`` twice)."""
        if seq <= self.floor or seq in self.seen:
            return False
        self.seen.add(seq)
        if len(self.seen) > SEEN_WINDOW:
            oldest = min(self.seen)
            self.seen.discard(oldest)
            self.floor = oldest
        self.last_seq = max(self.last_seq, seq)
        return True


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of the client's state, for live views and health checks."""

    connected: bool
    connections: int  # successful handshakes so far (reconnects = connections - 1)
    subscriptions: int
    queued: int  # events received and not yet read by events()
    duplicates: int  # events dropped because they had already been yielded
    fetched: int  # events fetched over REST after history_unavailable


def _where_of(call_id: str, where: dict[str, Any] | None, transport: str) -> Metadata | None:
    """A subscription's ``where``, checked as the server checks it (``metadata.check_where``):
    ``ValueError`` for a call id other than ``*``, for the SSE transport (its stream takes no
    ``where``), and for a filter the server would refuse."""
    if where is None:
        return None
    if call_id != WILDCARD:
        msg = 'where is only allowed with "*"'
        raise ValueError(msg)
    if transport != "websocket":
        msg = "where needs the websocket transport: the SSE stream takes no where"
        raise ValueError(msg)
    return dict(check_where(where))  # MetadataError is a ValueError


def events_url(base_url: str) -> str:
    """Map the server's base URL (``http://host:8080``) to its events socket URL."""
    return socket_url(base_url, "/v1/events")


def token_expiry(token: str) -> float | None:
    """A JWT's ``exp`` (unix seconds), read without verifying; None for API keys and junk."""
    try:
        part = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


# -- the client ----------------------------------------------------------------------------------


class Client(Reconnecting):
    """Subscribe to live call events, with reconnects that lose nothing.

    ::

        async with Client("http://127.0.0.1:8080", key) as client:
            async for event in client.events("call_a", "call_b"):
                if isinstance(event, TranscriptFinal):
                    print(event.call_id, event.speaker, event.text)

    ``credential`` is an API key (``subscribe`` scope) or a JWT; it travels in the
    ``Authorization`` header, never in the URL. With ``token_provider`` (an async function that
    returns a fresh JWT) the client refreshes the token before it expires and after a 4001 close.
    ``transport="sse"`` reads Server-Sent Events instead of the WebSocket (same events, same
    resume; see :mod:`callstream.client_stream`).
    """

    _name = "callstream-client"

    def __init__(
        self,
        url: str,
        credential: str | None = None,
        *,
        token_provider: TokenProvider | None = None,
        refresh_margin: float | None = 60.0,
        reconnect_initial_delay: float = 0.25,
        reconnect_max_delay: float = 30.0,
        max_queue: int = 10_000,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        transport: Literal["websocket", "sse"] = "websocket",
    ) -> None:
        if transport not in ("websocket", "sse"):
            msg = f'transport is "websocket" or "sse", not {transport!r}'
            raise ValueError(msg)
        if credential is None and token_provider is None:
            msg = "give a credential (API key or JWT) or a token_provider"
            raise ValueError(msg)
        super().__init__(events_url(url), reconnect_initial_delay, reconnect_max_delay)
        self._rest = rest_url(url)
        self._token = credential
        self._provider = token_provider
        self._refresh_margin = refresh_margin
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._max_size = max_message_bytes
        self._queue: asyncio.Queue[Event | ClientError] = asyncio.Queue(max_queue)
        self._subs: dict[str, _Subscription] = {}
        self._calls: dict[str, _Track] = {}
        self._catch_ups: dict[str, int] = {}  # call id → since: temporary, for `*` after a drop
        self._internal_unsubs: set[str] = set()
        self._rebase: set[str] = set()  # calls whose server history went backwards
        self._http: httpx.AsyncClient | None = None
        self._failure: ClientError | None = None
        self._force_refresh = False
        self._auth_failures = 0
        self._duplicates = 0
        self._fetched = 0
        self._controls = ControlWaits()
        self._transport = transport
        self._streaming = False  # an SSE stream is open
        self._restream = asyncio.Event()  # the subscriptions changed: open a new stream now
        self._reconnect_now = False

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background and wait for the first handshake's outcome.

        A refused credential raises :class:`~callstream.errors.AuthError` here, so a
        misconfigured program fails at start-up. An unreachable server does not raise: the client
        keeps retrying, because a subscriber should ride out a server restart.
        """
        if self._task is not None:
            return
        self._http = httpx.AsyncClient(base_url=self._rest, timeout=10.0)
        await self._launch()
        if self._failure is not None:
            await self.close()
            raise self._failure

    async def close(self) -> None:
        """Close the socket and stop reconnecting; a waiting ``events()`` iterator ends."""
        if not await self._stop():
            return
        if self._http is not None:
            await self._http.aclose()
        self._offer_nowait(ClientError("closed", "the client was closed"))

    @property
    def connected(self) -> bool:
        return self._ws is not None or self._streaming

    @property
    def down_reason(self) -> str | None:
        """Why the client is not connected, in a few words (``cannot reach host:8080: connection
        refused``, ``the server closed the socket (1001 going away)``); None while connected or
        before the first attempt ends."""
        return None if self.connected else self._down_reason

    def statistics(self) -> ClientStats:
        """Counters and queue sizes (trio's ``statistics()`` habit)."""
        return ClientStats(
            connected=self.connected,
            connections=self._connections,
            subscriptions=len(self._subs),
            queued=self._queue.qsize(),
            duplicates=self._duplicates,
            fetched=self._fetched,
        )

    def last_seq(self, call_id: str) -> int:
        """The highest ``seq`` received for a call (0 if none): where a resume starts."""
        track = self._calls.get(call_id)
        return track.last_seq if track else 0

    # -- subscriptions ---------------------------------------------------------------------------

    async def subscribe(
        self,
        call_id: str,
        since: int | None = None,
        types: Iterable[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> None:
        """Subscribe to a call (or ``"*"``), now or whenever the socket opens.

        ``since``: first replay every event the server holds with a greater ``seq`` (0 = all).
        Without it, a call this client has already seen resumes from its last ``seq``.
        ``types``: only these event types. ``where`` (``"*"`` only): ``{"metadata": {K: V, …}}``,
        only the calls whose metadata holds every pair, judged by the server at each event, so a
        call joins when its metadata comes to match; checked here as the server checks it
        (:class:`ValueError`), since a subscription the server refuses would be refused again at
        every reconnect. Subscribing again replaces the earlier subscription.
        Returns once the request is sent; a :class:`Subscribed` event follows in ``events()``.
        """
        if call_id == WILDCARD and since is not None:
            msg = '"*" does not take since: subscribe to a call id to replay it'
            raise ValueError(msg)
        sub = _Subscription(list(types) if types else None, since, _where_of(call_id, where, self._transport))
        self._subs[call_id] = sub
        self._catch_ups.pop(call_id, None)
        track = self._calls.get(call_id)
        if track is not None and since is not None and since < track.floor:
            track.floor = since  # an explicit replay wants those seqs again
            track.seen = {s for s in track.seen if s > since}
        if self._ws is not None:
            await self._send_subscribe(call_id, sub, since if since is not None else self._resume(call_id))
        self._restream.set()

    async def unsubscribe(self, call_id: str) -> None:
        """Stop receiving a call (or ``"*"``); an :class:`Unsubscribed` event follows."""
        self._subs.pop(call_id, None)
        self._catch_ups.pop(call_id, None)
        self._internal_unsubs.discard(call_id)
        if self._ws is not None:
            await self._send({"type": "unsubscribe", "call_id": call_id})
        self._restream.set()

    async def events(self, *call_ids: str, types: Iterable[str] | None = None) -> AsyncGenerator[Event, None]:
        """Subscribe to ``call_ids`` (if any), then yield every event this client receives.

        That includes calls subscribed before or later with :meth:`subscribe`. Events of one call
        come in ``seq`` order, each once. Raises :class:`~callstream.errors.AuthError` when the
        credential is refused for good; ends quietly when the client is closed. Read it from one
        task: events are delivered once, to whichever iterator takes them.
        """
        type_list = list(types) if types else None
        for call_id in call_ids:
            await self.subscribe(call_id, types=type_list)
        while True:
            if self._queue.empty() and (self._closed or self._failure is not None):
                if self._failure is not None:
                    raise self._failure
                return
            item = await self._queue.get()
            if isinstance(item, ClientError):
                self._offer_nowait(item)  # later iterators see the end too
                if item.code == "closed":
                    return
                raise item
            yield item

    # -- live control ----------------------------------------------------------------------------

    async def control(
        self, call_id: str, action: str, *, result_timeout: float = 30.0, **args: Any
    ) -> ControlOutcome:
        """Ask the producer of a live call to act (``say``, ``instruct``, ``pause``, ``resume``,
        ``transfer``, ``end``; docs/control.md) and wait for the request's one result.

        ``args`` are the action's: ``client.control("call_a", "say", text="One moment",
        interrupt=True)``. Returns the ack (``request_id``, ``seq``) with the result (``ok``,
        ``error``). Raises :class:`~callstream.errors.ControlError` when the server refuses the
        request (its code says why) or no answer comes in time. The result is read from this
        client's subscription when it carries the call's ``control.result`` events, else over
        REST. A refused or failed action is not an exception: ``ok`` is False.
        """
        ws = self._ws
        if ws is None:
            raise ControlError("closed", "not connected: start the client, or wait for it to reconnect")
        ref, ack = self._controls.expect_ack()
        message = {"type": "control", "call_id": call_id, "action": action, "args": args, "ref": ref}
        try:
            await ws.send(orjson.dumps(message).decode())
            data = await asyncio.wait_for(ack, 10.0)
        except ConnectionClosed:
            raise ControlError("closed", "the connection dropped before the server answered") from None
        except TimeoutError:
            raise ControlError("timeout", "the server did not answer the control request in time") from None
        finally:
            ack.cancel()
        request_id, seq = str(data.get("request_id")), int(data.get("seq", 0))
        result = self._controls.expect_result(request_id)
        try:
            if self._follows_results(call_id):
                outcome = await asyncio.wait_for(result, result_timeout)
            else:
                outcome = await asyncio.wait_for(self._fetch_result(call_id, request_id, seq, result), result_timeout)
        except TimeoutError:
            raise ControlError("timeout", f"no control.result for {request_id} within {result_timeout:g} s") from None
        finally:
            result.cancel()
        error = outcome.get("error")
        return ControlOutcome(request_id, seq, outcome.get("ok") is True, error if isinstance(error, str) else None)

    def _follows_results(self, call_id: str) -> bool:
        """Whether a subscription of this client delivers the call's `control.result` events."""
        for sub in (self._subs.get(call_id), self._subs.get(WILDCARD)):
            if sub is not None and (not sub.types or "control.result" in sub.types):
                return True
        return False

    async def _fetch_result(
        self, call_id: str, request_id: str, since: int, result: asyncio.Future[dict[str, Any]]
    ) -> dict[str, Any]:
        """A call this client does not follow: its events after the request, over REST, until
        the result is among them (the server answers every request within its timeout)."""
        while not result.done():
            body = await self._fetch_page(call_id, since)
            for event in (body or {}).get("events") or []:
                if not isinstance(event, dict):
                    continue
                if isinstance(event.get("seq"), int):
                    since = max(since, event["seq"])
                data = event.get("data")
                if event.get("type") == "control.result" and isinstance(data, dict) and data.get("request_id") == request_id:
                    return data
            await asyncio.sleep(0.25)
        return result.result()

    # -- connection loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed and self._failure is None:
                started = time.monotonic()
                await self._attempt()
                if self._failure is not None:
                    break
                self._first_attempt.set()
                if time.monotonic() - started >= STABLE_AFTER_S:
                    self._attempts = 0
                await asyncio.sleep(self._next_delay())
        except Exception as exc:  # a bug here must not leave the iterator hanging forever
            logger.exception("client loop failed")
            self._fail(ClientError("internal", f"client loop failed: {exc!r}"))
        if self._failure is not None:
            self._offer_nowait(self._failure)
        self._first_attempt.set()

    async def _attempt(self) -> None:
        """One connection, from credential to close; decides how the next one must differ."""
        try:
            token = await self._credential()
        except Exception as exc:
            if isinstance(exc, AuthError):
                self._fail(exc)
            else:
                logger.warning("token_provider failed (%r); retrying", exc)
            return
        try:
            await self._connect_and_serve(token)
        except InvalidStatus as exc:
            self._on_refused(exc.response.status_code, exc.response.body)
        except DROPPED as exc:
            self._down_reason = failure_reason(self._url, exc)
            logger.info("events connection lost (%s); reconnecting", exc)

    async def _credential(self) -> str:
        """The token to connect with, fresh from the provider when it is missing or stale."""
        token = self._token
        exp = token_expiry(token) if token else None
        left = exp - time.time() if exp is not None else None
        if self._provider is None:
            if token is None or (left is not None and left <= 0) or self._force_refresh:
                raise AuthError("token_expired", "the token expired and there is no token_provider")
            return token
        if token is not None and not self._force_refresh and (left is None or left >= 5):
            return token
        self._token = await self._provider()
        self._force_refresh = False
        return self._token

    async def _connect_and_serve(self, token: str) -> None:
        if self._transport == "sse":
            await self._stream_and_serve(token)
            return
        async with self._connection(
            token, open_timeout=self._open_timeout, ping_interval=self._ping_interval, max_size=self._max_size
        ) as ws:
            refresher = asyncio.create_task(self._refresh_forever(ws))
            try:
                await self._resubscribe_all()
                async for raw in ws:
                    await self._on_message(raw)
            except ConnectionClosed:
                pass  # abnormal closes raise, normal ones end the loop: both resume below
            finally:
                refresher.cancel()
                self._controls.fail_all(ControlError("closed", "the connection dropped before the server answered"))
        self._on_closed(ws.close_code, ws.close_reason)

    def _on_closed(self, code: int | None, reason: str | None) -> None:
        """A server close: 4001 means get a fresh credential first; everything else resumes."""
        logger.info("events socket closed by the server (%s %s); reconnecting", code, reason or "")
        self._down_reason = f"the server closed the socket ({code}{': ' + reason if reason else ''})"
        if code != CloseCode.AUTH:
            return
        self._auth_failures += 1
        if self._provider is None:
            why = "token_expired" if self._force_refresh else "unauthorized"
            self._fail(AuthError(why, f"the server closed the socket with 4001: {reason}"))
        elif self._auth_failures > 2:
            self._fail(AuthError("token_expired", "fresh tokens from token_provider were refused"))
        else:
            self._force_refresh = True

    def _on_refused(self, status: int, body: bytes | bytearray | None) -> None:
        """An HTTP answer instead of an upgrade: 401/403 end it unless a fresh token may help."""
        reason = refusal_reason(status, body)
        self._down_reason = f"the server refused the connection: HTTP {status} ({reason})"
        if status not in AUTH_STATUSES:
            logger.warning("events handshake refused with HTTP %d (%s); retrying", status, reason)
            return
        self._auth_failures += 1
        if status == 401 and self._provider is not None and self._auth_failures <= 2:
            self._force_refresh = True
            return
        self._fail(AuthError("unauthorized" if status == 401 else "forbidden", reason))

    async def _stream_and_serve(self, token: str) -> None:
        """One SSE stream of the current subscriptions, until it ends or they change."""
        self._restream.clear()
        try:
            if self._subs:
                await self._stream(token)
            else:
                await self._await_subscriptions(token)
        except httpx.HTTPError as exc:
            self._down_reason = failure_reason(self._url, exc.__cause__ or exc)
            logger.info("event stream could not open (%r); reconnecting", exc)

    async def _await_subscriptions(self, token: str) -> None:
        """A stream needs a call: check the credential (so a refused one fails `start`), then wait
        for a subscription."""
        assert self._http is not None
        if not self._first_attempt.is_set():
            probe = await self._http.get("/v1/calls", params={"limit": 1}, headers=bearer(token))
            if probe.status_code == 401:
                self._on_refused(probe.status_code, probe.content)
                return
        self._first_attempt.set()
        await self._restream.wait()
        self._reconnect_now = True

    async def _stream(self, token: str) -> None:
        """Read one stream until the server ends it, it breaks, or the subscriptions change."""
        assert self._http is not None
        plan = self._stream_plan()
        timeout = httpx.Timeout(self._open_timeout, read=READ_TIMEOUT_S)
        async with self._http.stream(
            "GET", "/v1/events/stream", params=plan.params(), headers={**bearer(token), **plan.headers()}, timeout=timeout
        ) as response:
            if response.status_code != 200:
                self._on_refused(response.status_code, await response.aread())
                return
            self._streaming = True
            self._down_reason = None
            self._connections += 1
            self._first_attempt.set()
            reader = asyncio.create_task(read_stream(response, self._on_message))
            changed = asyncio.create_task(self._restream.wait())
            try:
                await asyncio.wait({reader, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._streaming = False
                changed.cancel()
                reader.cancel()
                await asyncio.wait({reader})
            if reader.cancelled():  # the subscriptions changed
                self._reconnect_now = True
            elif (exc := reader.exception()) is not None:
                if not isinstance(exc, httpx.HTTPError):
                    raise exc
                logger.info("event stream lost (%r); reconnecting", exc)
            else:
                self._on_closed(*reader.result())

    def _stream_plan(self) -> StreamPlan:
        """The stream for the subscriptions, resuming each call where this client got to."""
        subs = {c: (s.types, s.pending_since) for c, s in self._subs.items()}
        positions: dict[str, int | None] = {
            c: t.last_seq for c, t in self._calls.items() if not t.ended and c not in self._rebase
        }
        for call_id in self._rebase:
            positions[call_id] = None
        return StreamPlan(subs, positions)

    def _fail(self, error: ClientError) -> None:
        self._failure = error
        self._first_attempt.set()

    def _next_delay(self) -> float:
        """Capped exponential backoff with full jitter: subscribers must not return in step.
        No wait after an SSE stream was replaced for new subscriptions (nothing went wrong)."""
        if self._reconnect_now:
            self._reconnect_now = False
            return 0.0
        return random.uniform(0, self._backoff())

    # -- token refresh ---------------------------------------------------------------------------

    async def _refresh_forever(self, ws: ClientConnection) -> None:
        """Send ``{"type": "auth"}`` with a fresh JWT before the current one expires."""
        if self._provider is None or self._refresh_margin is None:
            return
        while True:
            exp = token_expiry(self._token or "")
            if exp is None:
                return
            remaining = exp - time.time()
            await asyncio.sleep(max(0.5, remaining - min(self._refresh_margin, max(remaining, 0) / 4)))
            try:
                token = await self._provider()
            except Exception as exc:
                logger.warning("token_provider failed (%r); retrying in 5 s", exc)
                await asyncio.sleep(5)
                continue
            self._token = token
            with contextlib.suppress(ConnectionClosed):
                await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())

    # -- subscriptions on the wire ---------------------------------------------------------------

    def _resume(self, call_id: str) -> int | None:
        track = self._calls.get(call_id)
        return track.last_seq if track else None

    async def _resubscribe_all(self) -> None:
        """Explicit calls first (gapless), then catch-ups, then ``*`` (mirrors callstream.js)."""
        for call_id, sub in list(self._subs.items()):
            if call_id != WILDCARD:
                since = sub.pending_since if sub.pending_since is not None else self._resume(call_id)
                await self._send_subscribe(call_id, sub, since)
        if WILDCARD in self._subs:
            for call_id, track in self._calls.items():
                if not track.ended and call_id not in self._subs:
                    self._catch_ups.setdefault(call_id, track.last_seq)
        for call_id, since in list(self._catch_ups.items()):
            await self._send_catch_up(call_id, since)
        if (all_calls := self._subs.get(WILDCARD)) is not None:
            await self._send_subscribe(WILDCARD, all_calls, None)

    async def _send_subscribe(self, call_id: str, sub: _Subscription, since: int | None) -> None:
        message: dict[str, Any] = {"type": "subscribe", "call_id": call_id}
        if since is not None and call_id != WILDCARD:
            message["since"] = since
            # Kept until `subscribed`: a drop mid-replay asks again from here (dups are dropped).
            sub.pending_since = sub.pending_since if sub.pending_since is not None else since
        if sub.types:
            message["types"] = sub.types
        if sub.where is not None:
            message["where"] = {"metadata": sub.where}
        await self._send(message)

    async def _send_catch_up(self, call_id: str, since: int) -> None:
        message: dict[str, Any] = {"type": "subscribe", "call_id": call_id, "since": since}
        all_calls = self._subs.get(WILDCARD)
        if all_calls is not None and all_calls.types:
            message["types"] = all_calls.types
        await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            # WebSocket: sent on the next connection by _resubscribe_all; SSE: a new stream
            # stands for the subscriptions as they are now.
            self._restream.set()
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(orjson.dumps(message).decode())

    # -- messages from the server ----------------------------------------------------------------

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("ignoring a non-JSON frame from the server")
            return
        if not isinstance(message, dict) or message.get("type") == "pong":
            return
        self._auth_failures = 0
        if message.get("ref") is not None and self._controls.on_message(message):
            return
        event = parse_message(message)
        if event.seq is not None and event.call_id:
            await self._on_call_event(event)
        elif isinstance(event, Subscribed):
            await self._on_subscribed(event)
        elif isinstance(event, Unsubscribed):
            if event.call_id in self._internal_unsubs:
                self._internal_unsubs.discard(event.call_id)
            else:
                await self._offer(event)
        elif isinstance(event, ErrorEvent):
            await self._on_error(event)
        else:
            await self._offer(event)

    async def _on_call_event(self, event: Event) -> None:
        assert event.seq is not None
        track = self._calls.setdefault(event.call_id, _Track())
        if not track.accept(event.seq):
            self._duplicates += 1
            return
        if isinstance(event, ControlResult):
            self._controls.on_result(event.data)
        if isinstance(event, CallEnded):
            track.ended = True
            track.floor, track.seen = track.last_seq, set()  # nothing follows: free the window
        await self._offer(event)

    async def _on_subscribed(self, event: Subscribed) -> None:
        call_id = event.call_id
        if call_id == WILDCARD:
            await self._offer(event)
            return
        sub = self._subs.get(call_id)
        if sub is not None:
            sub.pending_since = None
        track = self._calls.setdefault(call_id, _Track())
        if call_id in self._rebase:
            # The server lost history we had seen: its seqs are the truth from here on.
            self._rebase.discard(call_id)
            self._calls[call_id] = track = _Track(last_seq=event.last_seq, floor=event.last_seq)
        # Everything up to data.seq has been sent (or filtered by types): resume from there.
        track.last_seq = max(track.last_seq, event.last_seq)
        track.ended = track.ended or event.status == "ended"
        if call_id in self._catch_ups:
            del self._catch_ups[call_id]
            if sub is None:
                self._internal_unsubs.add(call_id)
                await self._send({"type": "unsubscribe", "call_id": call_id})
                return
        if sub is not None:
            await self._offer(event)

    async def _on_error(self, event: ErrorEvent) -> None:
        call_id = event.call_id
        if event.code == "history_unavailable" and call_id:
            await self._offer(event)
            await self._recover_history(call_id)
            return
        if event.code == "forbidden" and call_id:
            self._subs.pop(call_id, None)  # never resubscribed: it would only be refused again
            self._catch_ups.pop(call_id, None)
        elif event.code == "token_expired":
            self._force_refresh = True  # the server closes with 4001 next
        await self._offer(event)

    async def _recover_history(self, call_id: str) -> None:
        """``since`` could not be served from the replay log: fetch over REST, then go live.

        The REST answer holds every stored event but partials, a page at a time: each page is
        handed on as it arrives, and the next is asked from its ``next_since``. After the last
        the call is resubscribed from the last fetched seq, so the replay log covers the rest
        without a gap. If REST has nothing after ``since`` either, the server lost history this
        client had seen (a store restored from a backup): the call is resubscribed live and its
        seqs are taken afresh.
        """
        sub = self._subs.get(call_id)
        since = sub.pending_since if sub and sub.pending_since is not None else self._catch_ups.get(call_id)
        since = since if since is not None else self.last_seq(call_id)
        resume: int | None = None
        async for page in self._fetch_pages(call_id, since):
            for message in page:
                await self._on_call_event(parse_message(message))
            self._fetched += len(page)
            resume = max(int(m["seq"]) for m in page)
        if resume is None:
            self._rebase.add(call_id)
        if sub is not None:
            sub.pending_since = None
            await self._send_subscribe(call_id, sub, resume)
        elif call_id in self._catch_ups:
            if resume is None:
                del self._catch_ups[call_id]  # `*` carries it live from here
            else:
                self._catch_ups[call_id] = resume
                await self._send_catch_up(call_id, resume)

    async def _fetch_pages(self, call_id: str, since: int) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The call's stored events after ``since``, page by page, following ``next_since`` until
        the server says there is no more (or answers something unusable: what came so far stands)."""
        while True:
            body = await self._fetch_page(call_id, since)
            if body is None:
                return
            events = body.get("events")
            page = [e for e in events or [] if isinstance(e, dict) and isinstance(e.get("seq"), int)]
            if page:
                yield page
            next_since = body.get("next_since")
            if not page or not isinstance(next_since, int) or next_since <= since:
                return
            since = next_since

    async def _fetch_page(self, call_id: str, since: int) -> dict[str, Any] | None:
        assert self._http is not None
        path = f"/v1/calls/{urllib.parse.quote(call_id, safe='')}/events"
        try:
            response = await self._http.get(path, params={"since": since}, headers=bearer(self._token or ""))
        except httpx.HTTPError as exc:
            logger.warning("REST fallback for %s failed: %r", call_id, exc)
            return None
        if response.status_code != 200:
            logger.warning("REST fallback for %s answered HTTP %d", call_id, response.status_code)
            return None
        try:
            body = response.json()
        except ValueError:
            logger.warning("REST fallback for %s answered with something other than JSON", call_id)
            return None
        return body if isinstance(body, dict) else None

    async def _offer(self, item: Event | ClientError) -> None:
        """Queue for events(); waits when the program is behind (the server sees backpressure)."""
        await self._queue.put(item)

    def _offer_nowait(self, item: ClientError) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(item)


# -- the sync wrapper ----------------------------------------------------------------------------


def _blocking(
    method: Callable[Concatenate[Client, P], Awaitable[T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    """The blocking form of a :class:`Client` method, for :class:`SyncClient`: the same
    signature, run on the client's loop thread."""

    @functools.wraps(method)
    def call(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self._call(method(self._running(), *args, **kwargs))
        return result

    return call


class SyncClient:
    """:class:`Client` for scripts without asyncio: the event loop runs in a background thread.

    ::

        with SyncClient("http://127.0.0.1:8080", key) as client:
            for event in client.events("call_a"):
                print(event.type, event.data)

    Every method is safe to call from any thread; Ctrl-C interrupts a waiting ``events()``.
    """

    def __init__(self, url: str, credential: str | None = None, **options: Any) -> None:
        self._url = url
        self._credential = credential
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: Any = None
        self._client: Client | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the loop thread and connect; raises AuthError like ``Client.start``."""
        import threading

        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="callstream-client", daemon=True)
        self._thread.start()
        self._loop = loop

        async def make() -> Client:
            client = Client(self._url, self._credential, **self._options)
            await client.start()
            return client

        try:
            self._client = self._call(make())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._loop is None:
            return
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._call(self._client.close())
        self._stop_loop()

    subscribe = _blocking(Client.subscribe)
    unsubscribe = _blocking(Client.unsubscribe)

    def last_seq(self, call_id: str) -> int:
        return self._running().last_seq(call_id)

    def control(self, call_id: str, action: str, *, result_timeout: float = 30.0, **args: Any) -> ControlOutcome:
        """Like :meth:`Client.control`."""
        outcome: ControlOutcome = self._call(self._running().control(call_id, action, result_timeout=result_timeout, **args))
        return outcome

    def statistics(self) -> ClientStats:
        return self._running().statistics()

    def events(self, *call_ids: str, types: Iterable[str] | None = None) -> Iterator[Event]:
        """Like :meth:`Client.events`, as a plain iterator."""
        iterator = self._running().events(*call_ids, types=types)
        try:
            while True:
                try:
                    yield self._call(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._loop is not None and self._loop.is_running():
                with contextlib.suppress(Exception):
                    self._call(iterator.aclose(), timeout=5)

    def _running(self) -> Client:
        if self._client is None:
            msg = "start the client first: `with SyncClient(...) as client:`"
            raise RuntimeError(msg)
        return self._client

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()


def iter_events(
    url: str, credential: str, call_ids: Iterable[str], *, types: Iterable[str] | None = None, **options: Any
) -> Iterator[Event]:
    """Yield the events of ``call_ids`` (``["*"]`` for all) forever, from plain synchronous code.

    A generator around :class:`SyncClient`: breaking out of the loop closes the connection.
    """
    with SyncClient(url, credential, **options) as client:
        yield from client.events(*call_ids, types=types)
