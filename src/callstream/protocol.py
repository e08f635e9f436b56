"""Sans-I/O protocol: parse what clients and producers send, build what the server answers.

No sockets, no awaits. Every function either returns a typed message or raises `ProtocolError`
carrying a documented error code, so the socket layers only move bytes and tests can feed this
module any input without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

from callstream.control import ACTIONS, check_args, parse_actions
from callstream.events import (
    EVENT_TYPES,
    MAX_INT64,
    EventInvalidError,
    NewEvent,
    check_payload,
    event_id_of,
    is_valid_call_id,
)
from callstream.metadata import Metadata, MetadataError, check_where


class ErrorCode(StrEnum):
    """Error codes a client can receive (docs/protocol.md, Server → client)."""

    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    FORBIDDEN = "forbidden"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RATE_LIMITED = "rate_limited"
    MESSAGE_TOO_LARGE = "message_too_large"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code
    HISTORY_UNAVAILABLE = "history_unavailable"
    SLOW_CONSUMER = "slow_consumer"
    CALL_ENDED = "call_ended"
    QUOTA_EXCEEDED = "quota_exceeded"
    INTERNAL = "internal"
    UNAUTHORIZED = "unauthorized"
    CALL_NOT_LIVE = "call_not_live"
    NO_PRODUCER = "no_producer"
    UNSUPPORTED_ACTION = "unsupported_action"


ERROR_CODES: Final = frozenset(ErrorCode)


class CloseCode(IntEnum):
    """WebSocket close codes the server sends (docs/protocol.md, Server → client)."""

    AUTH = 4001
    POLICY = 4008
    TOO_LARGE = 1009
    GOING_AWAY = 1001
    TRY_AGAIN = 1013


# Events per batch (a /v1/ingest frame, a REST POST): on a socket each invalid one gets an error
# of its own, so a megabyte of `[0,0,…]` would make half a million answers and hold the event
# loop for seconds; one cap for both ways in, so a producer can move between them.
MAX_BATCH_EVENTS: Final = 1000

WILDCARD: Final = "*"
CLIENT_TYPES: Final = frozenset({"subscribe", "unsubscribe", "auth", "ping", "control", "listen", "unlisten"})


class ProtocolError(Exception):
    """A message the server refuses; `code` is one of ERROR_CODES, `index` the batch's offending event."""

    def __init__(
        self, code: str, message: str, call_id: str | None = None, ref: Any = None, index: int | None = None
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.call_id = call_id
        self.ref = ref
        self.index = index


@dataclass(frozen=True, slots=True)
class Subscribe:
    call_id: str
    since: int | None = None
    types: frozenset[str] | None = None
    where: Metadata | None = None  # `*` only: the metadata a call must hold (`metadata.matches`)


@dataclass(frozen=True, slots=True)
class _OneCall:
    """A message that names one call and nothing more."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(_OneCall):
    """Stop a subscription (a call's or `*`)."""


@dataclass(frozen=True, slots=True)
class Listen(_OneCall):
    """Hear a call's audio live (docs/protocol.md, Live audio); `listen` scope."""


@dataclass(frozen=True, slots=True)
class Unlisten(_OneCall):
    """Stop hearing a call's audio."""


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Control:
    """A supervisor's request on a call; `args` is checked later, after the checks that come
    first in the contract (scope, live call, producer, declared action)."""

    call_id: str
    action: str
    args: object
    ref: Any = None


ClientMessage = Subscribe | Unsubscribe | Auth | Ping | Control | Listen | Unlisten


def decode_json(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"not valid JSON: {exc.msg}") from None


def _call_id_of(obj: dict[str, Any], allow_wildcard: bool) -> str:
    call_id = obj.get("call_id")
    if allow_wildcard and call_id == WILDCARD:
        return WILDCARD
    if not is_valid_call_id(call_id):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return str(call_id)


def _types_of(obj: dict[str, Any], call_id: str) -> frozenset[str] | None:
    types = obj.get("types")
    if types is None:
        return None
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "types must be a non-empty list of event types", call_id)
    unknown = sorted(set(types) - EVENT_TYPES)
    if unknown:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown event types in types: {unknown}", call_id)
    return frozenset(types)


def _since_of(obj: dict[str, Any], call_id: str) -> int | None:
    if "since" not in obj or obj["since"] is None:
        return None
    since = obj["since"]
    if call_id == WILDCARD:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "since is not allowed with call_id '*'", call_id)
    return since_of(since, call_id)


def since_of(value: object, call_id: str | None = None) -> int:
    """A `since`: a seq, 0 to 2^63-1, the one rule (and message) of the socket's `subscribe`, the
    event stream and `GET /v1/calls/{id}/events`. ProtocolError `invalid_message` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT64:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"since must be an integer from 0 to {MAX_INT64}", call_id)
    return value


def since_in_query(text: str) -> int:
    """`since_of` for a query string's value: its digits, nothing else (no sign, no spaces)."""
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(MAX_INT64))
    return since_of(int(text) if digits else None)


def _where_of(obj: dict[str, Any], call_id: str) -> Metadata | None:
    if obj.get("where") is None:
        return None
    if call_id != WILDCARD:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "where is only allowed with call_id '*'", call_id)
    try:
        return check_where(obj["where"])
    except MetadataError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), call_id) from None


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one frame from an /v1/events client."""
    obj = decode_json(raw)
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a message needs a string field 'type'")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}; one of {', '.join(sorted(CLIENT_TYPES))}"
        )
    if kind == "ping":
        return Ping()
    if kind == "auth":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "auth needs a non-empty string 'token'")
        return Auth(token)
    if kind == "unsubscribe":
        return Unsubscribe(_call_id_of(obj, allow_wildcard=True))
    if kind == "control":
        return _control_of(obj)
    if kind in ("listen", "unlisten"):
        if obj.get("call_id") == WILDCARD:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{kind} takes one call id, not '*'", WILDCARD)
        return (Listen if kind == "listen" else Unlisten)(_call_id_of(obj, allow_wildcard=False))
    call_id = _call_id_of(obj, allow_wildcard=True)
    return Subscribe(call_id, _since_of(obj, call_id), _types_of(obj, call_id), _where_of(obj, call_id))


def _control_of(obj: dict[str, Any]) -> Control:
    ref = obj.get("ref")
    if not _is_valid_ref(ref):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"ref must be a string of at most {MAX_REF_CHARS} characters or an integer")
    try:
        call_id = _call_id_of(obj, allow_wildcard=False)
    except ProtocolError as exc:
        exc.ref = ref
        raise
    action = obj.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"action must be one of {', '.join(ACTIONS)}", call_id, ref)
    return Control(call_id, action, obj.get("args"), ref)


def hello_controls(obj: dict[str, Any]) -> frozenset[str]:
    """The actions a producer's `{"type": "hello", "controls": [...]}` declares."""
    try:
        return parse_actions(obj.get("controls", []))
    except EventInvalidError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"hello: {exc}") from None


def control_args(message: Control) -> dict[str, Any]:
    """The request's arguments, checked for its action; ProtocolError (`invalid_message`) if not."""
    try:
        return check_args(message.action, message.args)
    except EventInvalidError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), message.call_id, message.ref) from None


MAX_REF_CHARS: Final = 256


def _is_valid_ref(ref: object) -> bool:
    """A `ref` is echoed in acks and errors: a short string or a 64-bit integer (or none)."""
    if ref is None or (isinstance(ref, str) and len(ref) <= MAX_REF_CHARS):
        return True
    return isinstance(ref, int) and not isinstance(ref, bool) and -(2**63) <= ref < 2**63


def parse_event(obj: Any, call_id: str | None = None) -> NewEvent:
    """Validate one producer event. `call_id` comes from the URL for REST, from the object for ingest."""
    ref = obj.get("ref") if isinstance(obj, dict) else None
    try:
        if not _is_valid_ref(ref):
            ref = None
            raise EventInvalidError(f"ref must be a string of at most {MAX_REF_CHARS} characters or an integer")
        if not isinstance(obj, dict):
            raise EventInvalidError("an event must be a JSON object")
        if call_id is None:
            if not is_valid_call_id(obj.get("call_id")):
                raise EventInvalidError("call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
            call_id = obj["call_id"]
        event_type = obj.get("type")
        if not isinstance(event_type, str):
            raise EventInvalidError("an event needs a string field 'type'")
        data = obj.get("data")
        if not isinstance(data, dict):
            raise EventInvalidError("an event needs an object field 'data'")
        event_id = event_id_of(obj)
        check_payload(event_type, data)
    except EventInvalidError as exc:
        cid = call_id if is_valid_call_id(call_id) else None
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), cid, ref) from None
    assert call_id is not None
    return NewEvent(call_id, event_type, data, ref, event_id)


def batch_items(obj: Any) -> list[Any]:
    """One event or an array of them, as a list; past `MAX_BATCH_EVENTS` none is applied.

    The refusal carries `index`: the first event past the cap."""
    items = obj if isinstance(obj, list) else [obj]
    if len(items) > MAX_BATCH_EVENTS:
        message = f"a batch carries at most {MAX_BATCH_EVENTS} events, not {len(items)}; none applied"
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, message, index=MAX_BATCH_EVENTS)
    return items


def parse_event_batch(obj: Any, call_id: str | None = None) -> list[NewEvent]:
    """One event or an array of them; all-or-nothing. The error names the failing index."""
    items = batch_items(obj)
    if not items:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "an empty batch publishes nothing")
    events: list[NewEvent] = []
    for index, item in enumerate(items):
        try:
            events.append(parse_event(item, call_id))
        except ProtocolError as exc:
            exc.message = f"event {index}: {exc.message}"
            exc.args = (exc.message,)
            exc.index = index
            raise
    return events


# ---- server → client messages -------------------------------------------------------------


def server_message(kind: str, call_id: str | None, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "call_id": call_id, "data": data})


def error_message(code: str, message: str, call_id: str | None = None, ref: Any = None) -> bytes:
    body: dict[str, Any] = {"type": "error", "call_id": call_id, "data": {"code": code, "message": message}}
    if call_id is not None:
        body["data"]["call_id"] = call_id
    if ref is not None:
        body["ref"] = ref
    return orjson.dumps(body)


def error_from(exc: ProtocolError) -> bytes:
    return error_message(exc.code, exc.message, exc.call_id, exc.ref)


def subscribed_message(call_id: str, status: str, seq: int, replayed: int) -> bytes:
    return server_message(
        "subscribed", call_id, {"call_id": call_id, "status": status, "seq": seq, "replayed": replayed}
    )


def unsubscribed_message(call_id: str) -> bytes:
    return server_message("unsubscribed", call_id, {"call_id": call_id})


PONG: Final = orjson.dumps({"type": "pong"})


def control_ack_message(ref: Any, call_id: str, request_id: str, seq: int) -> bytes:
    body = {"type": "control_ack", "ref": ref, "call_id": call_id, "data": {"request_id": request_id, "seq": seq}}
    return orjson.dumps(body)


def ack_message(ref: Any, seq: int) -> bytes:
    return orjson.dumps({"type": "ack", "ref": ref, "seq": seq})
