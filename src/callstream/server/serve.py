"""Run the app on uvicorn, draining sockets with 1001 before uvicorn's own shutdown.

uvicorn closes WebSockets with 1012 when it stops; callstream's contract says 1001 ("going
away"), so clients know to reconnect, possibly to another node, and resume with `since`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import uvicorn

from callstream.server.app import RedactCredentials, create_app
from callstream.server.runtime import Runtime
from callstream.server.transport import CallstreamWebSocketProtocol
from callstream.settings import Settings

log = logging.getLogger("callstream")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.runtime.drain(1001)
        await super().shutdown(sockets)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=True,
        server_header=False,
    )
    return DrainingServer(config, runtime)


async def serve(
    settings: Settings, on_ready: Callable[[DrainingServer], Awaitable[None]] | None = None
) -> None:
    server = build_server(settings)
    if on_ready is None:
        await server.serve()
        return
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.02)
    await on_ready(server)
    await serving


def bound_port(server: uvicorn.Server) -> int:
    for srv in server.servers:
        for sock in srv.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")
