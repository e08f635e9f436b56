"""Call metadata through a real server on each store (docs/protocol.md, Call metadata): set by
`call.started` or any event, merged by PATCH, shown by GET and the list, filtered by
`metadata.K=V`, carried by the webhook, and followed live by `*` with `where`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect

from tests.helpers import (
    ServerProcess,
    ended,
    final,
    key_of,
    no_message,
    open_events,
    publish,
    recv,
    recv_until,
    send,
)
from tests.webhooks.conftest import Receiver


def _call() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def started(**metadata: Any) -> dict[str, Any]:
    return {"type": "call.started", "data": {"metadata": metadata}}


def patch(server: ServerProcess, key: str, call_id: str, body: Any) -> httpx.Response:
    return httpx.patch(
        f"{server.url}/v1/calls/{call_id}", content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=10,
    )  # fmt: skip


def get(server: ServerProcess, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_metadata_is_set_merged_shown_and_listed(store_node: ServerProcess) -> None:
    key = key_of(store_node)
    spring, summer = _call(), _call()
    assert publish(store_node, key, spring, [started(agent="ada", campaign="spring", tier=2), final("hi")]).status_code == 202
    assert publish(store_node, key, summer, [final("hello", metadata={"campaign": "summer", "vip": True})]).status_code == 202
    assert get(store_node, key, f"/v1/calls/{spring}").json()["metadata"] == {"agent": "ada", "campaign": "spring", "tier": 2}

    response = patch(store_node, key, spring, {"metadata": {"tier": None, "customer": "cus_42"}})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"agent": "ada", "campaign": "spring", "customer": "cus_42"}
    assert get(store_node, key, f"/v1/calls/{spring}").json()["metadata"] == response.json()["metadata"]
    patched = [e for e in get(store_node, key, f"/v1/calls/{spring}/events").json()["events"] if e["type"] == "call.metadata"]
    assert [e["data"] for e in patched] == [{"metadata": {"tier": None, "customer": "cus_42"}}]  # in the history

    listed = get(store_node, key, "/v1/calls").json()["calls"]
    assert {c["call_id"]: c["metadata"]["campaign"] for c in listed} == {spring: "spring", summer: "summer"}
    assert [c["call_id"] for c in get(store_node, key, "/v1/calls", **{"metadata.campaign": "spring"}).json()["calls"]] == [spring]
    assert [c["call_id"] for c in get(store_node, key, "/v1/calls", **{"metadata.vip": "true"}).json()["calls"]] == [summer]
    both = get(store_node, key, "/v1/calls", **{"metadata.campaign": "spring", "metadata.agent": "bob"})
    assert both.json()["calls"] == []
    bad = get(store_node, key, "/v1/calls", **{"metadata.a b": "x"})
    assert bad.status_code == 422
    assert "keys must be" in bad.json()["error"]["message"]


def test_past_a_limit_nothing_changes_and_the_reason_is_given(store_node: ServerProcess) -> None:
    key, call_id = key_of(store_node), _call()
    full = {f"k{i}": i for i in range(32)}
    assert publish(store_node, key, call_id, started(**full)).status_code == 202
    too_many = patch(store_node, key, call_id, {"metadata": {"one_more": 1}})
    assert too_many.status_code == 422
    assert "would hold 33 keys; at most 32" in too_many.json()["error"]["message"]
    too_big = publish(store_node, key, call_id, final("hi", metadata={"k0": "x" * 5000}))
    assert too_big.status_code == 422
    assert "at most 4096" in too_big.json()["error"]["message"]
    for body in ({"metadata": {"agent": {"name": "ada"}}}, {"metadata": "ada"}, {"agent": "ada"}, [1]):
        refused = patch(store_node, key, call_id, body)
        assert refused.status_code == 422, body
        assert refused.json()["error"]["code"] == "invalid_message"
    call = get(store_node, key, f"/v1/calls/{call_id}").json()
    assert (call["metadata"], call["last_seq"]) == (full, 1)


def test_patch_answers_another_account_s_call_like_a_missing_one(store_node: ServerProcess) -> None:
    key, other, call_id = key_of(store_node), key_of(store_node), _call()
    assert publish(store_node, key, call_id, started(campaign="spring")).status_code == 202
    theirs = patch(store_node, other, call_id, {"metadata": {"campaign": "stolen"}})
    missing = patch(store_node, other, _call(), {"metadata": {"campaign": "stolen"}})
    assert (theirs.status_code, theirs.json()) == (missing.status_code, missing.json())
    assert theirs.status_code == 404
    assert get(store_node, key, f"/v1/calls/{call_id}").json()["metadata"] == {"campaign": "spring"}
    reader = store_node.create_key(f"acct_{uuid.uuid4().hex[:8]}", "subscribe")
    assert patch(store_node, reader, call_id, {"metadata": {}}).status_code == 403
    assert publish(store_node, key, call_id, ended()).status_code == 202
    closed = patch(store_node, key, call_id, {"metadata": {"campaign": "late"}})
    assert (closed.status_code, closed.json()["error"]["code"]) == (409, "call_ended")


async def test_a_where_subscription_follows_the_calls_whose_metadata_matches(store_node: ServerProcess) -> None:
    key = key_of(store_node)
    spring, summer, later = _call(), _call(), _call()
    async with await open_events(store_node, key) as ws:
        await send(ws, {"type": "subscribe", "call_id": "*", "where": {"metadata": {"campaign": "spring"}}})
        assert (await recv(ws))["type"] == "subscribed"
        publish(store_node, key, spring, [started(campaign="spring", agent="ada"), final("one")])
        publish(store_node, key, summer, [started(campaign="summer"), final("nope")])
        publish(store_node, key, later, final("before it joins"))
        got = [await recv(ws), await recv(ws)]
        assert [(m["call_id"], m["type"]) for m in got] == [(spring, "call.started"), (spring, "transcript.final")]
        assert got[0]["data"]["metadata"] == {"campaign": "spring", "agent": "ada"}

        assert patch(store_node, key, later, {"metadata": {"campaign": "spring"}}).status_code == 200
        publish(store_node, key, later, final("joined"))
        got = [await recv(ws), await recv(ws)]
        assert [(m["call_id"], m["type"], m["seq"]) for m in got] == [(later, "call.metadata", 2), (later, "transcript.final", 3)]

        assert patch(store_node, key, spring, {"metadata": {"campaign": "summer"}}).status_code == 200
        publish(store_node, key, spring, [final("gone"), ended()])
        publish(store_node, key, later, ended())
        last = await recv_until(ws, "call.ended")
        assert [(m["call_id"], m["type"]) for m in last] == [(later, "call.ended")]
        assert await no_message(ws)

        await send(ws, {"type": "subscribe", "call_id": "*", "where": {"metadata": {"campaign": ["x"]}}})
        error = await recv(ws)
        assert (error["type"], error["data"]["code"]) == ("error", "invalid_message")
        assert "where.metadata.campaign" in error["data"]["message"]


async def test_an_ingest_patch_past_a_limit_is_refused_with_its_ref(store_node: ServerProcess) -> None:
    key, call_id = key_of(store_node), _call()
    async with connect(f"{store_node.ws_url}/v1/ingest?token={key}") as ws:
        frame = {"call_id": call_id, "type": "call.started", "data": {"metadata": {"a": "x" * 5000}}, "ref": "r1"}
        await ws.send(orjson.dumps(frame).decode())
        error = orjson.loads(await ws.recv())
        assert (error["type"], error["ref"], error["data"]["code"]) == ("error", "r1", "invalid_message")
        assert "at most 4096" in error["data"]["message"]
        frame = {"call_id": call_id, "type": "call.started", "data": {"metadata": {"a": "b"}}, "ref": "r2"}
        await ws.send(orjson.dumps(frame).decode())
        ack = orjson.loads(await ws.recv())
        assert (ack["type"], ack["ref"], ack["seq"]) == ("ack", "r2", 1)


async def test_the_call_ended_webhook_carries_the_metadata(store_node: ServerProcess) -> None:
    key, call_id = key_of(store_node), _call()
    rx = await Receiver().start()
    try:
        created = httpx.post(
            f"{store_node.url}/v1/webhooks", json={"url": rx.url, "events": ["call.ended"]},
            headers={"Authorization": f"Bearer {key}"}, timeout=10,
        )  # fmt: skip
        assert created.status_code == 201, created.text
        publish(store_node, key, call_id, [started(agent="ada", campaign="spring"), final("hi")])
        assert patch(store_node, key, call_id, {"metadata": {"customer": "cus_42"}}).status_code == 200
        publish(store_node, key, call_id, ended())
        for _ in range(200):
            if rx.requests:
                break
            await asyncio.sleep(0.1)
        body = orjson.loads(rx.requests[0].body)
        assert body["data"]["metadata"] == {"agent": "ada", "campaign": "spring", "customer": "cus_42"}
    finally:
        await rx.close()
