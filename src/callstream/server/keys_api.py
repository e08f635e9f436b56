"""Keys over REST (docs/protocol.md, REST): create, list and revoke the account's API keys.

Every route needs an API key with the `admin` scope and acts on that key's account only:
another account's key id answers 404, exactly like one that does not exist. A new key gets at
most the scopes of the key that creates it, so `admin` cannot mint more than it holds. Revoking
goes through the store, whose revocation poll ends the key's sockets and streams on every node
(`Runtime._watch_revocations`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from callstream.auth import Principal
from callstream.server.deps import ApiError, body_of, body_schema, not_found, require, runtime_of
from callstream.store import KeyRecord

__all__ = ["router"]

router = APIRouter(prefix="/v1/keys", tags=["keys"])
Admin = Annotated[Principal, Depends(require("admin"))]
Scope = Literal["publish", "subscribe", "control", "listen", "admin"]


class KeyCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    scopes: list[Scope] = Field(
        min_length=1, max_length=8, description="what the key may do; at most the creating key's scopes",
        examples=[["subscribe"]],
    )
    name: str | None = Field(None, min_length=1, max_length=200, description="a label for humans", examples=["wallboard"])


class KeyInfo(BaseModel):
    id: str = Field(examples=["key_3f9a0c1d2e4b5a69"])
    account: str = Field(examples=["acme"])
    name: str | None = Field(examples=["wallboard"])
    scopes: list[str] = Field(examples=[["subscribe"]])
    created_at: int = Field(description="ms since the Unix epoch")
    revoked_at: int | None = Field(description="ms since the Unix epoch; null while active")


class KeyCreated(BaseModel):
    key: str = Field(description="the secret: shown only here, stored hashed", examples=["cs_…"])
    id: str = Field(examples=["key_3f9a0c1d2e4b5a69"])
    account: str = Field(examples=["acme"])
    scopes: list[str] = Field(examples=[["subscribe"]])
    name: str | None = None


class KeyList(BaseModel):
    keys: list[KeyInfo]


def _only_keys(principal: Principal) -> None:
    if principal.kind != "key":  # a JWT never holds admin; this is belt and braces
        raise ApiError(403, "forbidden", "keys are managed with an API key")


def _info(record: KeyRecord) -> KeyInfo:
    return KeyInfo(
        id=record.id,
        account=record.account,
        name=record.name,
        scopes=sorted(record.scopes),
        created_at=record.created_at,
        revoked_at=record.revoked_at,
    )


@router.post("", status_code=201, response_model=KeyCreated, openapi_extra=body_schema(KeyCreate.model_json_schema()))
async def create_key(
    request: Request, principal: Admin, body: Annotated[KeyCreate, Depends(body_of(KeyCreate))]
) -> KeyCreated:
    """Create a key of the caller's account; its secret is in this answer and nowhere else."""
    _only_keys(principal)
    scopes = frozenset(body.scopes)
    if extra := sorted(scopes - principal.scopes):
        raise ApiError(403, "forbidden", f"a key cannot grant scopes it lacks: {', '.join(extra)}")
    record, secret = await runtime_of(request).store.create_key(principal.account, scopes, body.name)
    return KeyCreated(key=secret, id=record.id, account=record.account, scopes=sorted(scopes), name=record.name)


@router.get("", response_model=KeyList)
async def list_keys(request: Request, principal: Admin) -> KeyList:
    """The account's keys, oldest first, revoked ones included (never a secret)."""
    _only_keys(principal)
    records = await runtime_of(request).store.list_keys(principal.account)
    return KeyList(keys=[_info(r) for r in records])


@router.delete("/{key_id}", status_code=204, response_class=Response)
async def revoke_key(key_id: str, request: Request, principal: Admin) -> Response:
    """Revoke a key: its REST calls fail at once, its sockets and streams end within 5 s.

    Revoking a revoked key answers 204 again; another account's key answers 404."""
    _only_keys(principal)
    runtime = runtime_of(request)
    record = await runtime.store.key_by_id(key_id) if len(key_id) <= 64 else None
    if record is None or record.account != principal.account:
        raise not_found("key")
    if await runtime.store.revoke_key(key_id):
        runtime.tasks.start(runtime.end_keys({key_id}))  # this node at once, the others by their poll
    return Response(status_code=204)
