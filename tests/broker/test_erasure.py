"""Erasure in the broker (docs/privacy.md), over the memory broker and the Redis broker alike:
an erased call is forgotten on every node, and its id starts a new call at seq 1."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis

from callstream.broker.base import CallState, Quotas
from tests.broker.conftest import Node, Nodes, ev
from tests.broker.test_broker_control import requested

A = "acme:erase"  # a ':' in the account: its keys are escaped


class Heard:
    """What a node's `on_erased` was told."""

    def __init__(self, node: Node) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        node.broker.on_erased = self.hear

    def hear(self, account: str, call_ids: Sequence[str]) -> None:
        self.calls.append((account, list(call_ids)))

    async def wait(self, wait_s: float = 5.0) -> list[tuple[str, list[str]]]:
        deadline = asyncio.get_running_loop().time() + wait_s
        while not self.calls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.calls


async def test_an_erased_call_is_forgotten_and_its_id_starts_again_at_seq_1(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.publish(A, [ev("c1"), ev("c1", "transcript.final"), ev("c1", "call.ended")])
    heard = Heard(node)

    await node.broker.erase(A, ["c1"])  # the store erased it first: its loader has nothing of it

    assert await heard.wait() == [(A, ["c1"])]
    held = await node.broker.history(A, "c1", 0)
    assert (held.events, held.first_seq) == ([], 1)
    assert await node.broker.state(A, "c1") == CallState("pending", 0)
    (again,) = await node.broker.publish(A, [ev("c1")])
    assert again.seq == 1


async def test_calls_with_events_no_commit_confirmed_are_unsettled(nodes: Nodes) -> None:
    node = await nodes.add()
    failed = await node.broker.publish(A, [ev("failed", "transcript.final")])
    await node.broker.mark_unstored(failed)
    stored = await node.broker.publish(A, [ev("stored", "transcript.final")])
    await node.broker.stored(stored)

    assert await node.broker.unsettled(A, ["failed", "stored", "never"]) == {"failed"}


async def test_every_node_hears_of_an_erasure_and_delivers_the_new_call_from_seq_1(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await b.broker.watch(A, "c1")
    await a.broker.publish(A, [ev("c1"), ev("c1"), ev("c1", "call.ended")])
    assert await b.wait_seqs("c1", 3) == [1, 2, 3]
    heard_a, heard_b = Heard(a), Heard(b)

    await a.broker.erase(A, ["c1"])
    await a.broker.publish(A, [ev("c1"), ev("c1")])

    assert await heard_a.wait() == await heard_b.wait() == [(A, ["c1"])]
    assert await b.wait_seqs("c1", 5) == [1, 2, 3, 1, 2]  # not skipped as seqs it had delivered


async def test_erasure_leaves_no_key_and_no_set_membership_of_the_call(redis_nodes: Nodes) -> None:
    redis_nodes.quotas = Quotas(live_calls=100)  # so the account's live set counts calls
    node = await redis_nodes.add()
    await node.broker.publish(A, [ev("gone"), ev("gone", "transcript.final")])
    request_id, ask = requested("gone")
    await node.broker.publish(A, [ask])  # a control request waits: the deadlines' set names the call
    await node.broker.publish(A, [ev("kept")])
    client = aioredis.Redis.from_url(redis_nodes.url, decode_responses=True)
    try:
        before = [k async for k in client.scan_iter(match=f"{redis_nodes.prefix}*")]
        assert any(":gone:" in k for k in before)

        await node.broker.erase(A, ["gone"])

        after = [k async for k in client.scan_iter(match=f"{redis_nodes.prefix}*")]
        assert not [k for k in after if ":gone:" in k]
        assert any(":kept:" in k for k in after)
        for key in after:
            if await client.type(key) == "zset":
                members = await client.zrange(key, 0, -1)
                assert not [m for m in members if "gone" in m], (key, members)
    finally:
        await client.aclose()
    assert request_id not in str(await node.broker.due_controls())
