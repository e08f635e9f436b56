"""Request plumbing shared by the REST routes: the error shape, credentials, scopes, JSON bodies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import Response

from callstream import protocol as p
from callstream.auth import AuthError, Principal
from callstream.events import is_valid_call_id
from callstream.limits import Limits, Refusal
from callstream.server.runtime import Runtime


class ApiError(Exception):
    """Answered as `{"error": {"code", "message", ...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def headers(self) -> dict[str, str] | None:
        retry = self.extra.get("retry_after_s")
        return retry_after_header(float(retry)) if isinstance(retry, int | float) else None


def not_found(what: str = "call") -> ApiError:
    """The one answer for 'missing' and 'another account's': nothing leaks across tenants."""
    return ApiError(404, "not_found", f"no such {what}")


def visible_call_id(principal: Principal, call_id: str) -> str:
    """The call id, when the principal may see such a call; else the answer for a missing call:
    a call the principal may not see answers exactly like one that does not exist."""
    if not is_valid_call_id(call_id) or not principal.may_see(call_id):
        raise not_found()
    return call_id


UNAVAILABLE_RETRY_S = 1.0  # the `Retry-After` of a 503 while the store or the broker is down


def unavailable(exc: Exception) -> ApiError:
    """503 `unavailable` with `Retry-After`: the store or the broker cannot serve right now."""
    return ApiError(503, "unavailable", str(exc), retry_after_s=UNAVAILABLE_RETRY_S)


def runtime_of(conn: HTTPConnection) -> Runtime:
    runtime: Runtime = conn.app.state.runtime
    return runtime


def limits_of(conn: HTTPConnection) -> Limits:
    """The node's abuse limiters (built by `create_app` from Settings)."""
    limits: Limits = conn.app.state.limits
    return limits


def rate_limited(refusal: Refusal) -> ApiError:
    """429 `rate_limited` with the retry hint in the body (`retry_after_s`) and `Retry-After`."""
    return ApiError(429, "rate_limited", refusal.message, retry_after_s=refusal.retry_after_s)


def retry_after_header(seconds: float) -> dict[str, str]:
    """`Retry-After` takes whole seconds: round up, never 0."""
    return {"Retry-After": str(max(1, int(-(-seconds // 1))))}


def bearer_of(conn: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if the request has one."""
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def credential_of(conn: HTTPConnection) -> tuple[str | None, bool]:
    """The credential and whether it came as the `bearer, <token>` subprotocol pair."""
    if (bearer := bearer_of(conn)) is not None:
        return bearer, False
    protocols = [p.strip() for p in conn.headers.get("sec-websocket-protocol", "").split(",")]
    if len(protocols) >= 2 and protocols[0].lower() == "bearer":
        return protocols[1] or None, True
    return conn.query_params.get("token") or None, False


async def authenticate(conn: HTTPConnection) -> Principal:
    runtime = runtime_of(conn)
    assert runtime.auth is not None
    credential, _ = credential_of(conn)
    try:
        return await runtime.auth.authenticate(credential)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc)) from None


def require(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's Principal, which must hold one of `scopes`."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        if not any(principal.may(s) for s in scopes):
            raise ApiError(403, "forbidden", f"this credential lacks the scope: {' or '.join(scopes)}")
        return principal

    return dependency


def json_response(body: Any, status: int = 200) -> Response:
    """JSON encoded with orjson (the same encoder as the sockets)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


M = TypeVar("M", bound=BaseModel)


async def json_of(request: Request) -> Any:
    """The request's body as JSON, whatever its `Content-Type` says: `curl -d` sends
    `application/x-www-form-urlencoded` and `fetch` without headers `text/plain`. Every route with
    a JSON body reads it here, so all take the same requests and refuse a body that is not JSON
    with the same `422 invalid_message`."""
    try:
        return p.decode_json(await request.body())  # at most max_body_bytes (BodyLimit)
    except p.ProtocolError as exc:
        raise ApiError(422, exc.code, exc.message) from None


JsonBody = Annotated[Any, Depends(json_of)]  # a route's body, read by hand (events, control, metadata)


def body_of(model: type[M], *, optional: bool = False) -> Callable[[Request], Awaitable[M]]:
    """A dependency: the body (`json_of`) as `model`; `optional`: an empty body is `{}`.

    A value the model refuses is `422 invalid_request` naming each field as `body.<field>`."""

    async def dependency(request: Request) -> M:
        value = {} if optional and not await request.body() else await json_of(request)
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(".".join(map(str, ("body", *e["loc"]))) + f": {e['msg']}" for e in exc.errors())
            raise ApiError(422, "invalid_request", problems) from None

    return dependency


def body_schema(schema: dict[str, Any], *, required: bool = True, **examples: Any) -> dict[str, Any]:
    """The OpenAPI page's description of a JSON body (`openapi_extra`) read by `json_of`, which
    FastAPI does not see: a pydantic model's `model_json_schema()`, or a schema by hand."""
    content = {"application/json": {"schema": schema, **examples}}
    return {"requestBody": {"required": required, "content": content}}
