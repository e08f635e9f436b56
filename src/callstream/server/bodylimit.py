"""The cap on every HTTP request body (docs/protocol.md, REST: "Bodies"), sent with Content-Length or chunked.

A body is read here, up to the cap, before the app runs, so one rule covers every route,
including those that never read their body. A declared `Content-Length` over the cap is refused
before any of it is read; a chunked body the moment it passes the cap. The 413 carries
`Connection: close`: uvicorn then closes the connection instead of reading and discarding the
rest, so a request never costs the node more than the cap, whatever the client sends.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callstream import protocol as p
from callstream.server.deps import ApiError, json_response


class BodyLimit:
    """Pure ASGI middleware: 413 `message_too_large` for an HTTP request body over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body ended: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

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


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    """The declared length; None when absent or not a number (the HTTP parser refuses those)."""
    value = _header(scope, b"content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value) if len(value) < 20 else 2**64  # int() refuses very long digit strings


def _has_body(scope: Scope) -> bool:
    """HTTP/1.1 has a body only when it says so: chunked, or a Content-Length above 0."""
    return _header(scope, b"transfer-encoding") is not None or bool(_content_length(scope))
