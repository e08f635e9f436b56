"""Broker fixtures: the same contract runs over the memory and the Redis broker.

`nodes` is a factory of started brokers ("nodes") that share one backend: for Redis they share
the server and a key prefix unique to the test; the memory broker has a single node. `calls`
plays the store: the loader the brokers seed unknown calls from.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from callstream.broker.base import LIVE_TTL_S, UNSTORED_AFTER_S, Broker, CallState, Quotas
from callstream.broker.memory import MemoryBroker
from callstream.events import Event, NewEvent
from tests.broker.services import REDIS_HOST, REDIS_PORT, REDIS_URL, require
from tests.faults import ReplyCutter


class Node:
    """A started broker and everything it delivered, in order."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.got: list[Event] = []

    def seqs(self, call_id: str) -> list[int]:
        return [e.seq for e in self.got if e.call_id == call_id]

    async def wait_for(self, predicate: Callable[[], bool], wait_s: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + wait_s
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; delivered so far: {[(e.call_id, e.seq) for e in self.got]}")
            await asyncio.sleep(0.01)

    async def wait_seqs(self, call_id: str, n: int, wait_s: float = 5.0) -> list[int]:
        await self.wait_for(lambda: len(self.seqs(call_id)) >= n, wait_s)
        await asyncio.sleep(0.05)  # room for a duplicate to show up
        return self.seqs(call_id)


class Calls(dict[tuple[str, str], CallState]):
    """The store's view of calls, as the broker's `load_call` sees it."""

    async def load(self, account: str, call_id: str) -> CallState | None:
        await asyncio.sleep(0)
        return self.get((account, call_id))


class Nodes:
    def __init__(self, kind: str, calls: Calls, url: str = REDIS_URL) -> None:
        self.kind = kind
        self.calls = calls
        self.url = url
        self.prefix = f"cstest:{secrets.token_hex(6)}:"
        self.started: list[Node] = []
        # What the nodes a test adds are configured with (set before `add`).
        self.quotas = Quotas()
        self.history_ttl_s = 3600.0
        self.live_ttl_s: float = LIVE_TTL_S
        self.unstored_after_s: float = UNSTORED_AFTER_S
        self.control_timeout_s = 10.0

    def make(self, url: str | None = None) -> Broker:
        if self.kind == "memory":
            if self.started:
                pytest.skip("the memory broker is one process: one node only")
            return MemoryBroker(
                history_ttl_s=self.history_ttl_s,
                quotas=self.quotas,
                live_ttl_s=self.live_ttl_s,
                control_timeout_s=self.control_timeout_s,
            )
        from callstream.broker.redis import RedisBroker

        return RedisBroker(
            url or self.url,
            history_ttl_s=self.history_ttl_s,
            prefix=self.prefix,
            ping_interval_s=0.2,
            ping_timeout_s=1.0,
            quotas=self.quotas,
            live_ttl_s=self.live_ttl_s,
            unstored_after_s=self.unstored_after_s,
            control_timeout_s=self.control_timeout_s,
        )

    async def add(self, url: str | None = None) -> Node:
        """Start a node; `url`: its own way to the shared Redis (say, through a proxy)."""
        broker = self.make(url)
        node = Node(broker)
        await broker.start(node.got.extend, self.calls.load)
        self.started.append(node)
        return node

    async def close(self) -> None:
        for node in self.started:
            await node.broker.close()
        if self.kind == "redis":
            client = aioredis.Redis.from_url(self.url)
            try:
                keys = [k async for k in client.scan_iter(match=self.prefix + "*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest, calls: Calls) -> AsyncIterator[Nodes]:
    if request.param == "redis":
        require("Redis", REDIS_HOST, REDIS_PORT)
    cluster = Nodes(request.param, calls)
    yield cluster
    await cluster.close()


@pytest.fixture
async def redis_nodes(calls: Calls) -> AsyncIterator[Nodes]:
    """Redis only: several nodes on one Redis (what the memory broker cannot be)."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    cluster = Nodes("redis", calls)
    yield cluster
    await cluster.close()


@pytest.fixture
async def reply_cutter() -> AsyncIterator[ReplyCutter]:
    """A proxy to the machine's Redis that loses the reply to a chosen command (`ReplyCutter`)."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    cutter = ReplyCutter()
    yield cutter
    await cutter.stop()


def ev(call_id: str, event_type: str = "agent.state", **data: object) -> NewEvent:
    """A valid event of the given type for `call_id`."""
    defaults: dict[str, dict[str, object]] = {
        "agent.state": {"state": "thinking"},
        "transcript.partial": {"speaker": "user", "text": "hel", "is_final": False},
        "transcript.final": {"speaker": "user", "text": "hello", "is_final": True},
        "call.ended": {"status": "completed", "duration_ms": 1000},
        "function.call": {"name": "lookup", "args": {}},
    }
    return NewEvent(call_id, event_type, {**defaults[event_type], **data})
