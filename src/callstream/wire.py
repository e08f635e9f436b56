"""What the Python clients share on the wire: URLs, the credential, refusals, the reconnect life cycle.

:class:`~callstream.Client` (``/v1/events``) and :class:`~callstream.Publisher` (``/v1/ingest``)
talk to the same server the same way, so it is written once here. Users configure one base URL
for REST and sockets alike (``http://host:8080``): the scheme mapping lives here so nobody
hand-writes ``ws://`` URLs. The credential travels in the ``Authorization`` header, never in the
URL, because URLs get logged. The server refuses a handshake with a JSON body (docs/protocol.md,
Connecting); its message is what the user sees.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import urllib.parse
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, ClassVar, Final, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from callstream import __version__

__all__ = [
    "AUTH_STATUSES",
    "DROPPED",
    "Reconnecting",
    "bearer",
    "failure_reason",
    "refusal_reason",
    "rest_url",
    "socket_url",
]

AUTH_STATUSES: Final = frozenset({401, 403})
# A connection that failed or ended for a reason a reconnect may cure (InvalidStatus, a refusal,
# is an InvalidHandshake too: catch it first where it must be told apart).
DROPPED: Final = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)
SOCKET_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
REST_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def socket_url(base_url: str, path: str) -> str:
    """The socket URL of ``path`` (``/v1/events``) under the server's base URL."""
    return _with_scheme(base_url, path, SOCKET_SCHEMES)


def rest_url(base_url: str) -> str:
    """The server's base URL for REST, whichever of http(s) or ws(s) it was given as."""
    return _with_scheme(base_url, "", REST_SCHEMES)


def _with_scheme(base_url: str, path: str, schemes: dict[str, str]) -> str:
    try:
        parts = urllib.parse.urlsplit(base_url)
    except ValueError:  # "Invalid IPv6 URL": an unclosed `[`
        msg = f"invalid host in {base_url!r}"
        raise ValueError(msg) from None
    if parts.scheme not in schemes or not parts.netloc:
        msg = f"expected an http(s):// or ws(s):// URL, got {base_url!r}"
        raise ValueError(msg)
    if not parts.hostname:
        msg = f"invalid host in {base_url!r}"
        raise ValueError(msg)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:  # an empty port (`http://h:`) is the scheme's own, as URLs have it
        msg = f"invalid port in {base_url!r} (expected 1-65535)"
        raise ValueError(msg)
    path = parts.path.rstrip("/") + path
    return urllib.parse.urlunsplit((schemes[parts.scheme], parts.netloc, path, "", ""))


def bearer(credential: str) -> dict[str, str]:
    """The header that carries an API key or a JWT."""
    return {"Authorization": f"Bearer {credential}"}


def refusal_reason(status: int, body: bytes | bytearray | None) -> str:
    """Why the server answered a handshake with HTTP ``status``: its ``error.message``, if any."""
    try:
        parsed = orjson.loads(bytes(body or b""))
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else f"HTTP {status} at the handshake"


def failure_reason(url: str, exc: BaseException) -> str:
    """Why a connection to ``url`` failed or ended, in a few words for a person:
    ``cannot reach 127.0.0.1:1: connection refused``."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname  # IPv6
        where = (f"{host}:{parts.port}" if parts.port else host) if host else "the server"  # no password
    except ValueError:  # a URL `socket_url` would have refused: still say why, never raise
        where = "the server"
    if isinstance(exc, ConnectionClosed):
        return f"connection to {where} lost ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(exc, TimeoutError):
        why = "timed out"
    elif isinstance(exc, socket.gaierror):
        why = exc.strerror or str(exc)  # "Name or service not known": a host that is not one
    elif isinstance(exc, OSError):
        why = exc.strerror.lower() if exc.strerror else str(exc)
    else:
        why = str(exc) or type(exc).__name__
    return f"cannot reach {where}: {why}"


class Reconnecting(abc.ABC):
    """One background task that connects, serves and reconnects with backoff until closed.

    A subclass writes ``_run`` (its reconnect policy) and serves each socket inside
    :meth:`_connection`. Leaving ``async with`` normally first waits for :meth:`_settle`
    (nothing by default), then closes; leaving it with an exception only closes.
    """

    _name: ClassVar[str]  # names the background task and the User-Agent

    def __init__(self, url: str, initial_delay: float, max_delay: float) -> None:
        self._url = url
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()  # set once the first handshake succeeded or failed
        self._closed = False
        self._attempts = 0
        self._connections = 0
        self._down_reason: str | None = None  # why the last attempt failed; None while connected

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self._settle()
        finally:
            await self.close()

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect in the background and wait for the first handshake's outcome."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the socket and stop reconnecting."""

    @abc.abstractmethod
    async def _run(self) -> None:
        """Connect, serve and reconnect until closed or failed for good."""

    async def _settle(self) -> None:  # noqa: B027 - a hook: nothing to wait for by default
        """What a clean exit from ``async with`` waits for before closing."""

    async def _launch(self) -> None:
        """Start the connection loop and wait for the first handshake's outcome."""
        self._task = asyncio.create_task(self._run(), name=self._name)
        await self._first_attempt.wait()

    async def _stop(self) -> bool:
        """Close the socket and end the loop; False when it was closed already."""
        if self._closed:
            return False
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        self._first_attempt.set()
        return True

    @contextlib.asynccontextmanager
    async def _connection(self, credential: str, **options: Any) -> AsyncIterator[ClientConnection]:
        """Open the socket with ``credential`` and make it the current one while it is served."""
        # compression=None: frames are small JSON; deflate costs more CPU than it saves here.
        async with connect(
            self._url,
            additional_headers=bearer(credential),
            user_agent_header=f"{self._name}/{__version__}",
            compression=None,
            **options,
        ) as ws:
            self._ws = ws
            self._connections += 1
            self._down_reason = None
            self._first_attempt.set()
            try:
                yield ws
            finally:
                self._ws = None

    @property
    def down_reason(self) -> str | None:
        """Why the client is not connected (the last attempt's failure, or the lost socket), in a
        few words (``cannot reach host:8080: connection refused``); None while connected."""
        return None if self._ws is not None else self._down_reason

    def _backoff(self) -> float:
        """The next delay's cap, exponential in the attempts since the reset, at most ``max_delay``.

        The jitter on it is the subclass's: many clients must not reconnect in step.
        """
        cap = min(self._max_delay, self._initial_delay * 2.0 ** min(self._attempts, 32))
        self._attempts += 1
        return cap
