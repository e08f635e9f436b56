"""`PATCH /v1/calls/{call_id}` (docs/protocol.md, Call metadata): merge into a live call's metadata.

The patch travels the publish path as the server's own event `call.metadata` `{metadata}`: the
broker merges it where it sequences (limits checked on the merged result, atomically with every
other change of the call), subscribers see the change live (a `where` subscription joins or
leaves the call with it), and the store keeps it on the same write paths as every event. An
ended call's history is closed, so its metadata is too: 409 `call_ended`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from callstream import protocol as p
from callstream.auth import Principal
from callstream.broker import BrokerUnavailableError, CallEndedError, MetadataRefusedError, QuotaExceededError
from callstream.events import METADATA, NewEvent, is_valid_call_id
from callstream.metadata import MAX_BYTES, MAX_KEYS, MetadataError, Patch, check_patch
from callstream.server import deps
from callstream.server.deps import ApiError, not_found, unavailable
from callstream.store import CallFailedError, StoreUnavailableError

router = APIRouter()
Patcher = Annotated[Principal, Depends(deps.require("publish", "admin"))]

_BODY = deps.body_schema(
    {
        "type": "object",
        "required": ["metadata"],
        "properties": {
            "metadata": {
                "type": "object",
                "maxProperties": MAX_KEYS,
                "description": f"merged into the call's; null removes a key; {MAX_KEYS} keys and "
                f"{MAX_BYTES} bytes of JSON at most once merged",
            }
        },
        "additionalProperties": False,
    },
    example={"metadata": {"campaign": "spring", "customer": "cus_42", "vip": True}},
)


def _patch_of(obj: Any) -> Patch:
    if not isinstance(obj, dict) or set(obj) != {"metadata"}:
        raise ApiError(422, "invalid_message", 'the body is {"metadata": {key: value, ...}}')
    try:
        return check_patch(obj["metadata"])
    except MetadataError as exc:
        raise ApiError(422, "invalid_message", str(exc)) from None


@router.patch("/v1/calls/{call_id}", tags=["calls"], openapi_extra=_BODY)
async def patch_call(
    call_id: str, request: Request, principal: Patcher, body: deps.JsonBody
) -> Response:
    """Merge `metadata` into a live call's: keys set, null removes one. Answers the call as
    `GET /v1/calls/{call_id}` does once the change is stored. Refusals: 404 (no such call, or
    not this credential's), 409 `call_ended`, 422 `invalid_message` (the merged metadata would
    pass a limit: nothing changed), 429 `quota_exceeded`, 503 `unavailable`."""
    if not is_valid_call_id(call_id) or not principal.may_see(call_id):
        raise not_found()
    patch = _patch_of(body)
    runtime = deps.runtime_of(request)
    account = principal.account
    timeout = runtime.settings.store_timeout_s
    try:
        state = await runtime.broker.state(account, call_id)
        if state.status == "pending":
            raise not_found()
        _, durable = await runtime.publish(account, [NewEvent(call_id, METADATA, {"metadata": patch})])
        await asyncio.wait_for(asyncio.shield(durable), timeout)
        call = await runtime.store.get_call(account, call_id)
    except CallEndedError:
        raise ApiError(409, "call_ended", f"call {call_id} has ended; its metadata is final") from None
    except MetadataRefusedError as exc:
        raise ApiError(422, "invalid_message", exc.reason) from None
    except QuotaExceededError as exc:
        raise ApiError(429, p.ErrorCode.QUOTA_EXCEEDED, exc.reason, quota=exc.quota) from None
    except CallFailedError as exc:
        raise ApiError(503, "internal", str(exc)) from None
    except (BrokerUnavailableError, StoreUnavailableError) as exc:
        raise unavailable(exc) from None
    except TimeoutError:
        message = f"the store did not confirm within {timeout:g} s: the change may or may not be stored"
        raise ApiError(503, "unavailable", message, retry_after_s=deps.UNAVAILABLE_RETRY_S) from None
    if call is None:  # stored, then erased meanwhile
        raise not_found()
    return deps.json_response(call.to_json())
