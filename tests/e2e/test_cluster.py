"""Several real `callstream serve` nodes on loopback ports, sharing Redis and PostgreSQL.

What a cluster promises a subscriber: whichever node it is connected to, it receives every
event of the call in `seq` order; when its node dies or Redis restarts, it reconnects (to any
node) with `since` and misses nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.faults import RedisServer
from tests.helpers import Cluster, ServerProcess, ended, final

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

EVENT_TYPES = {
    "transcript.partial",
    "transcript.final",
    "agent.state",
    "function.call",
    "function.result",
    "call.ended",
}


@pytest.fixture
def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


async def publish(
    client: httpx.AsyncClient, node: ServerProcess, key: str, call_id: str, events: Any
) -> list[int]:
    response = await client.post(
        f"{node.url}/v1/calls/{call_id}/events",
        content=orjson.dumps(events),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json()["seq"])


async def publish_retrying(
    client: httpx.AsyncClient, node: ServerProcess, key: str, call_id: str, events: Any
) -> None:
    """A producer that keeps trying through an outage (503s, refused connections)."""
    for _ in range(300):
        try:
            await publish(client, node, key, call_id, events)
            return
        except httpx.HTTPError:
            await asyncio.sleep(0.05)
    raise AssertionError("the cluster did not accept the event again within 15 s")


class Follower:
    """A subscriber that resumes with `since` on whichever node answers, like a real client."""

    def __init__(self, urls: list[str], key: str, call_id: str) -> None:
        self.urls, self.key, self.call_id = urls, key, call_id
        self.seqs: list[int] = []
        self.live = asyncio.Event()
        self.reconnects = 0
        self.closes: list[int | None] = []

    async def started(self) -> asyncio.Task[list[int]]:
        """Follow in a task of its own, returned once subscribed; its result: every seq received."""
        task = asyncio.create_task(self.run())
        await asyncio.wait_for(self.live.wait(), 10)
        return task

    async def run(self) -> list[int]:
        attempt = 0
        while True:
            url = self.urls[min(attempt, len(self.urls) - 1)]
            try:
                if await self._session(url):
                    return self.seqs
            except (ConnectionClosed, OSError, InvalidStatus) as exc:
                if isinstance(exc, ConnectionClosed):
                    self.closes.append(exc.rcvd.code if exc.rcvd else None)
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(0.1)

    async def _session(self, url: str) -> bool:
        async with connect(f"{url}/v1/events?token={self.key}", open_timeout=3) as ws:
            message: dict[str, Any] = {"type": "subscribe", "call_id": self.call_id}
            if self.seqs:
                message["since"] = self.seqs[-1]
            await ws.send(orjson.dumps(message).decode())
            async for raw in ws:
                event = orjson.loads(raw)
                if event["type"] == "subscribed":
                    self.live.set()
                elif event["type"] == "error":
                    return False  # e.g. the broker is down: reconnect and try again
                elif event["type"] in EVENT_TYPES:
                    self.seqs.append(event["seq"])
                    if event["type"] == "call.ended":
                        return True
        return False


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_subscriber_on_b_receives_in_order_what_a_accepts(
    cluster: Cluster, account: str, call_id: str, http: httpx.AsyncClient
) -> None:
    a, b = cluster.start(2)
    key = cluster.key(account)
    follower = Follower([b.ws_url], key, call_id)
    task = await follower.started()
    for i in range(10):
        await publish(http, a, key, call_id, [final(f"line {i}.{j}") for j in range(5)])
    await publish(http, a, key, call_id, ended())
    assert await asyncio.wait_for(task, 20) == list(range(1, 52))
    assert follower.reconnects == 0


async def test_wildcard_on_a_sees_a_call_that_starts_on_c(
    cluster: Cluster, account: str, call_id: str, http: httpx.AsyncClient
) -> None:
    a, _b, c = cluster.start(3)
    key = cluster.key(account)
    other_key = cluster.key(account + "_other")
    async with connect(f"{a.ws_url}/v1/events?token={key}") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "call_id": "*"}).decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
        await publish(http, c, other_key, call_id, final("not yours"))  # another tenant, same id
        await publish(http, c, key, call_id, [final("hello"), final("world")])
        got = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
    assert [(m["call_id"], m["seq"], m["data"]["text"]) for m in got] == [
        (call_id, 1, "hello"),
        (call_id, 2, "world"),
    ]


async def test_node_killed_mid_call_subscriber_resumes_on_another(
    cluster: Cluster, account: str, call_id: str, http: httpx.AsyncClient
) -> None:
    a, b = cluster.start(2)
    key = cluster.key(account)
    follower = Follower([b.ws_url, a.ws_url], key, call_id)
    task = await follower.started()
    for i in range(60):
        if i == 20:
            await asyncio.to_thread(b.kill)  # SIGKILL: no goodbye to anyone
        await publish(http, a, key, call_id, final(f"line {i}"))
        await asyncio.sleep(0.01)
    await publish(http, a, key, call_id, ended())
    assert await asyncio.wait_for(task, 30) == list(range(1, 62))
    assert follower.reconnects >= 1


async def test_redis_restart_mid_call_closes_the_gap_through_since(
    tmp_path: Path, cluster_database: str, account: str, call_id: str, http: httpx.AsyncClient
) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis = RedisServer(redis_dir).start()
    nodes = Cluster(tmp_path, cluster_database, redis.url)
    try:
        a, b = nodes.start(2)
        key = nodes.key(account)
        follower = Follower([b.ws_url], key, call_id)
        task = await follower.started()
        for i in range(20):
            await publish(http, a, key, call_id, final(f"before {i}"))
        redis.stop()
        for _ in range(100):  # a node deaf to Redis says so
            if (await http.get(f"{b.url}/healthz")).status_code == 503:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("node B stayed healthy with Redis down")
        await asyncio.sleep(2.5)  # long enough for the nodes' reconnect backoff to reach 2 s
        redis.start()
        # Publish at once through A: B may still be reconnecting and miss these live.
        for i in range(20):
            await publish_retrying(http, a, key, call_id, final(f"after {i}"))
        await publish_retrying(http, a, key, call_id, ended())
        seqs = await asyncio.wait_for(task, 30)
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= 41
        assert (await http.get(f"{b.url}/healthz")).status_code == 200
    finally:
        nodes.stop()
        redis.stop()
