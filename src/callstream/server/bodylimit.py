"""The cap on every HTTP request body (docs/protocol.md, REST: "Bodies"), sent with Content-Length or chunked.

A body is read here, up to the cap, before the app runs, so one rule covers every route,
including those that never read their body. A declared `Content-Length` over the cap is refused
before any of it is read; a chunked body the moment it passes the cap. The 413 carries
`Connection: close`: uvicorn then closes the connection instead of reading and discarding the
rest, so a request never costs the node more than the cap, whatever the client sends.
"""

from __future__ import annotations

import contextlib

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callstream import protocol as p
from callstream.server.deps import ApiError, json_response


class BodyLimit:
    """Pure ASGI middleware: 413 `message_too_large` for an HTTP request body over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        declared = _declared_length(request.headers)
        if "transfer-encoding" not in request.headers and not declared:
            await self.app(scope, receive, send)  # HTTP/1.1: no body unless chunked or a length > 0
            return
        try:
            body = None if declared is not None and declared > self.max_bytes else await self._read(request)
        except ClientDisconnect:
            return  # the client left before its body ended: nobody to answer
        if body is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, request: Request) -> bytes | None:
        """The whole body, or None as soon as it passes the cap (the rest is never read)."""
        body = bytearray()
        async with contextlib.aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > self.max_bytes:
                    return None
        return bytes(body)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request bodies are limited to {self.max_bytes} bytes"
        response = json_response(ApiError(413, p.ErrorCode.MESSAGE_TOO_LARGE, message).body(), 413)
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as one message; then the server's own messages (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _declared_length(headers: Headers) -> int | None:
    """The declared Content-Length; None when absent or not a number (the HTTP parser refuses those)."""
    value = headers.get("content-length", "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value) if len(value) < 20 else 2**64  # int() refuses very long digit strings
