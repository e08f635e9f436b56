"""Outages of the store and the broker, on services of the test's own (tests/faults.py).

While PostgreSQL or Redis is stopped, every request that needs it answers 503 `unavailable` with
`Retry-After`, never a 500; a key the node has seen keeps authenticating (for up to 5 minutes
since the store last confirmed it) while an unknown credential gets 503, not 401; `/healthz` is
503 during and 200 after; once the service is back the node serves as before without a restart;
and its background loops log one line when the outage starts and one when it ends
(docs/protocol.md, Outages).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.faults import PrivatePostgres, RedisServer
from tests.helpers import ServerProcess, final, recv, recv_until, send

pytestmark = pytest.mark.postgres

# What the node's loops that use the store say in their log lines (src/callstream/outages.py).
STORE_LOOPS = ("the revocation poll", "the webhook worker's store access", "writing events to the store")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


async def start_node(tmp_path: Path, pg: PrivatePostgres, redis: RedisServer | None, **env: str) -> ServerProcess:
    args = ["--database", pg.url] + (["--broker", redis.url] if redis is not None else [])
    node = ServerProcess(tmp_path, *args, env=env)
    return await asyncio.to_thread(node.start)


async def wait_for_health(http: httpx.AsyncClient, node: ServerProcess, status: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while (answer := await http.get(f"{node.url}/healthz")).status_code != status:
        assert time.monotonic() < deadline, f"/healthz stayed {answer.status_code}, not {status}"
        await asyncio.sleep(0.1)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, (answer.request.url, answer.status_code, answer.text)
    error = answer.json()["error"]
    assert error["code"] == "unavailable", answer.text
    assert error["message"], answer.text
    assert error["retry_after_s"] > 0, answer.text
    assert answer.headers["retry-after"] == "1", answer.headers


async def refused(node: ServerProcess, path: str, credential: str) -> httpx.Response:
    """The HTTP answer that refused a socket handshake (it fails the test if the socket opens)."""
    with pytest.raises(InvalidStatus) as refusal:
        await connect(f"{node.ws_url}{path}", additional_headers=bearer(credential))
    response = refusal.value.response
    return httpx.Response(
        response.status_code,
        headers=dict(response.headers.raw_items()),
        content=bytes(response.body or b""),
        request=httpx.Request("GET", f"{node.ws_url}{path}"),
    )


async def open_socket(node: ServerProcess, path: str, credential: str) -> ClientConnection:
    return await connect(f"{node.ws_url}{path}", additional_headers=bearer(credential))


async def ingest_answer(ws: ClientConnection, call_id: str, text: str, ref: str) -> dict[str, Any]:
    """Publish one final on an ingest socket; its ack or error."""
    await ws.send(orjson.dumps({"call_id": call_id, **final(text), "ref": ref}).decode())
    return await recv(ws, 20)


async def publish(http: httpx.AsyncClient, node: ServerProcess, key: str, call_id: str, text: str) -> httpx.Response:
    return await http.post(f"{node.url}/v1/calls/{call_id}/events", json=final(text), headers=bearer(key))


def reads(call_id: str) -> list[str]:
    return [f"/v1/calls/{call_id}", "/v1/calls", f"/v1/calls/{call_id}/events", f"/v1/calls/{call_id}/transcript"]


async def logged_once_each(node: ServerProcess, loops: tuple[str, ...], within: float = 15) -> str:
    """The node's log once each loop has logged its outage's end: one line when it started, one
    when it ended, nothing in between, no traceback, no 500."""
    deadline = time.monotonic() + within
    while True:
        log = node.log_path.read_text(errors="replace")
        if all(f"{loop} works again" in log for loop in loops) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for loop in loops:
        assert log.count(f"{loop} failed") == 1, (loop, log[-3000:])
        assert log.count(f"{loop} works again") == 1, (loop, log[-3000:])
    assert "Traceback" not in log, log[-3000:]
    assert '" 500' not in log, log[-3000:]
    assert "Exception in ASGI application" not in log, log[-3000:]
    return log


@pytest.mark.parametrize("broker", ["embedded", "redis"])
async def test_a_postgresql_outage_answers_503_and_known_keys_keep_working(
    tmp_path: Path,
    private_pg: PrivatePostgres,
    broker: str,
    request: pytest.FixtureRequest,
    http: httpx.AsyncClient,
) -> None:
    redis: RedisServer | None = request.getfixturevalue("private_redis") if broker == "redis" else None
    node = await start_node(tmp_path, private_pg, redis)
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    try:
        key = await asyncio.to_thread(node.create_key, "acme")
        stranger = await asyncio.to_thread(node.create_key, "acme")  # never shown to the node before
        assert (await publish(http, node, key, call_id, "before")).status_code == 202
        events = await open_socket(node, "/v1/events", key)
        ingest = await open_socket(node, "/v1/ingest", key)

        private_pg.stop()
        await wait_for_health(http, node, 503)
        await asyncio.sleep(2.5)  # past the node's short key cache: what follows asks the store

        for path in reads(call_id):
            assert_unavailable(await http.get(node.url + path, headers=bearer(key)))
        assert_unavailable(await publish(http, node, key, call_id, "during"))
        for unknown in (stranger, "cs_never_issued"):  # cannot be checked: neither 200 nor 401
            assert_unavailable(await http.get(f"{node.url}/v1/calls", headers=bearer(unknown)))
            for path in ("/v1/events", "/v1/ingest"):
                assert_unavailable(await refused(node, path, unknown))

        # The key the node has seen keeps authenticating: what needs no store still works.
        minted = await http.post(f"{node.url}/v1/tokens", headers=bearer(key))
        assert minted.status_code == 200, minted.text
        late = await open_socket(node, "/v1/events", minted.json()["token"])
        await send(late, {"type": "ping"})
        assert (await recv(late))["type"] == "pong"
        await late.close()
        # Open sockets say what they cannot do and stay open.
        failed = await ingest_answer(ingest, call_id, "during", "r1")
        assert (failed["type"], failed["ref"], failed["data"]["code"]) == ("error", "r1", "internal"), failed
        await send(events, {"type": "auth", "token": "cs_never_issued"})
        assert (await recv(events))["data"]["code"] == "internal"
        await send(events, {"type": "ping"})
        assert (await recv(events))["type"] == "pong"

        private_pg.start()
        await wait_for_health(http, node, 200)
        assert (await http.get(f"{node.url}/v1/calls/{call_id}", headers=bearer(key))).status_code == 200
        assert (await http.get(f"{node.url}/v1/calls", headers=bearer(stranger))).status_code == 200
        assert (await publish(http, node, key, call_id, "after")).status_code == 202
        acked = await ingest_answer(ingest, call_id, "after, by socket", "r2")
        assert (acked["type"], acked["ref"]) == ("ack", "r2"), acked
        await send(events, {"type": "subscribe", "call_id": call_id, "since": 0})
        seen = await recv_until(events, "subscribed", 20)
        texts = [e["data"]["text"] for e in seen if e["type"] == "transcript.final"]
        assert (texts[0], texts[-1]) == ("before", "after, by socket"), seen
        await logged_once_each(node, STORE_LOOPS)
    finally:
        await asyncio.to_thread(node.kill)


async def test_a_redis_outage_answers_503_and_reads_go_on(
    tmp_path: Path, private_pg: PrivatePostgres, private_redis: RedisServer, http: httpx.AsyncClient
) -> None:
    node = await start_node(tmp_path, private_pg, private_redis)
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    try:
        key = await asyncio.to_thread(node.create_key, "acme")
        assert (await publish(http, node, key, call_id, "before")).status_code == 202
        ingest = await open_socket(node, "/v1/ingest", key)

        private_redis.stop()
        await wait_for_health(http, node, 503)
        assert_unavailable(await publish(http, node, key, call_id, "during"))
        for path in ("/v1/events", "/v1/ingest"):  # a socket is counted in Redis (the account's quota)
            assert_unavailable(await refused(node, path, key))
        for path in reads(call_id):  # reads need the store alone
            answer = await http.get(node.url + path, headers=bearer(key))
            assert answer.status_code == 200, (path, answer.text)
        failed = await ingest_answer(ingest, call_id, "during", "r1")
        assert (failed["type"], failed["ref"]) == ("error", "r1"), failed

        private_redis.start()
        await wait_for_health(http, node, 200)
        events = await open_socket(node, "/v1/events", key)
        await send(events, {"type": "subscribe", "call_id": call_id})
        await recv_until(events, "subscribed", 20)
        assert (await publish(http, node, key, call_id, "after")).status_code == 202
        live = await recv_until(events, "transcript.final", 20)
        assert live[-1]["data"]["text"] == "after"
        log = await logged_once_each(node, ())
        assert log.count("lost the Redis pub/sub connection") == 1, log[-3000:]
    finally:
        await asyncio.to_thread(node.kill)


async def test_a_known_key_lasts_its_grace_and_a_revoked_key_does_not_come_back(
    tmp_path: Path, private_pg: PrivatePostgres, http: httpx.AsyncClient
) -> None:
    """The grace runs from the store's last confirmation (6 s here, 5 minutes by default); a key
    revoked while the store was up is not let in again by an outage that follows."""
    grace = 6.0
    node = await start_node(tmp_path, private_pg, None, CALLSTREAM_KEY_OUTAGE_GRACE_S=str(grace))

    async def mint(credential: str) -> httpx.Response:  # needs the key, not the store
        return await http.post(f"{node.url}/v1/tokens", headers=bearer(credential))

    try:
        key = await asyncio.to_thread(node.create_key, "acme")
        revoked_id, revoked = await asyncio.to_thread(node.create_key_with_id, "acme")
        assert (await mint(revoked)).status_code == 200
        await asyncio.to_thread(node.revoke_key, revoked_id)
        await asyncio.sleep(3)  # the revocation poll's bound passes; the revoked key is not used again
        confirmed = time.monotonic()
        assert (await mint(key)).status_code == 200

        private_pg.stop()
        await wait_for_health(http, node, 503)
        await asyncio.sleep(max(0.0, confirmed + 2.5 - time.monotonic()))  # past the short key cache
        assert (await mint(key)).status_code == 200
        assert_unavailable(await mint(revoked))
        await asyncio.sleep(max(0.0, confirmed + grace + 2.5 - time.monotonic()))
        assert_unavailable(await mint(key))

        private_pg.start()
        await wait_for_health(http, node, 200)
        assert (await mint(key)).status_code == 200
        assert (await mint(revoked)).status_code == 401
    finally:
        await asyncio.to_thread(node.kill)
