"""A plain reader of Server-Sent Events for the tests: HTTP by httpx, the text parsed here by the
rules of the SSE spec (fields, comments, blank-line dispatch), so nothing smooths over what the
server actually wrote."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None  # the `id` field of this message, None when it had none

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.data)
        return parsed


class SseStream:
    """An open stream: `next()` the next message (comments are kept in `comments`)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry: int | None = None
        self.last_id: str | None = None  # what EventSource would send back as Last-Event-ID
        self._lines = response.aiter_lines()
        self.ended = False

    async def next(self, timeout: float = 5.0) -> SseMessage:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseMessage:
        event, data, msg_id = "message", [], None
        async for line in self._lines:
            if line == "":
                if data:
                    message = SseMessage(event, "\n".join(data), msg_id)
                    if msg_id is not None:
                        self.last_id = msg_id
                    return message
                event, data, msg_id = "message", [], None
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                msg_id = value
            elif name == "retry":
                self.retry = int(value)
        self.ended = True
        raise EOFError("the stream ended")

    async def events(self, count: int, timeout: float = 5.0) -> list[SseMessage]:
        return [await self.next(timeout) for _ in range(count)]

    async def until(self, event: str, timeout: float = 5.0) -> list[SseMessage]:
        """Every message up to and including the first of type `event`."""
        seen: list[SseMessage] = []
        while True:
            seen.append(await self.next(timeout))
            if seen[-1].event == event:
                return seen

    async def rest(self, timeout: float = 10.0) -> list[SseMessage]:
        """Every message until the server ends the stream."""
        seen: list[SseMessage] = []
        with contextlib.suppress(EOFError):
            while True:
                seen.append(await self.next(timeout))
        return seen


@contextlib.asynccontextmanager
async def open_stream(
    base_url: str, params: list[tuple[str, str]], key: str | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[SseStream]:
    """GET /v1/events/stream; asserts nothing of the answer (`stream.response.status_code`)."""
    sent = {"Accept": "text/event-stream", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client,
        client.stream("GET", f"{base_url}/v1/events/stream", params=params, headers=sent) as response,
    ):
        yield SseStream(response)
