"""Run the app on uvicorn, draining sockets with 1001 before uvicorn's own shutdown.

uvicorn closes WebSockets with 1012 when it stops; callstream's contract says 1001 ("going
away"), so clients know to reconnect, possibly to another node, and resume with `since`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvicorn
import uvloop

from callstream.server.app import create_app
from callstream.server.redact import RedactCredentials
from callstream.server.runtime import Runtime
from callstream.server.transport import CallstreamWebSocketProtocol
from callstream.settings import Settings

log = logging.getLogger("callstream")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.companions: list[asyncio.Task[Any]] = []  # in-process clients (the demo's simulator)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in self.companions:  # stop our own clients first: they would only reconnect
            task.cancel()
        await asyncio.gather(*self.companions, return_exceptions=True)
        await self.runtime.drain(1001)
        await super().shutdown(sockets)


# Libraries whose INFO lines at start say nothing an operator acts on (alembic: a line per plugin
# and per migration context); their warnings and errors still show.
QUIET_LOGGERS = ("alembic",)
# uvicorn's start lines: `callstream listening on …` says the same, once it really serves.
_UVICORN_START = (
    "Started server process",
    "Waiting for application startup.",
    "Application startup complete.",
    "Uvicorn running on",
)


class _WithoutStartLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or not str(record.msg).startswith(_UVICORN_START)


def configure_logging(level: str) -> None:
    """Log lines on stderr at `level`, credentials redacted. Below debug, the start prints only
    callstream's own lines: libraries' start-up chatter is left out (warnings and errors stay)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("uvicorn.error").addFilter(_WithoutStartLines())
    for handler in logging.getLogger().handlers:  # every logger's lines (httpx logs URLs too)
        handler.addFilter(RedactCredentials())
    logging.getLogger("uvicorn.access").addFilter(RedactCredentials())
    logging.getLogger("uvicorn.error").addFilter(RedactCredentials())


def build_server(settings: Settings) -> DrainingServer:
    runtime = Runtime(settings)
    app = create_app(settings, runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=CallstreamWebSocketProtocol,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        # The transport's hard limit sits above ours, so an oversized message gets a clear
        # `message_too_large` error from callstream before the close.
        ws_max_size=max(settings.max_message_bytes, settings.max_ingest_message_bytes) * 4,
        ws_per_message_deflate=False,  # frames are pre-encoded once for every subscriber
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        # A reconnect storm opens thousands of sockets at once: a short accept queue drops SYNs, and
        # each dropped client waits out TCP's 1 s, 3 s, 7 s … retransmit timers (uvicorn's 2,048).
        backlog=settings.listen_backlog,
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=True,
        server_header=False,
    )
    return DrainingServer(config, runtime)


def run_forever(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop: uvicorn's `loop=` only applies when uvicorn creates the loop itself."""
    uvloop.run(coro)


# The Python versions (major, minor) the collector settings below were measured on (bench/README.md).
GC_MEASURED_ON: frozenset[tuple[int, int]] = frozenset({(3, 11)})


def freeze_startup_heap(version: tuple[int, int] = (sys.version_info.major, sys.version_info.minor)) -> bool:
    """Tune the garbage collector for a node holding many sockets, on the Python versions it was
    measured on (`GC_MEASURED_ON`); any other keeps Python's defaults, since its collector may
    differ. Returns whether the settings were applied.

    Everything alive after start-up (modules, the app, its routes) moves out of the collector's
    sight: full collections otherwise walk it all, a pause every subscriber sees as latency."""
    if version not in GC_MEASURED_ON:
        measured = ", ".join(f"{major}.{minor}" for major, minor in sorted(GC_MEASURED_ON))
        log.info("garbage collector left at Python %d.%d's defaults (tuned on %s)", *version, measured)
        return False
    gc.collect()
    gc.freeze()
    # Collect the young generation every 10,000 allocations instead of 700: objects that live for
    # one fan-out or one commit (events, frames, futures) then die young instead of being promoted,
    # and the full collections that walk every socket's objects become rare. The middle
    # generation every 2 young collections (not 20): what outlives them, such as the objects of
    # sockets that just connected, moves on in small batches instead of in one long pause
    # (bench/README.md, gc-young). Full collections stay as rare: every 2,000 young ones.
    gc.set_threshold(10_000, 2, 1_000)
    return True


async def serve(
    settings: Settings, on_ready: Callable[[DrainingServer], Awaitable[None]] | None = None
) -> None:
    server = build_server(settings)
    if on_ready is None:
        on_ready = _nothing
    serving = asyncio.create_task(_serve_or_explain(server))
    while not server.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.02)
    freeze_startup_heap()
    if server.should_exit:  # told to stop while it started (Ctrl-C): uvicorn is stopping already
        await serving
        return
    # A companion, so that a stop while it runs cancels it (a node that no longer listens has no
    # use for the demo's account or link); if it fails, the node stops and the error is raised.
    async def ready() -> None:
        await on_ready(server)

    readying = asyncio.create_task(ready())
    server.companions.append(readying)
    readying.add_done_callback(lambda done: _stop_if_failed(server, done))
    await serving
    if readying.done() and not readying.cancelled() and (error := readying.exception()) is not None:
        raise error


class StartupError(Exception):
    """The server did not start: its address cannot be bound, or the app failed to start (uvicorn
    has logged why). The message is one line for the command to print."""


async def _serve_or_explain(server: DrainingServer) -> None:
    """`server.serve()`, with uvicorn's exit at a failed start (SystemExit, which would escape the
    event loop as a traceback) turned into a `StartupError` that says why."""
    try:
        await server.serve()
    except SystemExit as exc:
        cause = exc.__context__
        if isinstance(cause, OSError):  # the bind: address in use, no such interface or host name
            reason = (cause.strerror or str(cause)).rsplit(": ", 1)[-1]
            where = f"{server.config.host}:{server.config.port}"
            raise StartupError(f"cannot listen on {where}: {reason}") from None
        raise StartupError(f"the server could not start (exit status {exc.code}): see the log above") from None


def _stop_if_failed(server: DrainingServer, done: asyncio.Task[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        server.should_exit = True


async def _nothing(_: DrainingServer) -> None:
    return None


def bound_port(server: uvicorn.Server) -> int:
    for srv in server.servers:
        for sock in srv.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")
