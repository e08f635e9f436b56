"""Abuse limits, browser safety and signing-key rotation against real server processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from callstream.auth import key_id_of
from tests.helpers import ServerProcess, ended, final, history, open_events, publish, recv, recv_until, send

APP = "https://app.example.com"
SECRET_A = "rotation-secret-A-" + "a" * 40
SECRET_B = "rotation-secret-B-" + "b" * 40


async def open_ingest(server: ServerProcess, key: str, **kwargs: Any) -> ClientConnection:
    return await connect(f"{server.ws_url}/v1/ingest?token={key}", **kwargs)


async def refused(opening: Any) -> Any:
    """The HTTP answer to a handshake that must not upgrade."""
    try:
        ws = await opening
    except InvalidStatus as exc:
        return exc.response
    await ws.close()
    pytest.fail("the handshake was accepted")


def assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429
    body = orjson.loads(response.body)
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["message"]
    assert body["error"]["retry_after_s"] > 0
    assert int(response.headers["Retry-After"]) >= 1


# ---- connections per key and per account --------------------------------------------------------


async def test_connection_limits_per_key_and_per_account(fresh_server: ServerProcess) -> None:
    fresh_server.env.update(
        {"CALLSTREAM_MAX_CONNECTIONS_PER_KEY": "2", "CALLSTREAM_MAX_CONNECTIONS_PER_ACCOUNT": "3"}
    )
    await asyncio.to_thread(fresh_server.start)
    k1, k2, k3 = [await asyncio.to_thread(fresh_server.create_key, "acme") for _ in range(3)]
    other = await asyncio.to_thread(fresh_server.create_key, "globex")

    first = await open_events(fresh_server, k1)
    second = await open_ingest(fresh_server, k1)  # events and ingest sockets count together
    assert_rate_limited(await refused(open_events(fresh_server, k1)))
    assert_rate_limited(await refused(open_ingest(fresh_server, k1)))
    third = await open_events(fresh_server, k2)
    per_account = await refused(open_events(fresh_server, k3))
    assert_rate_limited(per_account)
    assert "account" in orjson.loads(per_account.body)["error"]["message"]
    async with await open_events(fresh_server, other) as theirs:  # other tenants are unaffected
        await send(theirs, {"type": "ping"})
        assert await recv(theirs) == {"type": "pong"}

    await first.close()  # a slot frees when a socket closes
    deadline = time.monotonic() + 5
    while True:
        try:
            again = await open_events(fresh_server, k1)
            break
        except InvalidStatus:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    await send(again, {"type": "ping"})
    assert await recv(again) == {"type": "pong"}
    for ws in (again, second, third):
        await ws.close()


# ---- events per second per key, REST and ingest together ----------------------------------------


async def test_ingest_rate_limit_is_per_key_across_rest_and_sockets(
    fresh_server: ServerProcess, call_id: str
) -> None:
    # A slow refill (one event every 2 s): a loaded machine's pauses between the steps below
    # cannot refill the 2 events a refused batch needs.
    fresh_server.env.update({"CALLSTREAM_INGEST_RATE": "0.5", "CALLSTREAM_INGEST_BURST": "10"})
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    other = await asyncio.to_thread(fresh_server.create_key, "acme")

    ok = await asyncio.to_thread(publish, fresh_server, key, call_id, [final(f"e{i}") for i in range(10)])
    assert ok.status_code == 202
    limited = await asyncio.to_thread(publish, fresh_server, key, call_id, [final("over"), final("over 2")])
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    error = limited.json()["error"]
    assert error["code"] == "rate_limited"
    assert 0 < error["retry_after_s"] <= 4  # 2 events at 0.5/s
    assert len(history(fresh_server, key, call_id)) == 10  # nothing of the refused batch applied

    async with await open_ingest(fresh_server, key) as ws:  # the same key's budget, on a socket
        frame = [
            {"call_id": call_id, **final("a"), "ref": "a"},
            {"call_id": call_id, **final("b"), "ref": "b"},
        ]
        await ws.send(orjson.dumps(frame).decode())
        errors = [await recv(ws), await recv(ws)]
        assert [e["ref"] for e in errors] == ["a", "b"]
        for e in errors:
            assert (e["type"], e["data"]["code"], e["call_id"]) == ("error", "rate_limited", call_id)
            assert e["data"]["retry_after_s"] > 0
        await asyncio.sleep(errors[-1]["data"]["retry_after_s"] + 0.05)  # the hint is honest
        await ws.send(orjson.dumps({"call_id": call_id, **final("c"), "ref": "c"}).decode())
        assert await recv(ws) == {"type": "ack", "ref": "c", "seq": 11}  # the socket stayed open
    assert [e["data"]["text"] for e in history(fresh_server, key, call_id)][-1] == "c"
    # another key of the same account has its own budget
    assert (await asyncio.to_thread(publish, fresh_server, other, call_id, final("x"))).status_code == 202


async def test_subscriptions_per_connection_are_capped_and_ended_calls_free_their_slot(
    fresh_server: ServerProcess,
) -> None:
    """A dashboard follows call after call on one socket without unsubscribing: once a call has
    ended its subscription is over, so it neither counts against the cap nor stays in memory."""
    fresh_server.env["CALLSTREAM_MAX_SUBSCRIPTIONS"] = "2"
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    done = "call_done_before"
    await asyncio.to_thread(publish, fresh_server, key, done, [final("hi"), ended()])
    ws = await open_events(fresh_server, key)
    try:
        for call_id in ("call_one", "call_two"):
            await send(ws, {"type": "subscribe", "call_id": call_id})
            assert (await recv(ws))["type"] == "subscribed"
        await send(ws, {"type": "subscribe", "call_id": "call_three"})
        refused = await recv(ws)
        assert refused["type"] == "error"
        assert refused["data"]["code"] == "too_many_subscriptions"

        for call_id in ("call_one", "call_two"):
            await asyncio.to_thread(publish, fresh_server, key, call_id, [final("bye"), ended()])
            await recv_until(ws, "call.ended")
        # an ended call, replayed: `subscribed` says so, and no slot is held afterwards
        await send(ws, {"type": "subscribe", "call_id": done, "since": 0})
        replay = await recv_until(ws, "subscribed")
        assert [m["type"] for m in replay] == ["transcript.final", "call.ended", "subscribed"]
        assert replay[-1]["data"]["status"] == "ended"
        for call_id in ("call_three", "call_four"):
            await send(ws, {"type": "subscribe", "call_id": call_id})
            assert (await recv(ws))["type"] == "subscribed"
        await asyncio.to_thread(publish, fresh_server, key, "call_four", final("live"))
        assert (await recv(ws))["data"]["text"] == "live"
        # unsubscribing from a call that ended is still answered (idempotent)
        await send(ws, {"type": "unsubscribe", "call_id": "call_one"})
        assert await recv(ws) == {"type": "unsubscribed", "call_id": "call_one", "data": {"call_id": "call_one"}}
    finally:
        await ws.close()


# ---- browsers: Origin allow-list on both sockets, CORS on REST ----------------------------------


async def test_origin_allow_list_applies_to_events_and_ingest(fresh_server: ServerProcess) -> None:
    fresh_server.env["CALLSTREAM_ALLOWED_ORIGINS"] = APP + ",https://ops.example.com"
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    for opener in (open_events, open_ingest):
        response = await refused(opener(fresh_server, key, origin="https://evil.example.net"))
        assert response.status_code == 403
        assert orjson.loads(response.body)["error"]["code"] == "forbidden"
        response = await refused(opener(fresh_server, key, origin="null"))
        assert response.status_code == 403
        for origin in (APP, None):  # an allowed page; a non-browser client sends no Origin
            ws = await opener(fresh_server, key, origin=origin)
            await ws.close()


def test_cors_for_rest_follows_the_allow_list(fresh_server: ServerProcess) -> None:
    fresh_server.env["CALLSTREAM_ALLOWED_ORIGINS"] = APP
    fresh_server.start()
    key = fresh_server.create_key("acme")
    preflight_headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    good = httpx.options(f"{fresh_server.url}/v1/tokens", headers={"Origin": APP, **preflight_headers})
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == APP
    assert "authorization" in good.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in good.headers  # bearer headers, never cookies
    bad = httpx.options(
        f"{fresh_server.url}/v1/tokens", headers={"Origin": "https://evil.example.net", **preflight_headers}
    )
    assert "access-control-allow-origin" not in bad.headers
    simple = httpx.get(
        f"{fresh_server.url}/v1/calls", headers={"Origin": APP, "Authorization": f"Bearer {key}"}
    )
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == APP
    foreign = httpx.get(
        f"{fresh_server.url}/v1/calls",
        headers={"Origin": "https://evil.example.net", "Authorization": f"Bearer {key}"},
    )
    assert "access-control-allow-origin" not in foreign.headers


def test_no_cors_headers_without_an_allow_list(server: ServerProcess, api_key: str) -> None:
    response = httpx.get(
        f"{server.url}/v1/calls", headers={"Origin": APP, "Authorization": f"Bearer {api_key}"}
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


# ---- JWT: pinned algorithm, exp required, rotation by kid ---------------------------------------


def mint(server: ServerProcess, key: str) -> str:
    response = httpx.post(f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def status_with(server: ServerProcess, token: str) -> int:
    return httpx.get(f"{server.url}/v1/calls", headers={"Authorization": f"Bearer {token}"}).status_code


def test_signing_key_rotation_by_kid(fresh_server: ServerProcess) -> None:
    fresh_server.env["CALLSTREAM_SECRET"] = SECRET_A
    fresh_server.start()
    key = fresh_server.create_key("acme")
    old = mint(fresh_server, key)
    assert jwt.get_unverified_header(old)["kid"] == key_id_of(SECRET_A)
    claims = jwt.decode(old, options={"verify_signature": False})

    # Forgeries with the real secret but the wrong algorithm, or without exp, are refused.
    hs512 = jwt.encode(claims, SECRET_A + "x" * 10, algorithm="HS512", headers={"kid": key_id_of(SECRET_A)})
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    unexpiring = jwt.encode(no_exp, SECRET_A, algorithm="HS256", headers={"kid": key_id_of(SECRET_A)})
    unknown_kid = jwt.encode(claims, SECRET_A, algorithm="HS256", headers={"kid": "0123456789ab"})
    for forged in (hs512, unexpiring, unknown_kid):
        assert status_with(fresh_server, forged) == 401

    fresh_server.stop()  # rotate: B signs from now on, A still verifies
    fresh_server.env.update({"CALLSTREAM_SECRET": SECRET_B, "CALLSTREAM_PREVIOUS_SECRETS": SECRET_A})
    fresh_server.start()
    assert status_with(fresh_server, old) == 200
    new = mint(fresh_server, key)
    assert jwt.get_unverified_header(new)["kid"] == key_id_of(SECRET_B)
    assert status_with(fresh_server, new) == 200
    stale = jwt.encode(
        {**claims, "exp": int(time.time()) - 60},
        SECRET_A,
        algorithm="HS256",
        headers={"kid": key_id_of(SECRET_A)},
    )
    assert status_with(fresh_server, stale) == 401  # a previous key's token still expires

    fresh_server.stop()  # A retired: its tokens are refused, B's keep working
    del fresh_server.env["CALLSTREAM_PREVIOUS_SECRETS"]
    fresh_server.start()
    assert status_with(fresh_server, old) == 401
    assert status_with(fresh_server, new) == 200


def test_short_previous_secrets_are_refused_at_start(fresh_server: ServerProcess) -> None:
    fresh_server.env["CALLSTREAM_PREVIOUS_SECRETS"] = "short"
    with pytest.raises(RuntimeError, match="PREVIOUS_SECRETS"):
        fresh_server.start(timeout=15)
