"""`DELETE /v1/calls/{call_id}` (docs/privacy.md, Erasure): erase an ended call everywhere."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from callstream import protocol as p
from callstream.auth import Principal
from callstream.server.deps import ApiError, not_found, require, runtime_of, visible_call_id
from callstream.server.erasure import CallLiveError, CallNotFoundError

router = APIRouter()
Admin = Annotated[Principal, Depends(require("admin"))]


@router.delete("/v1/calls/{call_id}", status_code=204, tags=["calls"])
async def delete_call(call_id: str, request: Request, principal: Admin) -> Response:
    """Erase an ended call: its events, transcript, metadata, replay history and webhook messages,
    on every node. Afterwards the call answers like one that never existed, and its id may start
    a new call. A live call: 409 `call_not_live` (end it first). Another account's call: 404,
    like a missing one. 503 `unavailable` while its last events are still being stored."""
    erasure = runtime_of(request).erasure
    try:
        await erasure.erase_call(principal.account, visible_call_id(principal, call_id))
    except CallNotFoundError:
        raise not_found() from None
    except CallLiveError:
        message = f"call {call_id} has not ended: end it first (publish call.ended), then erase it"
        raise ApiError(409, p.ErrorCode.CALL_NOT_LIVE, message) from None
    return Response(status_code=204)
