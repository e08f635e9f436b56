"""Quotas per account, run over the memory broker and the Redis broker alike.

The second half needs several nodes on one Redis: the quotas hold for the cluster, not per node,
and a node that is gone stops holding any of them.
"""

from __future__ import annotations

import asyncio

import pytest

from callstream.broker.base import BrokerUnavailableError, QuotaExceededError, Quotas
from callstream.broker.memory import MemoryBroker
from tests.broker.conftest import Node, Nodes, ev
from tests.broker.test_broker_contract import _forget_keys
from tests.faults import ReplyCutter

A, B = "acme", "globex"


# ---- live calls per account --------------------------------------------------------------


async def test_a_call_past_the_live_calls_quota_is_refused_until_one_ends(nodes: Nodes) -> None:
    nodes.quotas = Quotas(live_calls=3)
    node = await nodes.add()
    for call_id in ("c1", "c2", "c3"):
        await node.broker.publish(A, [ev(call_id)])
    with pytest.raises(QuotaExceededError) as caught:
        await node.broker.publish(A, [ev("c4")])
    assert (caught.value.quota, caught.value.call_id, caught.value.index) == ("live_calls", "c4", 0)
    assert caught.value.retry_after_s is not None
    assert (await node.broker.state(A, "c4")).last_seq == 0
    for call_id in ("c1", "c2", "c3"):  # the live calls go on
        (out,) = await node.broker.publish(A, [ev(call_id, "transcript.final")])
        assert out.seq == 2
    for call_id in ("c4", "c5", "c6"):  # another account has a quota of its own
        await node.broker.publish(B, [ev(call_id)])
    await node.broker.publish(A, [ev("c1", "call.ended")])
    (out,) = await node.broker.publish(A, [ev("c4")])
    assert out.seq == 1


async def test_a_batch_starting_calls_past_the_quota_is_refused_whole(nodes: Nodes) -> None:
    nodes.quotas = Quotas(live_calls=2)
    node = await nodes.add()
    await node.broker.publish(A, [ev("c1")])
    with pytest.raises(QuotaExceededError) as caught:
        await node.broker.publish(A, [ev("c1"), ev("c2"), ev("c2"), ev("c3")])
    assert (caught.value.call_id, caught.value.index) == ("c3", 3)
    assert (await node.broker.state(A, "c1")).last_seq == 1  # nothing of the batch applied
    assert (await node.broker.state(A, "c2")).last_seq == 0
    # A call that ends in its first batch never counts as live.
    await node.broker.publish(A, [ev("short"), ev("short", "call.ended")])
    await node.broker.publish(A, [ev("c2")])


async def test_a_call_idle_for_the_live_ttl_stops_counting(nodes: Nodes) -> None:
    nodes.quotas = Quotas(live_calls=1)
    nodes.history_ttl_s = nodes.live_ttl_s = 1.0
    node = await nodes.add()
    await node.broker.publish(A, [ev("abandoned")])  # its producer dies: no call.ended ever
    with pytest.raises(QuotaExceededError):
        await node.broker.publish(A, [ev("next")])
    await asyncio.sleep(1.2)
    if isinstance(node.broker, MemoryBroker):
        node.broker.sweep()  # what its sweeper does every 30 s
    (out,) = await node.broker.publish(A, [ev("next")])
    assert out.seq == 1


# ---- events per call ---------------------------------------------------------------------


async def test_events_past_the_per_call_quota_are_refused_but_the_call_can_end(nodes: Nodes) -> None:
    nodes.quotas = Quotas(events_per_call=5)
    node = await nodes.add()
    await node.broker.publish(A, [ev("c1", "transcript.partial"), ev("c1"), ev("c1")])  # partials count
    with pytest.raises(QuotaExceededError) as caught:
        await node.broker.publish(A, [ev("other"), ev("c1"), ev("c1"), ev("c1")])
    assert (caught.value.quota, caught.value.call_id, caught.value.index) == ("events_per_call", "c1", 3)
    assert caught.value.retry_after_s is None  # waiting cannot help
    assert (await node.broker.state(A, "c1")).last_seq == 3
    assert (await node.broker.state(A, "other")).last_seq == 0
    assert [e.seq for e in await node.broker.publish(A, [ev("c1"), ev("c1")])] == [4, 5]
    with pytest.raises(QuotaExceededError):
        await node.broker.publish(A, [ev("c1")])
    (out,) = await node.broker.publish(A, [ev("c1", "call.ended")])
    assert out.seq == 6
    assert (await node.broker.state(A, "c1")).status == "ended"
    assert len(await node.broker.publish(A, [ev("other") for _ in range(5)])) == 5


# ---- sockets per account -----------------------------------------------------------------


async def test_sockets_past_the_quota_are_refused_until_one_closes(nodes: Nodes) -> None:
    nodes.quotas = Quotas(sockets=2)
    node = await nodes.add()
    await node.broker.acquire_socket(A)
    await node.broker.acquire_socket(A)
    with pytest.raises(QuotaExceededError) as caught:
        await node.broker.acquire_socket(A)
    assert caught.value.quota == "sockets"
    await node.broker.acquire_socket(B)
    await node.broker.release_socket(A)
    await node.broker.acquire_socket(A)


async def test_zero_means_no_quota(nodes: Nodes) -> None:
    node = await nodes.add()
    for _ in range(50):
        await node.broker.acquire_socket(A)
    await node.broker.publish(A, [ev(f"c{i}") for i in range(50)])


# ---- the cluster: quotas hold across nodes -----------------------------------------------


async def test_live_calls_and_sockets_are_counted_across_nodes(redis_nodes: Nodes) -> None:
    redis_nodes.quotas = Quotas(live_calls=2, sockets=2)
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await a.broker.publish(A, [ev("c1")])
    await b.broker.publish(A, [ev("c2")])
    for node in (a, b):
        with pytest.raises(QuotaExceededError):
            await node.broker.publish(A, [ev("c3")])
    await a.broker.acquire_socket(A)
    await b.broker.acquire_socket(A)
    for node in (a, b):
        with pytest.raises(QuotaExceededError):
            await node.broker.acquire_socket(A)
    await b.broker.publish(A, [ev("c1", "call.ended")])  # ended on another node than it started
    await a.broker.publish(A, [ev("c3")])


async def test_a_node_that_left_holds_no_sockets(redis_nodes: Nodes) -> None:
    redis_nodes.quotas = Quotas(sockets=2)
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await a.broker.acquire_socket(A)
    await a.broker.acquire_socket(A)
    with pytest.raises(QuotaExceededError):
        await b.broker.acquire_socket(A)
    await a.broker.close()  # its sockets are gone with it
    redis_nodes.started.remove(a)
    await b.broker.acquire_socket(A)
    await b.broker.acquire_socket(A)


async def test_socket_counts_come_back_after_redis_lost_them(redis_nodes: Nodes) -> None:
    redis_nodes.quotas = Quotas(sockets=2)
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await a.broker.acquire_socket(A)
    await a.broker.acquire_socket(A)
    await _forget_keys(redis_nodes)  # a Redis restart without persistence
    await asyncio.sleep(0.5)  # a's next heartbeat finds it was forgotten and writes its counts back
    with pytest.raises(QuotaExceededError):
        await b.broker.acquire_socket(A)


async def _acquire_within(node: Node, account: str, seconds: float) -> None:
    """A slot as soon as the account has one free (another node settles on its next beat)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await node.broker.acquire_socket(account)
        except QuotaExceededError:
            assert asyncio.get_running_loop().time() < deadline, "the account's slot never came back"
            await asyncio.sleep(0.05)


async def test_a_socket_count_whose_reply_was_lost_holds_no_slot(
    redis_nodes: Nodes, reply_cutter: ReplyCutter
) -> None:
    redis_nodes.quotas = Quotas(sockets=2)
    b = await redis_nodes.add()
    a = await redis_nodes.add(await reply_cutter.start())  # through the proxy
    await a.broker.acquire_socket(A)
    reply_cutter.cut_reply_to(A.encode())
    with pytest.raises(BrokerUnavailableError):
        await a.broker.acquire_socket(A)  # Redis counted it; a never heard, so its socket was refused
    assert reply_cutter.cut.is_set()
    await _acquire_within(b, A, 5.0)  # the account's second slot, once a settled the lost count
    with pytest.raises(QuotaExceededError):
        await b.broker.acquire_socket(A)  # and no third: a still holds its one socket


async def test_a_release_whose_reply_was_lost_is_applied_once(redis_nodes: Nodes, reply_cutter: ReplyCutter) -> None:
    redis_nodes.quotas = Quotas(sockets=3)
    b = await redis_nodes.add()
    a = await redis_nodes.add(await reply_cutter.start())  # through the proxy
    await a.broker.acquire_socket(A)
    await a.broker.acquire_socket(A)
    reply_cutter.cut_reply_to(A.encode())
    with pytest.raises(BrokerUnavailableError):
        await a.broker.release_socket(A)  # Redis applied it; a never heard
    assert reply_cutter.cut.is_set()
    await asyncio.sleep(1.0)  # several of a's beats: whatever it settles is settled by now
    await b.broker.acquire_socket(A)
    await b.broker.acquire_socket(A)  # a holds one: two slots are free, not one
    with pytest.raises(QuotaExceededError):
        await b.broker.acquire_socket(A)  # nor three: the release was applied once
