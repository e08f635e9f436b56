"""The ASGI application: routes, error shape, the dashboard's static files, and the node's life."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from callstream import __version__
from callstream.server import rest
from callstream.server.deps import ApiError, runtime_of
from callstream.server.events_socket import events_endpoint
from callstream.server.ingest import ingest_endpoint
from callstream.server.runtime import Runtime
from callstream.settings import Settings

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])(?:token|key|code|login)=)[^&\s\"]*")


class RedactCredentials(logging.Filter):
    """Access logs show paths with their query strings: never let a credential through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime(settings)
    _install_extensions(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="callstream",
        version=__version__,
        description="Live events of voice calls over WebSocket; calls, transcripts and webhooks over REST.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.include_router(rest.router)
    _include_optional_routers(app)
    app.add_api_websocket_route("/v1/events", events_endpoint)
    app.add_api_websocket_route("/v1/ingest", ingest_endpoint)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["operations"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], tags=["operations"])
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.mount("/", StaticFiles(directory=DASHBOARD_DIR, html=True, check_dir=False), name="dashboard")
    return app


def _install_extensions(runtime: Runtime) -> None:
    """Optional parts that hook into the node (webhooks); absent modules are simply skipped."""
    try:
        from callstream.webhooks.hooks import install
    except ImportError:
        return
    install(runtime)


def _include_optional_routers(app: FastAPI) -> None:
    try:
        from callstream.server.webhooks_api import router
    except ImportError:
        return
    app.include_router(router)


async def healthz(request: Request) -> JSONResponse:
    """200 when this node can serve; 503 while its broker or store link is down."""
    runtime = runtime_of(request)
    store_ok = await runtime.store.ping()
    broker_ok = runtime.broker.healthy
    ok = store_ok and broker_ok and not runtime.draining
    body = {"status": "ok" if ok else "unavailable", "store": store_ok, "broker": broker_ok}
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics_endpoint() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    body = {"error": {"code": "invalid_request", "message": "; ".join(problems) or "invalid request"}}
    return JSONResponse(body, status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)
