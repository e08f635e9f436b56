"""The live campaign filter across two nodes on Redis: the node that delivers judges each event
by the call's metadata, even when it was set on the other node before anyone there subscribed."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from tests.helpers import Cluster, final, no_message, open_events, publish, recv, send

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def _call() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


async def test_where_on_b_follows_metadata_set_on_a(cluster: Cluster, account: str) -> None:
    a, b = cluster.start(2)
    key = cluster.key(account)
    spring, summer = _call(), _call()
    started = {"type": "call.started", "data": {"metadata": {"campaign": "spring"}}}
    assert publish(a, key, spring, started).status_code == 202  # before anyone on b subscribed
    assert publish(a, key, summer, final("x", metadata={"campaign": "summer"})).status_code == 202
    async with await open_events(b, key) as ws:
        await send(ws, {"type": "subscribe", "call_id": "*", "where": {"metadata": {"campaign": "spring"}}})
        assert (await recv(ws, 10))["type"] == "subscribed"
        publish(a, key, summer, final("not this one"))
        publish(a, key, spring, final("this one"))
        got = await recv(ws, 10)
        assert (got["call_id"], got["seq"], got["data"]["text"]) == (spring, 2, "this one")
        response = httpx.patch(
            f"{a.url}/v1/calls/{summer}", content=orjson.dumps({"metadata": {"campaign": "spring"}}),
            headers={"Authorization": f"Bearer {key}"}, timeout=10,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        joined = await recv(ws, 10)
        assert (joined["call_id"], joined["type"]) == (summer, "call.metadata")
        publish(b, key, spring, final("away", metadata={"campaign": "autumn"}))
        publish(a, key, spring, final("still away"))
        publish(a, key, summer, final("here"))
        got = await recv(ws, 10)
        assert (got["call_id"], got["data"]["text"]) == (summer, "here")
        assert await no_message(ws, 0.5)
