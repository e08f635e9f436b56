"""REST for post-call webhooks (docs/webhooks.md): endpoints, secrets, the delivery log, replay.

Every route needs the `admin` scope and acts on the caller's account only; another account's
endpoint or message answers 404 exactly like a missing one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, StrictInt, StrictStr
from starlette.responses import Response

from callstream.auth import Principal
from callstream.events import MAX_INT64
from callstream.server.deps import ApiError, body_of, body_schema, not_found, require, runtime_of
from callstream.webhooks.hooks import repo_of
from callstream.webhooks.payloads import EVENT_TYPES
from callstream.webhooks.repo import EndpointLimitError, ReplayError, WebhookRepo
from callstream.webhooks.ssrf import UnsafeURLError, check_url

__all__ = ["router"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Admin = Annotated[Principal, Depends(require("admin"))]
EventType = Literal["call.ended", "transcript.completed"]


class WebhookCreate(BaseModel):
    url: str = Field(description="http(s) URL that receives the POSTs", max_length=2048)
    events: list[EventType] | None = Field(
        None, description="event types to receive; absent or empty: all of them"
    )


class WebhookInfo(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: int = Field(description="ms since the Unix epoch")
    disabled: bool = False
    disabled_at: int | None = None
    disabled_reason: str | None = None


class WebhookCreated(WebhookInfo):
    secret: str = Field(description="`whsec_…` signing secret; shown only here")


class WebhookList(BaseModel):
    webhooks: list[WebhookInfo]


class SecretRotated(BaseModel):
    id: str
    secret: str = Field(description="the new `whsec_…` secret; shown only here")
    previous_secret_expires_at: int = Field(
        description="ms since the epoch until which the old secret also signs"
    )


class AttemptInfo(BaseModel):
    attempt: int
    attempted_at: int
    status_code: int | None
    latency_ms: int
    error: str | None
    result: Literal["succeeded", "retry", "failed", "gone"]
    next_attempt_at: int | None


class DeliveryInfo(BaseModel):
    message_id: str = Field(description="the `webhook-id` header, the same on every attempt")
    endpoint_id: str
    type: str
    call_id: str
    status: Literal["pending", "succeeded", "failed"]
    attempt_count: int
    created_at: int
    next_attempt_at: int | None
    give_up_at: int
    last_status_code: int | None
    last_error: str | None
    finished_at: int | None
    attempts: list[AttemptInfo] = Field(default_factory=list)


class DeliveryList(BaseModel):
    deliveries: list[DeliveryInfo]


class ReplayRequest(BaseModel):
    since: StrictStr | Annotated[StrictInt, Field(ge=0, le=MAX_INT64)] = Field(
        description="ISO 8601 time, or ms since the epoch"
    )
    status: Literal["failed"] = "failed"
    endpoint_id: str | None = Field(None, description="only this endpoint's messages")


class ReplayResult(BaseModel):
    replayed: int
    message_ids: list[str]


def _repo(request: Request) -> WebhookRepo:
    return repo_of(runtime_of(request))


def _since_ms(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "invalid_request", "since must be an ISO 8601 time or ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@router.post("", status_code=201, response_model=WebhookCreated, openapi_extra=body_schema(WebhookCreate.model_json_schema()))
async def create_webhook(
    request: Request, principal: Admin, body: Annotated[WebhookCreate, Depends(body_of(WebhookCreate))]
) -> dict[str, Any]:
    """Register an endpoint. The URL must resolve to public addresses (the SSRF rule)."""
    repo = _repo(request)
    try:
        checked = await check_url(body.url, allow_private=repo.config.allow_private)
    except UnsafeURLError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    events = [t for t in EVENT_TYPES if not body.events or t in body.events]
    try:
        endpoint, secret = await repo.create_endpoint(principal.account, str(checked.url), events)
    except EndpointLimitError as exc:
        raise ApiError(409, "limit_exceeded", str(exc)) from None
    return {**endpoint.to_json(), "secret": secret}


@router.get("", response_model=WebhookList)
async def list_webhooks(request: Request, principal: Admin) -> dict[str, Any]:
    """The account's endpoints, oldest first; secrets are never listed."""
    endpoints = await _repo(request).list_endpoints(principal.account)
    return {"webhooks": [e.to_json() for e in endpoints]}


@router.get("/{webhook_id}", response_model=WebhookInfo)
async def get_webhook(webhook_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    endpoint = await _repo(request).get_endpoint(principal.account, webhook_id)
    if endpoint is None:
        raise not_found("webhook")
    return endpoint.to_json()


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, request: Request, principal: Admin) -> Response:
    """Remove the endpoint, its pending messages and its log."""
    if not await _repo(request).delete_endpoint(principal.account, webhook_id):
        raise not_found("webhook")
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate", response_model=SecretRotated)
async def rotate_secret(webhook_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    """A new secret; the old one keeps signing too (both signatures) during the overlap."""
    rotated = await _repo(request).rotate_secret(principal.account, webhook_id)
    if rotated is None:
        raise not_found("webhook")
    endpoint, secret = rotated
    return {
        "id": endpoint.id,
        "secret": secret,
        "previous_secret_expires_at": endpoint.previous_secret_until,
    }


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
async def list_deliveries(
    webhook_id: str,
    request: Request,
    principal: Admin,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: Literal["pending", "succeeded", "failed"] | None = None,
) -> dict[str, Any]:
    """Newest messages first, each with every attempt: time, code, latency, error, next try."""
    repo = _repo(request)
    if await repo.get_endpoint(principal.account, webhook_id) is None:
        raise not_found("webhook")
    deliveries = await repo.deliveries(principal.account, webhook_id, limit=limit, status=status)
    return {"deliveries": deliveries}


@router.post("/deliveries/{message_id}/replay", status_code=202, response_model=DeliveryInfo)
async def replay_delivery(message_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    """Send a message again now, with the same `webhook-id` and a fresh retry window."""
    try:
        message = await _repo(request).replay(principal.account, message_id)
    except ReplayError as exc:
        raise ApiError(409, "endpoint_disabled", str(exc)) from None
    if message is None:
        raise not_found("delivery")
    return message


@router.post(
    "/replay", status_code=202, response_model=ReplayResult, openapi_extra=body_schema(ReplayRequest.model_json_schema())
)
async def replay_failed(
    request: Request, principal: Admin, body: Annotated[ReplayRequest, Depends(body_of(ReplayRequest))]
) -> dict[str, Any]:
    """Re-queue every message that failed since a time (endpoints still enabled)."""
    ids = await _repo(request).replay_failed(principal.account, _since_ms(body.since), body.endpoint_id)
    return {"replayed": len(ids), "message_ids": ids}
