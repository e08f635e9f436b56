"""REST (docs/protocol.md, Producing; REST): publish over HTTP, tokens, calls, transcripts, events, login."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from callstream import protocol as p
from callstream.auth import Principal
from callstream.broker import (
    BrokerUnavailableError,
    CallEndedError,
    ControlResultError,
    MetadataRefusedError,
    QuotaExceededError,
)
from callstream.broker.base import LIVE_TTL_S
from callstream.call_filters import FILTERS, parse_filters
from callstream.control import ACTIONS
from callstream.events import FINAL, MAX_INT64, PARTIAL, is_valid_call_id
from callstream.metadata import query_filter
from callstream.quality import WINDOWS, fleet_stats, window_start
from callstream.server.control_desk import ControlRefusedError
from callstream.server.deps import (
    UNAVAILABLE_RETRY_S,
    ApiError,
    JsonBody,
    authenticate,
    body_of,
    body_schema,
    json_response,
    limits_of,
    not_found,
    rate_limited,
    require,
    runtime_of,
    unavailable,
)
from callstream.server.deps import visible_call_id as _checked_call_id
from callstream.session_names import name_in_code
from callstream.store import CallFailedError, KeyRecord, StoreUnavailableError
from callstream.store.sql import login_code_scopes

router = APIRouter()
Reader = Annotated[Principal, Depends(require("subscribe", "admin"))]
Producer = Annotated[Principal, Depends(require("publish"))]
Controller = Annotated[Principal, Depends(require("control"))]
_SESSION_S = 12 * 3600  # a dashboard login lasts this long, renewed in short JWTs
_SESSION_SCOPES = frozenset({"subscribe", "control", "listen"})  # `callstream login [--control] [--listen]`
_DASHBOARD_KEYS = {  # one key per kind of session: revoking it ends every session of that kind
    frozenset({"subscribe"}): "dashboard",
    frozenset({"subscribe", "control"}): "dashboard-control",
    frozenset({"subscribe", "listen"}): "dashboard-listen",
    _SESSION_SCOPES: "dashboard-control-listen",
}


def _since_schema(schema: dict[str, Any]) -> None:
    """`since` is read as text (`since_in_query`, the event stream's rule) and described as what it takes."""
    schema.clear()
    schema.update(type="integer", minimum=0, maximum=MAX_INT64, description="the events after this seq (default 0)")


DEFAULT_EVENTS_PAGE = 1_000  # events per page of GET /v1/calls/{id}/events when no limit is given
MAX_EVENTS_PAGE = 10_000

CallId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$", description="a call id")]


class TokenRequest(BaseModel):
    # Strict: `"ttl_s": true` or `"ttl_s": "60"` is a mistake to report, not a value to coerce.
    model_config = ConfigDict(strict=True)

    ttl_s: int | None = Field(None, ge=1, le=86_400, description="lifetime; default 900")
    calls: list[CallId] | None = Field(None, description="call ids the token may see; absent: all")
    scope: list[Literal["subscribe", "control", "listen"]] | None = Field(
        None,
        description="default [subscribe]; control and listen only when the minting key has them (never publish or admin)",
    )
    name: str | None = Field(
        None,
        description="the session's own name (1-64 printable characters): who asked, in the control requests it makes; default: the key's",
        examples=["Dana (supervisor)"],
    )


class TokenResponse(BaseModel):
    token: str
    expires_at: int = Field(description="unix seconds")


class LoginRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    code: str = Field(min_length=1, max_length=400)  # with the session's name in it (`session_names`)


class PublishResponse(BaseModel):
    accepted: int
    seq: list[int]


@router.post(
    "/v1/calls/{call_id}/events",
    status_code=202,
    response_model=PublishResponse,
    openapi_extra=body_schema(
        {
            "description": f"one event {{type, data, id?}} or an array of at most {p.MAX_BATCH_EVENTS}; an id its call holds answers its first seq",
            "oneOf": [
                {"type": "object"},
                {"type": "array", "items": {"type": "object"}, "maxItems": p.MAX_BATCH_EVENTS},
            ],
        },
        example={"type": "transcript.final", "data": {"speaker": "user", "text": "Hi"}},
    ),
    tags=["produce"],
)
async def publish_events(call_id: str, request: Request, principal: Producer, body: JsonBody) -> Response:
    runtime = runtime_of(request)
    if not is_valid_call_id(call_id):
        raise ApiError(422, "invalid_message", "call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    try:
        events = p.parse_event_batch(body, call_id)
    except p.ProtocolError as exc:
        raise ApiError(422, exc.code, exc.message, index=exc.index or 0) from None
    refusal = limits_of(request).ingest.take(principal.key_id, len(events))
    if refusal is not None:  # the key's events/s, shared with its ingest sockets; nothing applied
        raise rate_limited(refusal)
    timeout = runtime.settings.store_timeout_s
    try:
        sequenced, durable = await runtime.publish(principal.account, events)
        await asyncio.wait_for(asyncio.shield(durable), timeout)
    except CallEndedError as exc:
        raise ApiError(422, "call_ended", str(exc), index=exc.index) from None
    except (ControlResultError, MetadataRefusedError) as exc:  # e.g. its request was answered already
        raise ApiError(422, "invalid_message", str(exc), index=exc.index) from None
    except CallFailedError as exc:  # this call alone: its rows were refused
        raise ApiError(503, "internal", str(exc)) from None
    except QuotaExceededError as exc:  # nothing of the batch applied
        hint = {} if exc.retry_after_s is None else {"retry_after_s": exc.retry_after_s}
        raise ApiError(429, p.ErrorCode.QUOTA_EXCEEDED, exc.message, index=exc.index, quota=exc.quota, **hint) from None
    except (BrokerUnavailableError, StoreUnavailableError) as exc:  # say, while loading the call
        raise unavailable(exc) from None
    except TimeoutError:
        message = f"the store did not confirm within {timeout:g} s: the events may or may not be stored"
        raise ApiError(503, "unavailable", message, retry_after_s=UNAVAILABLE_RETRY_S) from None
    return json_response({"accepted": len(sequenced), "seq": [e.seq for e in sequenced]}, 202)


CONTROL_EXAMPLES = {
    "say": {"summary": "say a sentence now", "value": {"action": "say", "args": {"text": "One moment please.", "interrupt": True}}},
    "instruct": {"summary": "steer the agent", "value": {"action": "instruct", "args": {"text": "Offer the 10% discount."}}},
    "pause": {"summary": "take over (the agent stops answering)", "value": {"action": "pause", "args": {}}},
    "resume": {"summary": "give back", "value": {"action": "resume", "args": {}}},
    "transfer": {"summary": "hand the call over", "value": {"action": "transfer", "args": {"to": "+14155550100", "reason": "billing"}}},
    "end": {"summary": "end the call", "value": {"action": "end", "args": {"reason": "abusive caller"}}},
}


_CONTROL_FIELDS = frozenset({"action", "args"})


class ControlAck(BaseModel):
    request_id: str = Field(description="names the request in control.requested and its control.result")
    seq: int = Field(description="the seq of the request's control.requested event")


@router.post(
    "/v1/calls/{call_id}/control",
    status_code=202,
    response_model=ControlAck,
    tags=["control"],
    openapi_extra=body_schema(
        {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {"type": "string", "enum": list(ACTIONS)},
                "args": {"type": "object", "description": "the action's arguments (docs/control.md)"},
            },
            "additionalProperties": False,
        },
        examples=CONTROL_EXAMPLES,
    ),
)
async def control_call(call_id: str, request: Request, principal: Controller, body: JsonBody) -> Response:
    """Ask the producer holding a live call to act: say, instruct, pause, resume, transfer, end.

    The request is appended to the call as `control.requested` (with who asked), relayed to the
    producer, and answered by one `control.result` in the call's events (the server's own
    `timeout` when the producer does not answer in time). Refusals: 403 `forbidden`, 409
    `call_not_live` / `no_producer` / `unsupported_action`, 422 `invalid_message`, 429.
    """
    runtime = runtime_of(request)
    if not is_valid_call_id(call_id):
        raise ApiError(422, "invalid_message", "call_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    action = body.get("action") if isinstance(body, dict) else None
    if not isinstance(action, str) or action not in ACTIONS:
        raise ApiError(422, "invalid_message", f"the body is {{action, args}}; action one of {', '.join(ACTIONS)}")
    if unknown := sorted(set(body) - _CONTROL_FIELDS):
        raise ApiError(422, "invalid_message", f"unknown field {unknown[0]!r}: the body is {{action, args}}")
    refusal = limits_of(request).control.take(principal.key_id, 1)
    if refusal is not None:
        raise rate_limited(refusal)
    try:
        request_id, seq = await runtime.control.request(principal, call_id, action, body.get("args"))
    except ControlRefusedError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return json_response({"request_id": request_id, "seq": seq}, 202)


@router.post(
    "/v1/tokens",
    response_model=TokenResponse,
    tags=["auth"],
    openapi_extra=body_schema(TokenRequest.model_json_schema(), required=False),
)
async def mint_token(
    request: Request, principal: Reader, body: Annotated[TokenRequest, Depends(body_of(TokenRequest, optional=True))]
) -> dict[str, Any]:
    """A short-lived browser JWT (subscribe, and control or listen when asked for and the key
    has them), minted with an API key.

    The body is optional: an empty one asks for the defaults.
    """
    if principal.kind != "key":
        raise ApiError(403, "forbidden", "tokens are minted with an API key, not with a token")
    if body.calls is not None and not all(is_valid_call_id(c) for c in body.calls):
        raise ApiError(422, "invalid_request", "calls must be a list of valid call ids")
    scopes = frozenset(body.scope or ()) | {"subscribe"}
    for scope in ("control", "listen"):
        if scope in scopes and not principal.may(scope):
            raise ApiError(403, "forbidden", f"a token gets {scope} only from a key that has the {scope} scope")
    signer = runtime_of(request).signer
    assert signer is not None
    try:
        token, expires_at = signer.mint(
            principal.account, principal.key_id, ttl_s=body.ttl_s, calls=body.calls, scopes=scopes, name=body.name
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return {"token": token, "expires_at": expires_at}


@router.get("/v1/calls", tags=["calls"])
async def list_calls(
    request: Request,
    principal: Reader,
    status: Annotated[str | None, Query(description="live | ended")] = None,
    started_after: Annotated[str | None, Query(description="started after this time (ms since the epoch)")] = None,
    started_before: Annotated[str | None, Query(description="started before this time (ms since the epoch)")] = None,
    sentiment_below: Annotated[str | None, Query(description="the mean score of its finals is below this (-1 to 1)")] = None,
    q: Annotated[str | None, Query(description='words its finals hold: `refund`, `"late fee"`, `appoint*`')] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Response:
    """The account's calls, newest first, that pass every filter given (docs/protocol.md,
    Listing and searching calls); `metadata.K=V` (repeatable) keeps the calls whose metadata holds V
    at K (Call metadata); with `q`, each carries the `snippet` of its first matching final."""
    repeated = [name for name in FILTERS if len(request.query_params.getlist(name)) > 1]
    if repeated:
        raise ApiError(422, "invalid_request", f"{repeated[0]} may be given once")
    given = {
        "status": status, "started_after": started_after, "started_before": started_before,
        "sentiment_below": sentiment_below, "q": q,
    }
    try:
        filters = parse_filters({name: value for name, value in given.items() if value is not None})
        metadata = query_filter(request.query_params.multi_items())
        rows, next_cursor = await runtime_of(request).store.list_calls(
            principal.account,
            filters=filters,
            limit=limit,
            cursor=cursor or None,
            call_ids=principal.calls,
            metadata=metadata,
        )
    except ValueError as exc:  # FilterError, MetadataError, or a cursor this server did not issue
        raise ApiError(422, "invalid_request", str(exc)) from None
    return json_response({"calls": [r.to_json() for r in rows], "next_cursor": next_cursor})


@router.get("/v1/calls/{call_id}", tags=["calls"])
async def get_call(call_id: str, request: Request, principal: Reader) -> Response:
    call = await runtime_of(request).store.get_call(principal.account, _checked_call_id(principal, call_id))
    if call is None:
        raise not_found()
    return json_response(call.to_json())


@router.get("/v1/stats", tags=["calls"])
async def get_stats(
    request: Request, principal: Reader, window: Literal["15m", "1h", "24h"] = "15m"
) -> Response:
    """The account's live quality over the last 15 minutes, hour or day (docs/quality.md): live
    calls, turns and their latency p50/p90/p99, interruptions, the calls' sentiment and how they
    ended, and a series of points across the window."""
    if principal.calls is not None:  # a token limited to some calls may not see the fleet
        raise ApiError(403, "forbidden", "fleet statistics need a credential that sees every call")
    now = int(time.time() * 1000)
    step = WINDOWS[window][1]
    runtime = runtime_of(request)
    minutes, calls = await runtime.store.quality_window(
        principal.account, window_start(window, now), step, now - int(LIVE_TTL_S * 1000)
    )
    body = fleet_stats(window, now, minutes, calls)
    body["latency_warn_ms"] = runtime.settings.latency_warn_ms  # what the dashboard flags
    return json_response(body)


@router.get("/v1/calls/{call_id}/transcript", tags=["calls"])
async def get_transcript(call_id: str, request: Request, principal: Reader) -> Response:
    store = runtime_of(request).store
    call_id = _checked_call_id(principal, call_id)
    if await store.get_call(principal.account, call_id) is None:
        raise not_found()
    finals = await store.events(principal.account, call_id, types=[FINAL])
    utterances = [
        {"seq": e.seq, "ts": e.ts, "speaker": e.data.get("speaker"), "text": e.data.get("text")}
        | ({"sentiment": e.data["sentiment"]} if "sentiment" in e.data else {})
        for e in finals
    ]
    return json_response({"call_id": call_id, "utterances": utterances})


@router.get("/v1/calls/{call_id}/events", tags=["calls"])
async def get_events(
    call_id: str,
    request: Request,
    principal: Reader,
    since: Annotated[str | None, Query(json_schema_extra=_since_schema)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE)] = DEFAULT_EVENTS_PAGE,
) -> Response:
    """A page of the call's stored events (every type but partials) with seq > since, in seq order.

    `next_since` is the seq to ask from for the next page, null once there is no more: a long call
    is read page by page, never whole into one answer.
    """
    try:
        after = 0 if since is None else p.since_in_query(since)  # the event stream's rule and words
    except p.ProtocolError as exc:
        raise ApiError(422, "invalid_request", exc.message) from None
    store = runtime_of(request).store
    call_id = _checked_call_id(principal, call_id)
    if await store.get_call(principal.account, call_id) is None:
        raise not_found()
    events, more = await store.events_page(principal.account, call_id, after, limit)
    body = [
        {"type": e.type, "call_id": call_id, "seq": e.seq, "ts": e.ts, "data": e.data}
        if e.id is None
        else {"type": e.type, "call_id": call_id, "seq": e.seq, "ts": e.ts, "id": e.id, "data": e.data}
        for e in events
        if e.type != PARTIAL
    ]
    return json_response({"call_id": call_id, "events": body, "next_since": events[-1].seq if more else None})


@router.post(
    "/v1/login", response_model=TokenResponse, tags=["auth"], openapi_extra=body_schema(LoginRequest.model_json_schema())
)
async def login(request: Request, body: Annotated[LoginRequest, Depends(body_of(LoginRequest))]) -> dict[str, Any]:
    """Exchange a one-time dashboard login code (printed by `serve`/`demo`) for a JWT.

    The session (12 h from here) hangs off the account's subscribe-only `dashboard` key, made at
    the first login: revoking that key ends every session it minted.
    """
    runtime = runtime_of(request)
    account = await runtime.store.use_login_code(body.code)
    if account is None:
        raise ApiError(401, "unauthorized", "this login link is unknown, used or expired")
    scopes = login_code_scopes(body.code)
    key_id = await _dashboard_key(request, account, scopes)
    session_end = int(time.time()) + _SESSION_S
    return _session_token(request, account, key_id, session_end, scopes, name_in_code(body.code))


@router.post("/v1/login/refresh", response_model=TokenResponse, tags=["auth"])
async def refresh_login(request: Request) -> dict[str, Any]:
    """A dashboard session renews its JWT while the session lasts and its key is live.

    The token is checked like any other use of it (the minting key must be live), and the new
    one is minted by that same key: a refresh never moves a session onto another key.
    """
    principal = await authenticate(request)
    if principal.kind != "jwt" or principal.session_end is None:
        raise ApiError(401, "unauthorized", "only dashboard sessions refresh this way")
    scopes = principal.scopes & _SESSION_SCOPES
    return _session_token(
        request, principal.account, principal.key_id, principal.session_end, scopes, principal.session_name
    )


async def _dashboard_key(request: Request, account: str, scopes: frozenset[str]) -> str:
    """The id of the account's oldest live dashboard key of `scopes` (`dashboard`;
    `dashboard-control`, `dashboard-listen` or `dashboard-control-listen` for sessions that may
    also control calls or listen to them), made if there is none.

    The oldest, read after making one: two first logins at once still share one key, so
    revoking "the dashboard key" ends every session of the account it minted.
    """
    store = runtime_of(request).store
    name = _DASHBOARD_KEYS[scopes]
    live = await _live_dashboard_keys(request, account, name)
    if not live:
        await store.create_key(account, scopes, name=name)
        live = await _live_dashboard_keys(request, account, name)
    if not live:  # revoked the instant it was made
        raise ApiError(503, "unavailable", "the dashboard key was revoked meanwhile; try again")
    return live[0].id


async def _live_dashboard_keys(request: Request, account: str, name: str) -> list[KeyRecord]:
    keys = await runtime_of(request).store.list_keys(account)  # oldest first
    return [k for k in keys if k.name == name and k.revoked_at is None]


def _session_token(
    request: Request, account: str, key_id: str, session_end: int, scopes: frozenset[str], name: str | None
) -> dict[str, Any]:
    signer = runtime_of(request).signer
    assert signer is not None
    ttl = min(signer.default_ttl_s, session_end - int(time.time()))
    if ttl <= 0:
        raise ApiError(401, "unauthorized", "the dashboard session ended; open a new login link")
    token, expires_at = signer.mint(
        account, key_id, ttl_s=ttl, scopes=scopes, extra={"session_exp": session_end}, name=name
    )
    return {"token": token, "expires_at": expires_at}
