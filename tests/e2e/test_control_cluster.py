"""Live control across real nodes sharing Redis and PostgreSQL: a request made on one node
reaches the producer socket on another, every request still gets exactly one result, and a
holder whose node dies stops holding within the broker's liveness bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers import Cluster, ServerProcess, final, history, recv, recv_until, send

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TIMEOUT_S = 1.5


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLSTREAM_CONTROL_TIMEOUT_S", str(TIMEOUT_S))


async def nodes_and_producer(
    cluster: Cluster, count: int, account: str, call_id: str
) -> tuple[list[ServerProcess], str, ClientConnection]:
    """`count` nodes, a key, and a producer on the second node holding the call."""
    nodes = cluster.start(count)
    key = cluster.key(account)
    return nodes, key, await producer_on(nodes[1], key, call_id)


async def producer_on(node: ServerProcess, key: str, call_id: str) -> ClientConnection:
    ws = await connect(f"{node.ws_url}/v1/ingest?controls=say,end", additional_headers={"Authorization": f"Bearer {key}"})
    await send(ws, {"call_id": call_id, **final("hello"), "ref": 1})
    assert (await recv(ws, 10))["type"] == "ack"
    return ws


async def control(ws: ClientConnection, call_id: str, **args: Any) -> dict[str, Any]:
    await send(ws, {"type": "control", "call_id": call_id, "action": "say", "args": args, "ref": 1})
    return await recv(ws, 10)


def results(node: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in history(node, key, call_id) if e["type"] == "control.result"]


async def settled_results(node: ServerProcess, key: str, call_id: str, count: int) -> list[dict[str, Any]]:
    """The call's stored results once `count` are there (timeouts are published as they fall due,
    late on a busy machine; 15 s at most), read again a second later: a duplicate shows then."""
    settle_by = time.monotonic() + 15
    while len(results(node, key, call_id)) < count and time.monotonic() < settle_by:
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    return results(node, key, call_id)


async def test_a_request_on_a_reaches_the_producer_on_b_and_the_result_comes_back(
    cluster: Cluster, account: str, call_id: str
) -> None:
    (a, _b), key, agent = await nodes_and_producer(cluster, 2, account, call_id)
    async with agent, connect(f"{a.ws_url}/v1/events?token={key}") as supervisor:
        await send(supervisor, {"type": "subscribe", "call_id": call_id})
        await recv_until(supervisor, "subscribed", 10)
        await send(supervisor, {"type": "control", "call_id": call_id, "action": "say", "args": {"text": "Hi"}, "ref": 1})
        ack = (await recv_until(supervisor, "control_ack", 10))[-1]
        relayed = await recv(agent, 10)
        assert (relayed["request_id"], relayed["args"]) == (ack["data"]["request_id"], {"text": "Hi", "interrupt": False})
        result = {"request_id": relayed["request_id"], "ok": True}
        await send(agent, {"call_id": call_id, "type": "control.result", "data": result, "ref": 2})
        assert (await recv_until(supervisor, "control.result", 10))[-1]["data"] == result
    assert results(a, key, call_id) == [result]


async def test_three_nodes_time_a_request_out_once(cluster: Cluster, account: str, call_id: str) -> None:
    (a, _b, _c), key, agent = await nodes_and_producer(cluster, 3, account, call_id)
    async with agent, connect(f"{a.ws_url}/v1/events?token={key}") as supervisor:
        ack = await control(supervisor, call_id, text="Are you there?")
        assert (await recv(agent, 10))["request_id"] == ack["data"]["request_id"]
        await asyncio.sleep(TIMEOUT_S + 1.5)  # every node sweeps the deadlines
    timed_out = {"request_id": ack["data"]["request_id"], "ok": False, "error": "timeout"}
    assert await settled_results(a, key, call_id, 1) == [timed_out]


async def test_a_holder_whose_node_dies_stops_holding_within_the_liveness_bound(
    cluster: Cluster, account: str, call_id: str
) -> None:
    (a, b), key, agent = await nodes_and_producer(cluster, 2, account, call_id)
    async with connect(f"{a.ws_url}/v1/events?token={key}") as supervisor:
        assert (await control(supervisor, call_id, text="first"))["type"] == "control_ack"
        b.kill()  # no close, no release: only its heartbeat stops
        killed = time.monotonic()
        codes = []
        while time.monotonic() - killed < 10:
            codes.append((await control(supervisor, call_id, text="again"))["type"])
            if codes[-1] == "error":
                break
            await asyncio.sleep(0.5)
        assert (await control(supervisor, call_id, text="again"))["data"]["code"] == "no_producer"
        assert time.monotonic() - killed < 8  # five missed heartbeats of a second, and no hang
        await asyncio.sleep(TIMEOUT_S + 1.0)
    await agent.close()
    accepted = codes.count("control_ack") + 1
    outcomes = await settled_results(a, key, call_id, accepted)
    assert len(outcomes) == accepted  # one result per accepted request
    assert {o["error"] for o in outcomes} == {"timeout"}
