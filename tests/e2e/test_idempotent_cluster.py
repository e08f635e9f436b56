"""Idempotent publish across nodes on Redis and PostgreSQL: the check is cluster-wide and part
of the step that sequences (the publish script), so a resend to another node, or the same event
racing on two nodes, is stored once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import Cluster, ServerProcess, final, history, publish

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def with_id(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {**event, "id": event_id}


async def test_an_id_published_on_one_node_is_a_repeat_on_the_other(
    cluster: Cluster, account: str, call_id: str
) -> None:
    a, b = cluster.start(2)
    key = cluster.key(account)
    assert publish(a, key, call_id, with_id(final("hello"), "e1")).json()["seq"] == [1]
    again = publish(b, key, call_id, [with_id(final("hello"), "e1"), with_id(final("next"), "e2")])
    assert (again.status_code, again.json()["seq"]) == (202, [1, 2])
    assert [(e["seq"], e["id"]) for e in history(b, key, call_id)] == [(1, "e1"), (2, "e2")]


async def test_duplicates_racing_on_two_nodes_are_applied_once(cluster: Cluster, account: str, call_id: str) -> None:
    a, b = cluster.start(2)
    key = cluster.key(account)
    headers = {"Authorization": f"Bearer {key}"}

    async def send_all(http: httpx.AsyncClient, node: ServerProcess) -> list[int]:
        seqs: list[int] = []
        for i in range(40):
            body = orjson.dumps([with_id(final(f"t{i}"), f"e{i}"), with_id(final(f"u{i}"), f"f{i}")])
            response = await http.post(f"{node.url}/v1/calls/{call_id}/events", content=body, headers=headers)
            assert response.status_code == 202, response.text
            seqs += response.json()["seq"]
        return seqs

    async with httpx.AsyncClient(timeout=10) as http:
        from_a, from_b = await asyncio.gather(send_all(http, a), send_all(http, b))
    assert from_a == from_b  # each id has one seq, whichever node answered
    stored = history(a, key, call_id)
    assert [e["seq"] for e in stored] == list(range(1, 81))
    assert sorted(e["id"] for e in stored) == sorted([f"e{i}" for i in range(40)] + [f"f{i}" for i in range(40)])
