"""What the two WebSocket endpoints share: the handshake, the connection's life, its close.

The handshake decides before the upgrade (docs/protocol.md, Connecting): the Origin
allow-list, a draining node, the credential and its scope, the key's and the account's
connection slots; a refusal is an HTTP answer with the error shape and no upgrade. A socket
that is let in holds its slots until it ends, registers with the runtime (so revocation and
shutdown can end it) and counts in the connections gauge. The read loop is shared; what a
message does (`_handle`) and how frames go out (fan-out writes, acks) are each socket's own
(`events_socket`, `ingest`), and nothing here adds to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from callstream import metrics
from callstream import protocol as p
from callstream.auth import AuthError, Principal
from callstream.broker import BrokerUnavailableError, QuotaExceededError
from callstream.server.deps import (
    UNAVAILABLE_RETRY_S,
    credential_of,
    limits_of,
    retry_after_header,
    runtime_of,
)
from callstream.server.runtime import Runtime
from callstream.server.transport import URGENT
from callstream.store import StoreUnavailableError

log = logging.getLogger("callstream.sockets")

# What a send on a socket that is gone raises: Starlette's disconnect (the transport's OSError),
# or RuntimeError from a send after the close or on a closed transport.
SOCKET_GONE = (WebSocketDisconnect, RuntimeError)


class SocketConnection:
    """One admitted socket: registered with the runtime and counted while its reader runs.

    Subclasses set `kind` (the connections gauge's label), handle each text message in
    `_handle` (and binary ones in `_binary`), refuse what is not one in `_not_text` / `_too_large`, and let go of their
    resources in `_closing` (the server ends the connection) and `_ended` (the socket is gone).
    """

    kind: ClassVar[str]

    def __init__(self, ws: WebSocket, runtime: Runtime, principal: Principal, max_bytes: int) -> None:
        self.ws = ws
        self.runtime = runtime
        self.principal = principal
        self.key_id = principal.key_id
        self.closed = False  # no more messages are read
        self._max_bytes = max_bytes

    async def run(self) -> None:
        self.runtime.connections.add(self)
        metrics.CONNECTIONS.labels(self.kind).inc()
        self._started()
        try:
            await self._read_forever()
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            self._ended()
            self.runtime.connections.discard(self)
            metrics.CONNECTIONS.labels(self.kind).dec()

    async def _read_forever(self) -> None:
        limit = self._max_bytes
        while not self.closed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                data = message.get("bytes")
                await (self._not_text() if data is None else self._binary(data))
                continue
            # A character is at most 4 bytes: only a frame past a quarter of the limit is measured.
            if len(text) > limit // 4 and len(text.encode()) > limit:
                if await self._too_large(limit):
                    continue
                return
            await self._handle(text)

    async def terminate(self, code: int, error_code: str | None, message: str) -> None:
        """End the connection: an `error` first when there is one to give, then the close code."""
        if self.closed:
            return
        self.closed = True
        await self._closing(code)
        await close_urgently(self.ws, code, error_code, message)

    def _started(self) -> None:
        """Registered and about to read (timers that need the running connection start here)."""

    async def _handle(self, text: str) -> None:
        raise NotImplementedError

    async def _not_text(self) -> None:
        """A binary message came where only JSON text is spoken."""
        raise NotImplementedError

    async def _binary(self, data: bytes) -> None:
        """A binary message came (audio on /v1/ingest); elsewhere it is refused (`_not_text`)."""
        await self._not_text()

    async def _too_large(self, limit: int) -> bool:
        """A message over `limit` bytes came; whether to go on reading."""
        raise NotImplementedError

    async def _closing(self, code: int) -> None:
        """The server ends the connection with `code`; the close frame follows."""

    def _ended(self) -> None:
        """The socket is gone: cancel what the connection still runs."""

    @staticmethod
    def _cancel(*pending: asyncio.TimerHandle | asyncio.Task[None] | None) -> None:
        for handle in pending:
            if handle is not None:
                handle.cancel()


def socket_endpoint(
    connection: Callable[[WebSocket, Runtime, Principal], SocketConnection], scope: str
) -> Callable[[WebSocket], Awaitable[None]]:
    """The ASGI endpoint of a socket whose credential must allow `scope`: handshake, accept,
    run the connection, give back its slots."""

    async def endpoint(ws: WebSocket) -> None:
        admitted = await handshake(ws, scope)
        if admitted is None:
            return
        principal, via_subprotocol = admitted
        try:
            await ws.accept(subprotocol="bearer" if via_subprotocol else None)
            await connection(ws, runtime_of(ws), principal).run()
        finally:
            await release_slot(ws, principal)

    endpoint.__name__ = endpoint.__qualname__ = f"{scope}_socket"
    return endpoint


async def handshake(ws: WebSocket, scope: str) -> tuple[Principal, bool] | None:
    """Authenticate before upgrading; on failure answer with HTTP and no upgrade.

    On success the socket holds a connection slot of its key and account: the caller must
    `release_slot` when the socket ends. Returns the principal and whether the credential came
    as the `bearer` subprotocol (which the accept must then select).
    """
    admitted = await admit(ws, scope)
    if isinstance(admitted, JSONResponse):
        await ws.send_denial_response(admitted)
        return None
    return admitted


async def admit(conn: HTTPConnection, scope: str) -> tuple[Principal, bool] | JSONResponse:
    """What a long-lived connection (a socket, an event stream) passes before it is let in: the
    Origin allow-list, a draining node, the credential and its `scope`, the key's and the
    account's connection slots. The principal (and whether the credential came as the `bearer`
    subprotocol), holding a slot the caller must `release_slot`; or the refusal to answer with."""
    runtime = runtime_of(conn)
    if not origin_allowed(conn, runtime.settings.allowed_origins):
        return denial(403, "forbidden", "this Origin is not allowed")
    if runtime.draining:
        return denial(503, "unavailable", "this node is shutting down")
    credential, via_subprotocol = credential_of(conn)
    assert runtime.auth is not None
    try:
        principal = await runtime.auth.authenticate(credential)
    except AuthError as exc:
        return denial(401, "unauthorized", str(exc))
    except StoreUnavailableError as exc:  # the key cannot be checked: neither yes nor no
        return denial(503, "unavailable", str(exc), UNAVAILABLE_RETRY_S)
    if not principal.may(scope):
        return denial(403, "forbidden", f"this credential lacks the {scope} scope")
    refusal = limits_of(conn).connections.acquire(principal.account, principal.key_id)
    if refusal is not None:
        metrics.CLIENT_ERRORS.labels(p.ErrorCode.RATE_LIMITED).inc()
        return denial(429, p.ErrorCode.RATE_LIMITED, refusal.message, refusal.retry_after_s)
    answer = await _account_socket(runtime, principal.account)
    if answer is not None:
        limits_of(conn).connections.release(principal.account, principal.key_id)
        return answer
    return principal, via_subprotocol


async def _account_socket(runtime: Runtime, account: str) -> JSONResponse | None:
    """Count the socket against the account's quota (on every node with Redis); a refusal's answer."""
    try:
        await runtime.broker.acquire_socket(account)
    except QuotaExceededError as exc:
        metrics.CLIENT_ERRORS.labels(p.ErrorCode.QUOTA_EXCEEDED).inc()
        return denial(429, p.ErrorCode.QUOTA_EXCEEDED, exc.message, exc.retry_after_s)
    except BrokerUnavailableError as exc:
        return denial(503, "unavailable", str(exc), UNAVAILABLE_RETRY_S)
    return None


async def release_slot(conn: HTTPConnection, principal: Principal) -> None:
    limits_of(conn).connections.release(principal.account, principal.key_id)
    try:
        await runtime_of(conn).broker.release_socket(principal.account)
    except BrokerUnavailableError:  # the broker recounts once it is back
        log.warning("could not release a socket of the account's quota; recounted later")


def denial(status: int, code: str, message: str, retry_after_s: float | None = None) -> JSONResponse:
    """A refused handshake's HTTP answer, in the REST error shape (with `Retry-After` when given)."""
    if retry_after_s is None:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
    body = {"error": {"code": code, "message": message, "retry_after_s": retry_after_s}}
    return JSONResponse(body, status_code=status, headers=retry_after_header(retry_after_s))


def origin_allowed(conn: HTTPConnection, allowed: list[str]) -> bool:
    origin = conn.headers.get("origin")
    return not allowed or origin is None or origin.rstrip("/") in allowed or "*" in allowed


async def close_urgently(ws: WebSocket, code: int, error_code: str | None, message: str) -> None:
    """Send the final `error` (if any) and the close without waiting behind a stalled reader.

    Best effort: a socket that is already gone (or will not take the close within 2 s) is
    simply closed by its transport.
    """
    with contextlib.suppress(*SOCKET_GONE, TimeoutError):
        if error_code is not None:
            text = p.error_message(error_code, message).decode()
            await asyncio.wait_for(ws.send({"type": "websocket.send", "text": text, URGENT: True}), 2.0)
        close = {"type": "websocket.close", "code": code, "reason": message[:120], URGENT: True}
        await asyncio.wait_for(ws.send(close), 2.0)


def rate_limited_message(message: str, retry_after_s: float, ref: Any = None, call_id: str | None = None) -> bytes:
    """A `rate_limited` error with its retry hint: `data.retry_after_s` (seconds)."""
    body: dict[str, Any] = {
        "type": "error",
        "call_id": call_id,
        "data": {"code": p.ErrorCode.RATE_LIMITED, "message": message, "retry_after_s": round(retry_after_s, 3)},
    }
    if call_id is not None:
        body["data"]["call_id"] = call_id
    if ref is not None:
        body["ref"] = ref
    return orjson.dumps(body)
