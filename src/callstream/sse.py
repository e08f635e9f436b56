"""Server-Sent Events without I/O: the stream's query, its resume cursor, its message bytes, and
the client's decoder.

`GET /v1/events/stream` (docs/protocol.md, Server-Sent Events) carries the same JSON as the events
socket, one SSE message per server message:

    id: call_a=12,call_b=7
    event: transcript.final
    data: {"type":"transcript.final","call_id":"call_a","seq":12,...}

The `id` is a cursor: every call of the stream with the last seq this stream sent of it. The
browser's EventSource sends the last one back (`Last-Event-ID`) when it reconnects, and the
server resumes each call from its seq, as `since` does on the socket: no gap, no duplicate, on
any node and after a restart, since the seqs are the calls' own. The server keeps nothing per
stream. Clients treat the cursor as opaque; the server checks it on the way back like any
client input (`parse_cursor`).

A stream of `*` names the calls it has delivered and not seen end; the cursor drops a call once
its `call.ended` went out (nothing can follow it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from callstream import protocol as p
from callstream.events import EVENT_TYPES, MAX_INT64, Event, is_valid_call_id

__all__ = [
    "KEEPALIVE",
    "CursorError",
    "Decoder",
    "StreamCursor",
    "StreamRequest",
    "alone_message",
    "comment",
    "message",
    "parse_cursor",
    "parse_stream_request",
    "retry_field",
]

KEEPALIVE: Final = b": keepalive\n\n"
MAX_CURSOR_CHARS: Final = 64 * 1024  # a cursor longer than the largest client message is refused
_ENTRY_SEP, _SEQ_SEP = ",", "="  # neither may appear in a call id


class CursorError(ValueError):
    """`Last-Event-ID` (or `last_event_id`) is not a cursor this stream can resume from."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What a stream subscribes to: explicit calls, or `*`, with an optional type filter;
    `since` maps each call to resume after its seq (from `since=` or the cursor)."""

    call_ids: tuple[str, ...]
    types: frozenset[str] | None
    since: Mapping[str, int]

    @property
    def wildcard(self) -> bool:
        return self.call_ids == (p.WILDCARD,)

    def subscriptions(self) -> list[p.Subscribe]:
        """The subscribe messages the stream stands for, in order: for `*`, each call the cursor
        names first (caught up with since, then followed to its end), then `*` itself."""
        if self.wildcard:
            named = [p.Subscribe(c, s, self.types) for c, s in self.since.items()]
            return [*named, p.Subscribe(p.WILDCARD, None, self.types)]
        return [p.Subscribe(c, self.since.get(c), self.types) for c in self.call_ids]


def parse_stream_request(
    call_ids: list[str], types: list[str], since: list[str], cursor: str | None, max_calls: int
) -> StreamRequest:
    """The stream's query parameters (each as given, repeatable) and its `Last-Event-ID`.

    Raises `ProtocolError` (invalid_message) for a bad query and `CursorError` for a bad cursor.
    `types` may be repeated or comma-separated. A cursor wins over `since=`: EventSource sends
    the original URL again, with the cursor of where it got to.
    """
    calls = _call_ids(call_ids, max_calls)
    wanted = _types(types)
    positions = _since(since, calls)
    if cursor is not None:
        positions = parse_cursor(cursor, max_calls)
        if calls != (p.WILDCARD,) and (stray := sorted(set(positions) - set(calls))):
            raise CursorError(f"the cursor names calls this stream does not subscribe to: {stray[:3]}")
    return StreamRequest(calls, wanted, positions)


def _call_ids(call_ids: list[str], max_calls: int) -> tuple[str, ...]:
    if not call_ids:
        raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, "give call_id=C (repeatable) or call_id=*")
    if p.WILDCARD in call_ids:
        if len(call_ids) > 1:
            raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, "call_id=* cannot be combined with other calls")
        return (p.WILDCARD,)
    unique = tuple(dict.fromkeys(call_ids))
    if bad := [c for c in unique if not is_valid_call_id(c)]:
        raise p.ProtocolError(
            p.ErrorCode.INVALID_MESSAGE, f"call_id must be 1-128 characters of A-Z a-z 0-9 _ . : - (got {bad[0][:40]!r})"
        )
    if len(unique) > max_calls:
        raise p.ProtocolError(p.ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {max_calls} calls per stream")
    return unique


def _types(types: list[str]) -> frozenset[str] | None:
    names = [t.strip() for given in types for t in given.split(",") if t.strip()]
    if not types:
        return None
    if not names:
        raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, "types must name at least one event type")
    if unknown := sorted(set(names) - EVENT_TYPES):
        raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, f"unknown event types in types: {unknown[:5]}")
    return frozenset(names)


def _since(since: list[str], calls: tuple[str, ...]) -> dict[str, int]:
    if not since:
        return {}
    if len(since) > 1 or len(calls) != 1 or calls == (p.WILDCARD,):
        raise p.ProtocolError(
            p.ErrorCode.INVALID_MESSAGE, "since is for a stream of one call (resume several with Last-Event-ID)"
        )
    return {calls[0]: p.since_in_query(since[0])}


def parse_cursor(text: str, max_calls: int) -> dict[str, int]:
    """A cursor's calls and seqs; `CursorError` for anything this server did not write."""
    if len(text) > MAX_CURSOR_CHARS:
        raise CursorError(f"the cursor is longer than {MAX_CURSOR_CHARS} characters")
    if not text:
        return {}
    entries = text.split(_ENTRY_SEP)
    if len(entries) > max_calls:
        raise CursorError(f"the cursor names more than {max_calls} calls")
    positions: dict[str, int] = {}
    for entry in entries:
        call_id, sep, seq = entry.partition(_SEQ_SEP)
        if not sep or not is_valid_call_id(call_id) or not seq.isascii() or not seq.isdigit():
            raise CursorError("not a cursor of this server: expected call_id=seq entries joined by ','")
        if len(seq) > 19 or int(seq) > MAX_INT64 or call_id in positions:
            raise CursorError("not a cursor of this server: a seq out of range or a call named twice")
        positions[call_id] = int(seq)
    return positions


class StreamCursor:
    """The cursor a stream writes into each message's `id`: where it got to in each call.

    `advance` runs once per event sent, so the text is kept as one ready entry per call and
    joined (C-level) when asked for.
    """

    __slots__ = ("_entries", "_seqs")

    def __init__(self, positions: Mapping[str, int] = {}) -> None:
        self._seqs: dict[str, int] = {}
        self._entries: dict[str, str] = {}
        for call_id, seq in positions.items():
            self.advance(call_id, seq)

    def advance(self, call_id: str, seq: int) -> None:
        """`call_id` was sent up to `seq` (never moves back)."""
        if seq >= self._seqs.get(call_id, -1):
            self._seqs[call_id] = seq
            self._entries[call_id] = f"{call_id}{_SEQ_SEP}{seq}"

    def drop(self, call_id: str) -> None:
        """The call is complete on this stream: a resume has nothing of it to catch up."""
        self._seqs.pop(call_id, None)
        self._entries.pop(call_id, None)

    def seq(self, call_id: str) -> int | None:
        return self._seqs.get(call_id)

    def __len__(self) -> int:
        return len(self._seqs)

    def text(self) -> str:
        return _ENTRY_SEP.join(self._entries.values())


def alone_message(event: Event) -> bytes:
    """The event's message on a stream of its call alone, whose cursor is `call=seq`: the same
    for every such stream, so it is built once (kept on the event)."""
    event.sse_alone = message = f"id: {event.call_id}{_SEQ_SEP}{event.seq}".encode() + event.sse
    return message


def message(event: str, data: bytes, cursor: str | None) -> bytes:
    """One SSE message. `data` is single-line JSON (orjson never writes a newline); no `id` line
    when `cursor` is None (EventSource then keeps the last id it had)."""
    head = b"" if cursor is None else b"id: " + cursor.encode() + b"\n"
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, it keeps proxies from timing the stream out."""
    return b": " + " ".join(text.splitlines()).encode() + b"\n\n"


def retry_field(ms: int) -> bytes:
    """How long EventSource waits before it reconnects."""
    return f"retry: {ms}\n\n".encode()


class Decoder:
    """The client's side: SSE text in, one line at a time; complete messages out.

    `feed` returns `(event, data, id)` when a blank line ends a message with data, else None.
    Comments and `retry` are skipped (a client of this server reconnects on its own terms).
    """

    __slots__ = ("_data", "_event", "_id")

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        if not line:
            done = (self._event, "\n".join(self._data), self._id) if self._data else None
            self._event, self._data, self._id = "message", [], None
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None
