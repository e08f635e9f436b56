"""The ASGI application: routes, error shape, the dashboard's static files, and the node's life."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from callstream import __version__
from callstream.errors import UnavailableError
from callstream.limits import Limits
from callstream.server import erasure_api, event_stream, keys_api, metadata_api, recording_api, rest
from callstream.server.bodylimit import BodyLimit
from callstream.server.dashboard_files import DashboardFiles
from callstream.server.deps import ApiError, bearer_of, runtime_of, unavailable
from callstream.server.events_socket import events_endpoint
from callstream.server.ingest import ingest_endpoint
from callstream.server.runtime import Runtime
from callstream.settings import Settings
from callstream.store import SqlStore

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
HEALTH_TIMEOUT_S = 3.0
TASKS = Gauge("callstream_tasks", "asyncio tasks alive on this node (a leak shows as growth)")


SOCKETS: dict[str, Callable[[WebSocket], Awaitable[None]]] = {
    "/v1/events": events_endpoint,
    "/v1/ingest": ingest_endpoint,
}


class CallstreamApp(FastAPI):
    """FastAPI, with the two WebSocket endpoints and the event stream reached before its
    middleware and router.

    A socket lives for hours, and every ASGI layer it passed through keeps a coroutine frame
    (with FastAPI's dependency bookkeeping: an exit stack, a Response, headers) alive that long:
    about 15 frames and 150 objects a socket, most of an idle subscriber's memory. None of those
    layers does anything for these two endpoints (CORS and the error handlers are for HTTP), so
    the sockets are dispatched here; the routes stay registered for anything that walks them.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and (endpoint := SOCKETS.get(scope["path"])) is not None:
            scope["app"] = self
            await endpoint(WebSocket(scope, receive, send))
            return
        if scope["type"] == "http" and scope["path"] == event_stream.PATH:
            scope["app"] = self
            await event_stream.stream_endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. `index`, `retry_after_s`

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: `{"error": {"code", "message", ...}}`."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "bad request",
        401: "missing, invalid or expired credential",
        403: "the credential lacks the scope",
        404: "no such resource (or another account's)",
        409: "conflict (a limit, a disabled endpoint)",
        413: "body too large",
        422: "invalid request",
        429: "rate limited (`Retry-After`, `error.retry_after_s`)",
        503: "the node cannot reach its store or broker",
    }.items()
}


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime(settings)
    _install_extensions(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        assert runtime.signer is not None
        runtime.signer.trust(settings.previous_secrets)  # rotated-out secrets still verify (by kid)
        try:
            yield
        finally:
            await runtime.stop()

    app = CallstreamApp(
        title="callstream",
        version=__version__,
        description="Live events of voice calls over WebSocket; calls, transcripts and webhooks over REST.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.limits = Limits(
        per_key=settings.max_connections_per_key,
        per_account=settings.max_connections_per_account,
        ingest_rate=settings.ingest_rate,
        ingest_burst=settings.ingest_burst,
        control_rate=settings.control_rate,
        control_burst=settings.control_burst,
        audio_rate=settings.audio_rate,
        audio_burst=settings.audio_burst,
    )
    app.include_router(rest.router, responses=ERROR_RESPONSES)
    app.include_router(erasure_api.router, responses=ERROR_RESPONSES)
    app.include_router(recording_api.router, responses=ERROR_RESPONSES)
    app.include_router(keys_api.router, responses=ERROR_RESPONSES)
    app.add_api_route(event_stream.PATH, event_stream.described, methods=["GET"], **event_stream.OPENAPI)
    app.include_router(metadata_api.router, responses=ERROR_RESPONSES)
    _include_optional_routers(app)
    for path, endpoint in SOCKETS.items():
        app.add_api_websocket_route(path, endpoint)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["operations"])
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        tags=["operations"],
        response_class=PlainTextResponse,
        responses={401: ERROR_RESPONSES[401]},
    )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(UnavailableError, _unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.mount("/", DashboardFiles(directory=DASHBOARD_DIR, html=True, check_dir=False), name="dashboard")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _add_cors(app, settings.allowed_origins)
    return app


def _add_cors(app: FastAPI, origins: list[str]) -> None:
    """CORS for REST from the same allow-list as the sockets' Origin check; none without a list.

    Credentials travel in the `Authorization` header, never in cookies, so CORS never allows
    credentials (which also keeps a `*` entry from turning into "any site, with cookies").
    """
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if "*" in origins else origins,
        allow_credentials=False,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After"],
        max_age=600,
    )


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
    app.include_router(router, responses=ERROR_RESPONSES)


async def healthz(request: Request) -> JSONResponse:
    """200 when this node can serve; 503 while its broker or store link is down.

    "Store up" means it answers *and* takes writes: after a failed commit (a full disk, a lost
    connection) the node stays unhealthy until a probe write (or an event's commit) succeeds,
    and while writes have waited `STALLED_AFTER_S` with no commit (a locked table, a fold that
    keeps failing) it is unhealthy whatever a probe says.
    """
    runtime = runtime_of(request)
    store_ok = await _store_ok(runtime.store)
    broker_ok = runtime.broker.healthy
    ok = store_ok and broker_ok and not runtime.draining
    body = {"status": "ok" if ok else "unavailable", "store": store_ok, "broker": broker_ok}
    return JSONResponse(body, status_code=200 if ok else 503)


def _methods_for(request: Request) -> set[str]:
    """The methods the API serves at this request's path, per its OpenAPI paths (empty: none)."""
    app = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "method_table", None)
    if table is None:
        table = [
            (re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))), {m.upper() for m in ops})
            for path, ops in app.openapi().get("paths", {}).items()
        ]
        app.state.method_table = table
    path = request.url.path
    return {m for pattern, methods in table if pattern.fullmatch(path) for m in methods}


async def _store_ok(store: SqlStore) -> bool:
    if store.stalled:
        return False
    try:
        if store.healthy:
            return await asyncio.wait_for(store.ping(), HEALTH_TIMEOUT_S)
        written = await asyncio.wait_for(store.probe_write(), HEALTH_TIMEOUT_S)
    except TimeoutError:
        return False
    store.healthy = written
    return written


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text; with `metrics_token` set, only for `Authorization: Bearer <that token>`."""
    token = runtime_of(request).settings.metrics_token
    if token is not None and not _is_token(bearer_of(request), token):
        raise ApiError(401, "unauthorized", "/metrics needs `Authorization: Bearer <the metrics token>`")
    TASKS.set(len(asyncio.all_tasks()))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _is_token(presented: str | None, token: str) -> bool:
    """Constant-time comparison, so the answer's timing does not reveal how much of it matched."""
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The store or the broker could not serve a request: 503 `unavailable`, never a 500."""
    return await _api_error(request, unavailable(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
    body = {"error": {"code": "invalid_request", "message": "; ".join(problems) or "invalid request"}}
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405) and (allowed := _methods_for(request)):
        # A known path with another method (it may have fallen through to the dashboard's
        # files): 405 with every method the path serves.
        exc = StarletteHTTPException(405, "Method Not Allowed", {"Allow": ", ".join(sorted(allowed))})
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)  # e.g. 405's `Allow`
