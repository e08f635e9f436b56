"""Browser sessions end with the key that minted them, on every use of their JWT (docs/protocol.md, Credentials)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import ServerProcess, open_events, recv, recv_until, send

SECRET = "sessions-secret-" + "s" * 40


def login(server: ServerProcess, account: str) -> str:
    """A dashboard JWT, obtained the way the page does: a one-time link's code at /v1/login."""
    code = server.login_url(account).split("?login=")[1]
    response = httpx.post(f"{server.url}/v1/login", json={"code": code}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def refresh(server: ServerProcess, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.url}/v1/login/refresh", headers=headers, timeout=10)


def list_calls(server: ServerProcess, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/calls", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def minted_by(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["key"])


async def handshake_status(server: ServerProcess, token: str) -> int:
    """The HTTP status a new events socket gets with this token, as the dashboard sends it."""
    try:
        async with connect(f"{server.ws_url}/v1/events", subprotocols=["bearer", token]):  # type: ignore[list-item]
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


async def test_revoking_the_dashboard_key_ends_its_sessions_everywhere_within_5s(server: ServerProcess) -> None:
    account = f"sess_{uuid.uuid4().hex[:8]}"
    token = login(server, account)
    renewed = refresh(server, token)
    assert renewed.status_code == 200, renewed.text
    fresh = str(renewed.json()["token"])
    assert minted_by(fresh) == minted_by(token), "a refresh keeps the session on its key"
    assert list_calls(server, fresh).status_code == 200
    other = server.create_key(account)  # a live key of the same account, to try `auth` with

    async with await open_events(server, fresh) as dashboard, await open_events(server, other) as bystander:
        await send(dashboard, {"type": "subscribe", "call_id": "*"})
        assert (await recv(dashboard))["type"] == "subscribed"
        server.cli("keys", "revoke", minted_by(token), *server.database_args())
        revoked_at = time.monotonic()

        # The open socket: an `error` with code `unauthorized`, then close 4001.
        seen: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                seen.append(await recv(dashboard, timeout=6))
        assert time.monotonic() - revoked_at < 5
        assert [m["data"]["code"] for m in seen if m["type"] == "error"] == ["unauthorized"]
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001

        # Every other use of a token of that session: refresh, REST, a new handshake, `auth`.
        for stale in (token, fresh):
            assert_unauthorized(refresh(server, stale))
            assert_unauthorized(list_calls(server, stale))
            assert await handshake_status(server, stale) == 401
        await send(bystander, {"type": "auth", "token": fresh})
        refused = await recv(bystander)
        assert refused["type"] == "error"
        assert refused["data"]["code"] == "unauthorized"
        await send(bystander, {"type": "ping"})
        assert (await recv_until(bystander, "pong"))[-1]["type"] == "pong"  # still open, on its key
        assert time.monotonic() - revoked_at < 5

    # The way back is a new login link: it mints on a new dashboard key.
    again = login(server, account)
    assert minted_by(again) != minted_by(token)
    assert list_calls(server, again).status_code == 200
    assert refresh(server, again).status_code == 200


async def test_a_token_living_longer_than_the_maximum_ttl_is_refused(fresh_server: ServerProcess) -> None:
    fresh_server.env.update({"CALLSTREAM_SECRET": SECRET, "CALLSTREAM_TOKEN_MAX_TTL_S": "600"})
    fresh_server.start()
    key = fresh_server.create_key("acme")
    minted = httpx.post(
        f"{fresh_server.url}/v1/tokens", json={"ttl_s": 600}, headers={"Authorization": f"Bearer {key}"}
    )
    assert minted.status_code == 200, minted.text
    token = str(minted.json()["token"])
    assert list_calls(fresh_server, token).status_code == 200
    # Our secret, a live minting key, not expired: only the lifetime is too long.
    claims = jwt.decode(token, options={"verify_signature": False})
    headers = jwt.get_unverified_header(token)
    for lifetime in (601, 30 * 86_400):
        forged = jwt.encode({**claims, "exp": claims["iat"] + lifetime}, SECRET, algorithm="HS256", headers=headers)
        assert_unauthorized(list_calls(fresh_server, forged))
        assert await handshake_status(fresh_server, forged) == 401


def test_a_listen_login_makes_a_session_that_may_listen_and_only_it(server: ServerProcess) -> None:
    """`callstream login --listen` (with or without `--control`) gives the session `listen`, kept
    through a refresh; a plain link does not, and the prefix cannot be added to a plain code."""
    account = f"sess_{uuid.uuid4().hex[:8]}"

    def code(**flags: bool) -> str:
        return server.login_url(account, **flags).split("?login=")[1]

    def session(login_code: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/login", json={"code": login_code}, timeout=10)

    def scopes(token: str) -> set[str]:
        return set(jwt.decode(token, options={"verify_signature": False})["scope"].split())

    def recording(token: str) -> int:
        url = f"{server.url}/v1/calls/no_such_call/recording"
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code

    plain, listening, both = (
        session(code(**f)).json()["token"] for f in ({}, {"listen": True}, {"listen": True, "control": True})
    )
    assert scopes(plain) == {"subscribe"}
    assert scopes(listening) == {"subscribe", "listen"}
    assert scopes(both) == {"subscribe", "control", "listen"}
    assert scopes(refresh(server, listening).json()["token"]) == {"subscribe", "listen"}
    assert recording(plain) == 403  # a recording needs `listen`
    assert recording(listening) == 404  # allowed: there is just no such recording
    assert len({minted_by(plain), minted_by(listening), minted_by(both)}) == 3  # a dashboard key per kind
    assert session("lsn-" + code()).status_code == 401
