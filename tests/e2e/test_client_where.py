"""`Client.subscribe("*", where=…)` against a real server (docs/client.md, docs/protocol.md Call
metadata): only the calls whose metadata matches are delivered, a call joins when its metadata
comes to match, the filter holds across a reconnect, and a filter the server would refuse is
refused before anything is sent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from callstream import Client
from callstream.client import CallEnded, Event, Subscribed
from tests.helpers import ServerProcess, ended, final, key_of, publish

SPRING = {"metadata": {"campaign": "spring"}}


def _call() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def started(**metadata: Any) -> dict[str, Any]:
    return {"type": "call.started", "data": {"metadata": metadata}}


def post(server: ServerProcess, key: str, call_id: str, events: list[dict[str, Any]]) -> None:
    assert publish(server, key, call_id, events).status_code == 202


async def until_ended(events: AsyncIterator[Event], call_id: str) -> list[tuple[str, str]]:
    """(call id, type) of every call event received up to `call_id`'s `call.ended`."""
    got: list[tuple[str, str]] = []
    async with asyncio.timeout(15):
        async for event in events:
            if event.is_call_event:
                got.append((event.call_id, str(event.raw["type"])))
            if isinstance(event, CallEnded) and event.call_id == call_id:
                return got
    raise AssertionError(f"the iterator ended after {got}")


async def wildcard_subscribed(events: AsyncIterator[Event]) -> None:
    async with asyncio.timeout(15):
        async for event in events:
            if isinstance(event, Subscribed) and event.call_id == "*":
                return


async def test_where_delivers_only_the_calls_whose_metadata_matches_and_a_call_joins_later(
    server: ServerProcess,
) -> None:
    key = key_of(server)
    spring, summer, later = _call(), _call(), _call()
    async with Client(server.url, key) as client:
        await client.subscribe("*", where=SPRING)
        events = client.events()
        await wildcard_subscribed(events)
        await asyncio.to_thread(
            post, server, key, summer, [started(campaign="summer"), final("not mine"), ended()]
        )
        await asyncio.to_thread(
            post, server, key, spring, [started(campaign="spring"), final("mine"), ended()]
        )
        await asyncio.to_thread(post, server, key, later, [final("before it joins")])
        patched = await asyncio.to_thread(
            httpx.patch, f"{server.url}/v1/calls/{later}", content=orjson.dumps(SPRING),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=10,
        )  # fmt: skip
        assert patched.status_code == 200, patched.text
        await asyncio.to_thread(post, server, key, later, [final("joined"), ended()])
        got = await until_ended(events, later)
    assert got == [
        (spring, "call.started"), (spring, "transcript.final"), (spring, "call.ended"),
        (later, "call.metadata"), (later, "transcript.final"), (later, "call.ended"),
    ]  # fmt: skip


async def test_where_is_sent_again_after_the_server_restarts(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    key = key_of(fresh_server)
    async with Client(fresh_server.url, key, reconnect_max_delay=0.5) as client:
        await client.subscribe("*", where=SPRING)
        events = client.events()
        await wildcard_subscribed(events)
        await asyncio.to_thread(fresh_server.restart)
        await wildcard_subscribed(events)  # yielded again once the client has resubscribed
        summer, spring = _call(), _call()
        await asyncio.to_thread(
            post, fresh_server, key, summer, [started(campaign="summer"), final("not mine"), ended()]
        )
        await asyncio.to_thread(post, fresh_server, key, spring, [started(campaign="spring"), ended()])
        got = await until_ended(events, spring)
        assert client.statistics().connections >= 2
    assert got == [(spring, "call.started"), (spring, "call.ended")]


@pytest.mark.parametrize(
    ("call_id", "where", "transport", "message"),
    [
        ("call_a", SPRING, "websocket", "only allowed with"),
        ("*", {"campaign": "spring"}, "websocket", "where must be"),
        ("*", {"metadata": {}}, "websocket", "non-empty"),
        ("*", {"metadata": {"campaign": ["a", "b"]}}, "websocket", "where.metadata.campaign"),
        ("*", {"metadata": {"score": float("nan")}}, "websocket", "where.metadata.score"),
        ("*", SPRING, "sse", "websocket transport"),
    ],
)
async def test_a_where_the_server_would_refuse_raises_and_subscribes_nothing(
    call_id: str, where: dict[str, Any], transport: Any, message: str
) -> None:
    client = Client("http://127.0.0.1:1", "k", transport=transport)
    with pytest.raises(ValueError, match=message):
        await client.subscribe(call_id, where=where)
    assert client.statistics().subscriptions == 0
