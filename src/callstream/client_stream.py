"""`Client(transport="sse")`: the client's subscriptions over ``GET /v1/events/stream``.

For networks where a WebSocket cannot open (proxies that strip ``Upgrade``, some serverless
hosts). A stream's subscriptions are in its URL, so a change of them (``subscribe``,
``unsubscribe``) opens a new stream at once, and every stream resumes from what the client
has already yielded: the ``Last-Event-ID`` it sends is built from the same per-call seqs the
WebSocket resumes from with ``since``. One stream carries one type filter: the union of the
subscriptions' (a subscription without ``types`` wants every type). Live control needs the
WebSocket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import orjson

from callstream.protocol import CloseCode
from callstream.sse import Decoder

if TYPE_CHECKING:
    import httpx

__all__ = ["READ_TIMEOUT_S", "StreamPlan", "read_stream"]

PATH: Final = "/v1/events/stream"
READ_TIMEOUT_S: Final = 45.0  # three keepalives missed: the stream is dead, reconnect
WILDCARD: Final = "*"
_ENDS_AUTH: Final = frozenset({"unauthorized", "token_expired"})


class StreamPlan:
    """The query and the cursor of the stream that stands for a set of subscriptions.

    `subs` maps each call id (or ``*``) to its types (None: all) and its pending ``since``;
    `positions` is where the client got to in each call it has seen (None: it has nothing to
    resume from). With ``*`` the cursor names every call the client saw and has not seen end.
    """

    def __init__(
        self,
        subs: dict[str, tuple[list[str] | None, int | None]],
        positions: dict[str, int | None],
    ) -> None:
        self.call_ids = [WILDCARD] if WILDCARD in subs else list(subs)
        self.types = _union([types for types, _ in subs.values()])
        named = positions if WILDCARD in subs else {c: positions.get(c) for c in subs}
        cursor: dict[str, int] = {c: seq for c, seq in named.items() if seq is not None}
        for call_id, (_, since) in subs.items():
            if since is not None and call_id != WILDCARD:
                cursor[call_id] = since
        self.cursor = ",".join(f"{c}={s}" for c, s in cursor.items())

    def params(self) -> tuple[tuple[str, str], ...]:
        types = (("types", ",".join(self.types)),) if self.types else ()
        return (*(("call_id", c) for c in self.call_ids), *types)

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        return headers


def _union(types: list[list[str] | None]) -> list[str] | None:
    if not types or any(t is None for t in types):
        return None
    return sorted({name for names in types if names for name in names})


async def read_stream(response: httpx.Response, on_message: Callable[[str], Awaitable[None]]) -> tuple[int | None, str]:
    """Hand each message's JSON to `on_message` until the stream ends; then the close code the
    socket would have had (4001 when the stream ended with `unauthorized` or `token_expired`) and
    the last error's message."""
    decoder = Decoder()
    code: int | None = None
    reason = ""
    async for line in response.aiter_lines():
        message = decoder.feed(line)
        if message is None:
            continue
        event, data, _ = message
        if event == "error":
            code, reason = _close_of(data)
        await on_message(data)
    return code, reason


def _close_of(data: str) -> tuple[int | None, str]:
    try:
        body = orjson.loads(data)
        error = body.get("data") or {}
        kind, message = str(error.get("code")), str(error.get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return None, ""
    return (CloseCode.AUTH if kind in _ENDS_AUTH else None), message
