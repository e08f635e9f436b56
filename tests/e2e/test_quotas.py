"""Quotas per account against real server processes: one embedded node, then two nodes on Redis.

Past a quota only the offending request is refused (429 `quota_exceeded` over REST and at a
socket's handshake, an `error` with the event's `ref` on /v1/ingest): the account's other calls
and sockets go on, and other accounts never notice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.helpers import Cluster, ServerProcess, ended, final, open_events, partial, publish, recv, send

QUOTAS = {
    "CALLSTREAM_QUOTA_LIVE_CALLS": "3",
    "CALLSTREAM_QUOTA_EVENTS_PER_CALL": "5",
    "CALLSTREAM_QUOTA_SOCKETS": "2",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An embedded node with small quotas; each test uses accounts of its own."""
    proc = ServerProcess(tmp_path_factory.mktemp("quotas"), env=QUOTAS).start()
    yield proc
    proc.kill()


def new_key(server: ServerProcess) -> str:
    return server.create_key(f"acct_{secrets.token_hex(5)}")


async def open_ingest(server: ServerProcess, key: str) -> ClientConnection:
    return await connect(f"{server.ws_url}/v1/ingest", additional_headers={"Authorization": f"Bearer {key}"})


async def refused(server: ServerProcess, key: str, path: str = "/v1/events") -> httpx.Response | Any:
    """The HTTP answer to a socket handshake that must not upgrade."""
    try:
        ws = await connect(f"{server.ws_url}{path}?token={key}")
    except InvalidStatus as exc:
        return exc.response
    await ws.close()
    pytest.fail("the handshake was accepted")


def assert_quota_exceeded(status: int, body: bytes, headers: Any, retry: bool = True) -> dict[str, Any]:
    assert status == 429
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert error["code"] == "quota_exceeded"
    assert error["message"]
    assert ("Retry-After" in headers) is retry
    return error


async def a_publish(server: ServerProcess, key: str, call_id: str, events: Any) -> httpx.Response:
    return await asyncio.to_thread(publish, server, key, call_id, events)


# ---- one embedded node -------------------------------------------------------------------------


async def test_a_4th_live_call_is_refused_while_the_3_and_other_accounts_go_on(node: ServerProcess) -> None:
    key, other = await asyncio.to_thread(new_key, node), await asyncio.to_thread(new_key, node)
    for call_id in ("c1", "c2", "c3"):
        assert (await a_publish(node, key, call_id, final("hi"))).status_code == 202
    response = await a_publish(node, key, "c4", [final("hi"), final("there")])
    error = assert_quota_exceeded(response.status_code, response.content, response.headers)
    assert error["index"] == 0
    assert "3 live calls" in error["message"]
    assert (await a_publish(node, key, "c1", final("still here"))).json()["seq"] == [2]
    for call_id in ("c2", "c3", "c4"):  # another account has a quota of its own
        assert (await a_publish(node, other, call_id, final("hi"))).status_code == 202
    assert (await a_publish(node, key, "c2", ended())).status_code == 202
    assert (await a_publish(node, key, "c4", final("now"))).json()["seq"] == [1]


async def test_events_past_the_per_call_quota_are_refused_and_the_call_can_still_end(
    node: ServerProcess,
) -> None:
    key = await asyncio.to_thread(new_key, node)
    assert (await a_publish(node, key, "long", [partial("h"), final("hi"), final("a"), final("b")])).status_code == 202
    response = await a_publish(node, key, "long", [final("c"), final("d")])
    error = assert_quota_exceeded(response.status_code, response.content, response.headers, retry=False)
    assert error["index"] == 1
    assert (await a_publish(node, key, "long", final("c"))).json()["seq"] == [5]
    assert (await a_publish(node, key, "long", final("d"))).status_code == 429
    assert (await a_publish(node, key, "long", ended())).json()["seq"] == [6]


async def test_ingest_refuses_only_the_event_past_a_quota_and_stays_open(node: ServerProcess) -> None:
    key = await asyncio.to_thread(new_key, node)
    async with await open_ingest(node, key) as ws:
        frame = [{"call_id": "in", "ref": i, **final(f"t{i}")} for i in range(1, 7)]
        frame.append({"call_id": "other", "ref": "o", **final("fine")})
        await send(ws, frame)  # type: ignore[arg-type]
        got = [await recv(ws) for _ in range(7)]
        (error,) = [m for m in got if m["type"] == "error"]
        assert (error["ref"], error["call_id"], error["data"]["code"]) == (6, "in", "quota_exceeded")
        acks = [(m["ref"], m["seq"]) for m in got if m["type"] == "ack"]
        assert acks == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), ("o", 1)]  # the rest went through
        await send(ws, {"call_id": "in", "ref": "end", **ended()})
        assert await recv(ws) == {"type": "ack", "ref": "end", "seq": 6}


async def test_a_3rd_socket_of_an_account_is_refused_until_one_closes(node: ServerProcess) -> None:
    key, other = await asyncio.to_thread(new_key, node), await asyncio.to_thread(new_key, node)
    events = await open_events(node, key)
    ingest = await open_ingest(node, key)  # both endpoints count together
    for path in ("/v1/events", "/v1/ingest"):
        answer = await refused(node, key, path)
        assert_quota_exceeded(answer.status_code, answer.body, answer.headers)
    async with await open_events(node, other) as theirs:
        await send(theirs, {"type": "ping"})
        assert await recv(theirs) == {"type": "pong"}
    await send(ingest, {"call_id": "c", "ref": 1, **final("hi")})  # the open sockets go on
    assert await recv(ingest) == {"type": "ack", "ref": 1, "seq": 1}
    await events.close()
    again = await _open_within(node, key, 5.0)
    await send(again, {"type": "ping"})
    assert await recv(again) == {"type": "pong"}
    await again.close()
    await ingest.close()


async def _open_within(server: ServerProcess, key: str, seconds: float) -> ClientConnection:
    """A socket as soon as the account has a free slot again (the close is seen asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await open_events(server, key)
        except InvalidStatus:
            assert time.monotonic() < deadline, "the account's slot never came back"
            await asyncio.sleep(0.1)


# ---- two nodes on Redis: the quotas hold for the cluster -------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
async def test_quotas_hold_across_nodes_and_a_dead_node_frees_its_sockets(cluster: Cluster) -> None:
    a, b = cluster.start(2, env=QUOTAS)
    key = await asyncio.to_thread(new_key, a)
    for node, call_id in ((a, "c1"), (b, "c2"), (a, "c3")):
        assert (await a_publish(node, key, call_id, final("hi"))).status_code == 202
    for node in (a, b):
        response = await a_publish(node, key, "c4", final("hi"))
        assert_quota_exceeded(response.status_code, response.content, response.headers)
    assert (await a_publish(b, key, "c1", [final("x"), final("y"), final("z")])).json()["seq"] == [2, 3, 4]
    response = await a_publish(a, key, "c1", [final("5"), final("6")])  # 6 events: past 5 on any node
    assert_quota_exceeded(response.status_code, response.content, response.headers, retry=False)

    await open_events(a, key)  # held by a, which then dies without closing it
    on_b = await open_events(b, key)
    answer = await refused(b, key)
    assert_quota_exceeded(answer.status_code, answer.body, answer.headers)
    await asyncio.to_thread(a.kill)
    started = time.monotonic()
    again = await _open_within(b, key, 15.0)  # a's heartbeat stops: its socket stops counting
    print(f"a dead node's socket freed after {time.monotonic() - started:.1f} s")
    await again.close()
    await on_b.close()
