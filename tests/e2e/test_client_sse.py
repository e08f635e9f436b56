"""`Client(transport="sse")` against real server processes: the same events and the same resume
as over the WebSocket, on one node, across a restart, and across two nodes on Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from callstream import AuthError, Client
from callstream.client import Subscribed, TranscriptFinal
from tests.helpers import Cluster, ServerProcess, ended, final, partial
from tests.test_client import collect, next_of, post


def new_call() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


async def test_events_of_several_calls_arrive_over_sse_and_subscriptions_change_live(
    server: ServerProcess, api_key: str
) -> None:
    a, b = new_call(), new_call()
    await post(server, api_key, a, final("a1"))
    async with Client(server.url, api_key, transport="sse") as client:
        await client.subscribe(a, since=0)
        events = client.events()
        assert [e.seq for e in await collect(events, a, 1)] == [1]
        await client.subscribe(b)  # a new stream, resuming a where it was
        while (await next_of(events, Subscribed)).call_id != b:
            pass
        await post(server, api_key, b, [partial("b"), final("b1")])
        await post(server, api_key, a, [final("a2"), ended()])
        got_b = await collect(events, b, 2)
        got_a = await collect(events, a, 2)
        await client.unsubscribe(b)
        await post(server, api_key, b, final("b2: not for us"))
        await post(server, api_key, new_call(), final("elsewhere"))
        with pytest.raises(TimeoutError):
            await next_of(events, TranscriptFinal, within=1.0)
    assert [e.seq for e in got_b] == [1, 2]
    assert [e.seq for e in got_a] == [2, 3]


async def test_a_refused_key_raises_at_start_over_sse(server: ServerProcess) -> None:
    with pytest.raises(AuthError):
        async with Client(server.url, "cs_not_a_real_key", transport="sse"):
            pass


async def test_a_server_restart_loses_nothing_and_duplicates_nothing_over_sse(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    key = fresh_server.create_key("acme")
    a, b = new_call(), new_call()
    async with Client(fresh_server.url, key, transport="sse", reconnect_max_delay=0.5) as client:
        events = client.events(a, b)
        await next_of(events, Subscribed)
        await next_of(events, Subscribed)
        await post(fresh_server, key, a, [final(f"a before {n}") for n in range(2)])
        await post(fresh_server, key, b, final("b before"))
        got_a, got_b = await collect(events, a, 2), await collect(events, b, 1)
        await asyncio.to_thread(fresh_server.stop)
        await asyncio.to_thread(fresh_server.start)
        await post(fresh_server, key, a, [final("a during"), ended()])
        await post(fresh_server, key, b, final("b during"))
        got_a += await collect(events, a, 2)
        got_b += await collect(events, b, 1)
        assert client.statistics().connections >= 2
    assert [e.seq for e in got_a] == [1, 2, 3, 4]
    assert [e.seq for e in got_b] == [1, 2]


async def test_a_stream_resumes_on_another_node_through_redis(cluster: Cluster, account: str) -> None:
    first, second = cluster.start(2)
    key = first.create_key(account)
    a = new_call()
    async with Client(first.url, key, transport="sse", reconnect_max_delay=0.5) as client:
        events = client.events(a)
        await next_of(events, Subscribed)
        await post(second, key, a, [final("one"), final("two")])  # accepted on the other node
        got = await collect(events, a, 2)
        last = client.last_seq(a)
    assert [e.seq for e in got] == [1, 2]
    assert last == 2
    await post(second, key, a, [final("three"), final("four")])
    async with Client(second.url, key, transport="sse") as client:
        await client.subscribe(a, since=last)
        rest = await collect(client.events(), a, 2)
    assert [e.data["text"] for e in rest] == ["three", "four"]
