"""docs/protocol.md, REST (keys), and `callstream keys --url --key`, against a real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import ServerProcess, final, publish


def api(server: ServerProcess, method: str, path: str, key: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
def admin(server: ServerProcess) -> str:
    return server.create_key(f"acct_{uuid.uuid4().hex[:8]}")


def test_create_list_and_revoke_a_key_of_the_own_account(server: ServerProcess, admin: str) -> None:
    created = api(server, "POST", "/v1/keys", admin, {"scopes": ["publish", "subscribe"], "name": "agent"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) >= {"key", "id", "account", "scopes"}
    assert body["scopes"] == ["publish", "subscribe"]
    new_key = body["key"]
    assert publish(server, new_key, "call_k1", final("hi")).status_code == 202
    listed = api(server, "GET", "/v1/keys", admin).json()["keys"]
    mine = [k for k in listed if k["id"] == body["id"]]
    assert mine
    assert mine[0]["name"] == "agent"
    assert mine[0]["revoked_at"] is None
    assert all(k["account"] == body["account"] for k in listed)
    assert not any("key" in k or new_key in orjson.dumps(k).decode() for k in listed)
    assert api(server, "DELETE", f"/v1/keys/{body['id']}", admin).status_code == 204
    assert publish(server, new_key, "call_k1", final("again")).status_code == 401
    revoked = [k for k in api(server, "GET", "/v1/keys", admin).json()["keys"] if k["id"] == body["id"]]
    assert revoked[0]["revoked_at"] is not None


def test_another_accounts_key_id_answers_404_like_a_missing_one(server: ServerProcess, admin: str) -> None:
    other_id, other_key = server.create_key_with_id(f"acct_{uuid.uuid4().hex[:8]}")
    foreign = api(server, "DELETE", f"/v1/keys/{other_id}", admin)
    missing = api(server, "DELETE", "/v1/keys/key_0000000000000000", admin)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == {"error": {"code": "not_found", "message": "no such key"}} == missing.json()
    assert publish(server, other_key, "call_k2", final("still works")).status_code == 202
    assert other_id not in api(server, "GET", "/v1/keys", admin).text


@pytest.mark.parametrize(
    "body",
    [{"scopes": ["root"]}, {"scopes": []}, {"scopes": "admin"}, {}, {"scopes": ["subscribe"], "name": ""}, {"scopes": ["subscribe"], "account": "x"}],
)
def test_invalid_scopes_and_bodies_are_422_and_create_nothing(server: ServerProcess, admin: str, body: Any) -> None:
    before = api(server, "GET", "/v1/keys", admin).json()["keys"]
    answer = api(server, "POST", "/v1/keys", admin, body)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"
    assert api(server, "GET", "/v1/keys", admin).json()["keys"] == before


def test_only_admin_keys_manage_keys_and_a_key_grants_no_more_than_it_has(server: ServerProcess) -> None:
    account = f"acct_{uuid.uuid4().hex[:8]}"
    reader = server.create_key(account, "subscribe")
    assert api(server, "GET", "/v1/keys", reader).status_code == 403
    assert api(server, "POST", "/v1/keys", reader, {"scopes": ["subscribe"]}).status_code == 403
    token = api(server, "POST", "/v1/tokens", server.create_key(account)).json()["token"]
    assert api(server, "GET", "/v1/keys", token).status_code == 403
    limited = server.create_key(account, "admin,subscribe")
    refused = api(server, "POST", "/v1/keys", limited, {"scopes": ["publish"]})
    assert refused.status_code == 403
    assert "publish" in refused.json()["error"]["message"]
    assert api(server, "GET", "/v1/keys", "cs_nonsense").status_code == 401


async def test_revoking_over_rest_closes_the_keys_sockets_within_5_s(server: ServerProcess, admin: str) -> None:
    created = api(server, "POST", "/v1/keys", admin, {"scopes": ["subscribe"]}).json()
    async with connect(f"{server.ws_url}/v1/events", additional_headers={"Authorization": f"Bearer {created['key']}"}) as ws:
        started = time.monotonic()
        assert api(server, "DELETE", f"/v1/keys/{created['id']}", admin).status_code == 204
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert time.monotonic() - started < 5
    assert ws.close_code == 4001


def test_the_cli_manages_keys_through_the_server(server: ServerProcess, admin: str) -> None:
    flags = ["--url", server.url, "--key", admin]
    made = orjson.loads(server.cli("keys", "create", "--scope", "subscribe", "--name", "cli", "--json", *flags).stdout)
    assert made["key"].startswith("cs_")
    assert made["id"].startswith("key_")
    listed = orjson.loads(server.cli("keys", "list", "--json", *flags).stdout)
    assert [k["name"] for k in listed if k["id"] == made["id"]] == ["cli"]
    server.cli("keys", "revoke", made["id"], *flags)
    again = server.cli("keys", "revoke", "key_0000000000000000", *flags, check=False)
    assert again.returncode == 1
    assert "not_found" in again.stderr
    assert api(server, "GET", "/v1/calls", made["key"]).status_code == 401
