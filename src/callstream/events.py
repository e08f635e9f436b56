"""The event model: what a producer may publish, and the sequenced event every node passes around.

An event is validated once at ingest and encoded to its wire frame once; every subscriber of every
node then receives the same bytes. Nothing downstream re-encodes or re-validates.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from callstream.metadata import MetadataError, check_patch

if TYPE_CHECKING:
    from callstream.turns import Marks

MAX_INT64: Final = 2**63 - 1
MIN_INT64: Final = -(2**63)
# How deep `data` may nest (objects and arrays): far beyond any function's arguments, and far
# below what the JSON encoder refuses (255), so an accepted event can always be encoded.
MAX_DEPTH: Final = 32
CALL_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")

PUBLISHABLE_TYPES: Final = frozenset(
    {
        "transcript.partial",
        "transcript.final",
        "agent.state",
        "function.call",
        "function.result",
        "call.ended",
        "control.result",
        "metrics",
        "call.started",
    }
)
# Every type a call's history holds: what producers publish, the audit event of a control
# request (docs/protocol.md, Live control) and the metadata a `PATCH /v1/calls/{id}` merged
# (docs/protocol.md, Call metadata), which only the server appends.
EVENT_TYPES: Final = PUBLISHABLE_TYPES | {"control.requested", "call.metadata"}
SPEAKERS: Final = frozenset({"user", "agent"})
AGENT_STATES: Final = frozenset({"listening", "thinking", "speaking"})
END_STATUSES: Final = frozenset({"completed", "failed", "no_answer", "busy", "canceled", "transferred"})

PARTIAL: Final = "transcript.partial"
FINAL: Final = "transcript.final"
AGENT_STATE: Final = "agent.state"
ENDED: Final = "call.ended"
METRICS: Final = "metrics"
STARTED: Final = "call.started"
METADATA: Final = "call.metadata"  # appended by the server for a PATCH of the call's metadata
# What the server measures and writes into `agent.state` (turns.py): never a producer's to send.
MEASURED_FIELDS: Final = ("latency_ms", "interrupted")
MAX_STAGE_CHARS: Final = 64


class EventInvalidError(ValueError):
    """A producer's event breaks the contract; the message says which field and why."""


def is_valid_call_id(value: object) -> bool:
    return isinstance(value, str) and CALL_ID_PATTERN.fullmatch(value) is not None


def event_id_of(obj: dict[str, Any]) -> str | None:
    """The producer's `id` of an event (idempotent publish), None when it has none.

    Same alphabet and length as a call id, so it goes into a frame, a Redis hash and a log line
    without escaping."""
    value = obj.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or CALL_ID_PATTERN.fullmatch(value) is None:
        raise EventInvalidError("id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return value


def _require_str(data: dict[str, Any], name: str, allowed: frozenset[str] | None = None) -> None:
    value = data.get(name)
    if not isinstance(value, str):
        raise EventInvalidError(f"data.{name} must be a string")
    if allowed is not None and value not in allowed:
        raise EventInvalidError(f"data.{name} must be one of {', '.join(sorted(allowed))}")


def _optional_str(data: dict[str, Any], name: str) -> None:
    if name in data and not isinstance(data[name], str):
        raise EventInvalidError(f"data.{name} must be a string when given")


def _check_transcript(data: dict[str, Any], is_final: bool) -> None:
    _require_str(data, "speaker", SPEAKERS)
    _require_str(data, "text")
    _optional_str(data, "utterance_id")
    given = data.setdefault("is_final", is_final)
    if given is not is_final:
        raise EventInvalidError(f"data.is_final must be {str(is_final).lower()} for this type")


def _check_function(data: dict[str, Any], payload: str) -> None:
    _require_str(data, "name")
    _optional_str(data, "tool_call_id")
    if payload not in data:
        raise EventInvalidError(f"data.{payload} is required")


def _check_ended(data: dict[str, Any]) -> None:
    _require_str(data, "status", END_STATUSES)
    duration = data.get("duration_ms")
    # Bounded to what every store column holds: one oversized value must not fail a whole commit.
    if isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration <= MAX_INT64:
        raise EventInvalidError("data.duration_ms must be a non-negative 64-bit integer")
    _optional_str(data, "reason")


def _bad_value(value: object) -> str | None:
    """Why a scalar cannot be kept, or None: every number finite and 64-bit, no NUL in text."""
    if isinstance(value, str):
        return "text must not contain U+0000" if "\x00" in value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if MIN_INT64 <= value <= MAX_INT64 else "integers must fit in 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    return f"values must be JSON, not {type(value).__name__}"


def check_values(data: dict[str, Any], root: str = "data") -> None:
    """Refuse what the server could not keep or sum: non-finite numbers, integers past 64 bits,
    U+0000 in any text (PostgreSQL's text refuses it) and nesting deeper than `MAX_DEPTH`.

    Runs on every event at the boundary, so nothing downstream (the encoder, the store, the
    per-call sums) can fail on one producer's values. Iterative: depth costs no stack.
    """
    stack: list[tuple[Any, int, str]] = [(data, 1, root)]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise EventInvalidError(f"{path} nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            if any("\x00" in key for key in node):
                raise EventInvalidError(f"{path}: keys must not contain U+0000")
            items: Any = node.items()
        else:
            items = enumerate(node)
        for key, value in items:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, f"{path}.{key}"))
            elif (problem := _bad_value(value)) is not None:
                raise EventInvalidError(f"{path}.{key}: {problem}")


def _check_agent_state(data: dict[str, Any]) -> None:
    _require_str(data, "state", AGENT_STATES)
    for name in MEASURED_FIELDS:
        if name in data:
            raise EventInvalidError(f"data.{name} is measured by the server; a producer cannot set it")


def _check_metrics(data: dict[str, Any]) -> None:
    """A producer's own measurement of one stage of its pipeline (`stt`, `llm`, `tts`, …)."""
    stage = data.get("stage")
    if not isinstance(stage, str) or not 1 <= len(stage) <= MAX_STAGE_CHARS:
        raise EventInvalidError(f"data.stage must be a string of 1 to {MAX_STAGE_CHARS} characters")
    for name in ("ttfb_ms", "duration_ms"):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise EventInvalidError(f"data.{name} must be a number of milliseconds >= 0 when given")


def sentiment_score(data: dict[str, Any]) -> float | None:
    """`data.sentiment.score` when it is a number in [-1, 1], else None: the one rule for a score.

    Validation refuses a producer's `sentiment` that breaks it, and the store sums only scores
    that keep it, so a call's sum of scores stays finite."""
    sentiment = data.get("sentiment")
    score = sentiment.get("score") if isinstance(sentiment, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float) or not -1.0 <= score <= 1.0:
        return None
    return float(score)


def _check_sentiment(data: dict[str, Any]) -> None:
    """A producer's own `sentiment` must look like the server's (`sentiment_score`)."""
    if data.get("sentiment") is not None and sentiment_score(data) is None:
        raise EventInvalidError("data.sentiment.score must be a number in [-1, 1]")


def _check_metadata(data: dict[str, Any]) -> None:
    """`data.metadata`, on any event, is a patch of the call's metadata (`metadata.check_patch`)."""
    if "metadata" in data:
        try:
            check_patch(data["metadata"], "data.metadata")
        except MetadataError as exc:
            raise EventInvalidError(str(exc)) from None


def check_payload(event_type: str, data: dict[str, Any]) -> None:
    """Validate (and complete `is_final` on) one event's data; raises EventInvalidError."""
    check_values(data)
    _check_sentiment(data)
    _check_metadata(data)
    if event_type == STARTED:
        return  # `metadata` (checked above) and whatever else the producer passes along
    if event_type == PARTIAL:
        _check_transcript(data, is_final=False)
    elif event_type == FINAL:
        _check_transcript(data, is_final=True)
    elif event_type == AGENT_STATE:
        _check_agent_state(data)
    elif event_type == "function.call":
        _check_function(data, "args")
    elif event_type == "function.result":
        _check_function(data, "result")
    elif event_type == ENDED:
        _check_ended(data)
    elif event_type == METRICS:
        _check_metrics(data)
    elif event_type == "control.result":
        from callstream.control import check_result  # control's rules build on this module's

        check_result(data)
    else:
        raise EventInvalidError(
            f"type {event_type!r} cannot be published; one of {', '.join(sorted(PUBLISHABLE_TYPES))}"
        )


def supersede_key(call_id: str, event_type: str, data: dict[str, Any]) -> str | None:
    """The key under which a newer transcript replaces an older partial.

    A partial is superseded by a later partial or final of the same utterance (when the producer
    names utterances) or else of the same speaker. Only partials are ever dropped by key.
    """
    if event_type not in (PARTIAL, FINAL):
        return None
    utterance = data.get("utterance_id")
    if isinstance(utterance, str):
        return f"{call_id}\x00u\x00{utterance}"
    return f"{call_id}\x00s\x00{data.get('speaker')}"


@dataclass(slots=True)
class CallState:
    """Where a call stands: `pending` (no event yet), `live` or `ended`; `last_seq` 0 if none.

    The store answers it from its rows and the broker sequences from it."""

    status: str
    last_seq: int
    started_at: int | None = None
    metadata: dict[str, Any] | None = None  # the call's metadata (`metadata.merge`), None if none
    # The ids of its events the call still remembers (idempotent publish): id → seq.
    ids: dict[str, int] | None = None


@dataclass(slots=True)
class NewEvent:
    """A validated producer event, not sequenced yet; `id`: the producer's (idempotent publish)."""

    call_id: str
    type: str
    data: dict[str, Any]
    ref: Any = None
    id: str | None = None


@dataclass(slots=True)
class Event:
    """A sequenced event: its place in the call (`seq`), when it was accepted, and its wire frame.

    `repeat`: the producer's `id` was in the call already; `seq` is then the seq that event got
    the first time, and nothing else of it is meant to be used (it is neither stored nor sent)."""

    account: str
    call_id: str
    seq: int
    ts: int
    type: str
    data: dict[str, Any]
    frame: str = field(default="", repr=False)
    _wire: bytes | None = field(default=None, repr=False, compare=False)
    _sse: bytes | None = field(default=None, repr=False, compare=False)
    # Its SSE message on a stream of this call alone (`server.event_stream` builds it once): the
    # same bytes for every such stream, as `wire` is for every socket.
    sse_alone: bytes | None = field(default=None, repr=False, compare=False)
    # Its fan-out group's messages on such streams as one HTTP chunk, with the group's size and
    # last seq (`server.event_stream._alone_chunk`): built once for every stream of the call.
    sse_block: tuple[int, int, bytes] | None = field(default=None, repr=False, compare=False)
    # The supersede key, computed once here rather than once per subscriber on the fan-out path.
    key: str | None = field(default=None, repr=False, compare=False)
    # What the turn tracker measured at this event (turns.py), for its call's row; None if nothing.
    marks: Marks | None = field(default=None, repr=False, compare=False)
    id: str | None = None
    repeat: bool = field(default=False, repr=False, compare=False)
    # The call's metadata once this event is applied (`metadata.merge`), as the broker that
    # sequenced it knows it: what a `where` subscription judges the event by, and what the store
    # keeps of an event that changed it. None: the call has none (or the event was rebuilt from
    # its frame). Shared between the events of a call until it changes: never mutated.
    meta: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.frame and not self.repeat:
            self.frame = encode_event(self.type, self.call_id, self.seq, self.ts, self.data, self.id)
        if self.key is None:
            self.key = supersede_key(self.call_id, self.type, self.data)

    @property
    def wire(self) -> bytes:
        """The complete WebSocket frame, built once and written as is to every subscriber."""
        if self._wire is None:
            self._wire = text_frame(self.frame.encode())
        return self._wire

    @property
    def sse(self) -> bytes:
        """The event's Server-Sent Events message after its `id` line (which is each stream's
        own cursor): built once, like `wire`, for every stream."""
        if self._sse is None:
            self._sse = b"\nevent: " + self.type.encode() + b"\ndata: " + self.frame.encode() + b"\n\n"
        return self._sse

    @property
    def is_partial(self) -> bool:
        return self.type == PARTIAL


TEXT_OPCODE: Final = 0x81  # FIN + text
BINARY_OPCODE: Final = 0x82  # FIN + binary


def server_frame(payload: bytes, head: int = TEXT_OPCODE) -> bytes:
    """One unmasked, unfragmented frame (RFC 6455 §5.2) holding `payload`, as a server sends
    it: TEXT by default, BINARY with `head=BINARY_OPCODE`."""
    length = len(payload)
    if length < 126:
        return bytes((head, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", head, 126, length) + payload
    return struct.pack("!BBQ", head, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    """One TEXT frame: what the server sends of JSON."""
    return server_frame(payload)


def encode_event(
    event_type: str, call_id: str, seq: int, ts: int, data: dict[str, Any], event_id: str | None = None
) -> str:
    """The wire frame, as text: browsers receive text frames as strings, binary ones as Blobs.
    The producer's `id`, when it gave one, comes before `data` (where the Redis script puts it)."""
    if event_id is None:
        body: dict[str, Any] = {"type": event_type, "call_id": call_id, "seq": seq, "ts": ts, "data": data}
    else:
        body = {"type": event_type, "call_id": call_id, "seq": seq, "ts": ts, "id": event_id, "data": data}
    return orjson.dumps(body).decode()


def repeat_of(new: NewEvent, account: str, seq: int) -> Event:
    """What `Broker.publish` answers for an event whose id its call holds: the first seq."""
    return Event(account, new.call_id, seq, 0, new.type, new.data, id=new.id, repeat=True)
