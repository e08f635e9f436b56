"""Events the store failed to take: the broker keeps them marked until a repair stored them.

The memory and the Redis broker alike: a marked call takes no more events (RepairNeededError,
nothing applied) until `repaired`; `repairing` hands over the log's events to store, in seq
order. Redis alone: the marks are shared by every node, an event no node confirmed in time is
taken for lost, and one node at a time repairs a call.
"""

from __future__ import annotations

import asyncio

import pytest

from callstream.broker.base import Broker, RepairBusyError, RepairNeededError
from callstream.events import Event
from tests.broker.conftest import Nodes, ev

A = "acme"


async def _published(broker: Broker, call_id: str, count: int, account: str = A) -> list[Event]:
    return await broker.publish(account, [ev(call_id, "transcript.final", text=f"t{i}") for i in range(count)])


async def test_a_marked_call_takes_no_more_events_until_repaired(nodes: Nodes) -> None:
    node = await nodes.add()
    broker = node.broker
    out = await _published(broker, "c1", 3)
    await broker.stored(out[:1])  # seq 1 committed; 2 and 3 failed
    await broker.mark_unstored(out[1:])

    with pytest.raises(RepairNeededError) as refused:
        await broker.publish(A, [ev("c1")])
    assert (refused.value.account, refused.value.call_id) == (A, "c1")
    assert (await broker.state(A, "c1")).last_seq == 3  # nothing applied
    assert (await broker.publish(A, [ev("c2")]))[0].seq == 1  # other calls go on
    assert await broker.overdue() == [(A, "c1")]

    async with broker.repairing(A, "c1") as work:
        assert work.seqs == [2, 3]
        assert [(e.seq, e.frame) for e in work.events] == [(e.seq, e.frame) for e in out[1:]]
    with pytest.raises(RepairNeededError):  # not repaired yet: the block only handed the work over
        await broker.publish(A, [ev("c1")])
    await broker.repaired(A, "c1", work)

    assert (await broker.publish(A, [ev("c1")]))[0].seq == 4
    assert await broker.overdue() == []


async def test_partials_are_never_unstored(nodes: Nodes) -> None:
    broker = (await nodes.add()).broker
    out = await broker.publish(A, [ev("c1", "transcript.partial")])
    await broker.mark_unstored(out)
    assert (await broker.publish(A, [ev("c1")]))[0].seq == 2
    async with broker.repairing(A, "c1") as work:
        assert work.seqs == []


async def test_a_mark_on_one_node_holds_on_every_node(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    out = await _published(a.broker, "c1", 2)
    await a.broker.mark_unstored(out)
    with pytest.raises(RepairNeededError):
        await b.broker.publish(A, [ev("c1")])
    assert await b.broker.overdue() == [(A, "c1")]

    async with a.broker.repairing(A, "c1"):
        with pytest.raises(RepairBusyError):  # one node at a time
            async with b.broker.repairing(A, "c1"):
                pass
    async with b.broker.repairing(A, "c1") as work:
        assert [e.seq for e in work.events] == [1, 2]
        await b.broker.repaired(A, "c1", work)
    assert (await a.broker.publish(A, [ev("c1")]))[0].seq == 3


async def test_a_repair_leaves_the_commits_under_way_alone(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    failed = await _published(a.broker, "c1", 1)
    under_way = await _published(b.broker, "c1", 2)  # b's commit has not answered yet
    await a.broker.mark_unstored(failed)
    async with a.broker.repairing(A, "c1") as work:
        assert work.seqs == [1]  # b stores 2 and 3 itself: storing them here too would double them
        await a.broker.repaired(A, "c1", work)
    await b.broker.stored(under_way)
    assert await a.broker.overdue() == []
    assert (await a.broker.publish(A, [ev("c1")]))[0].seq == 4


async def test_events_no_node_confirmed_in_time_are_taken_for_lost(redis_nodes: Nodes) -> None:
    redis_nodes.unstored_after_s = 0.3
    node = await redis_nodes.add()
    account, call_id = "tenant:one%", "call:x"  # both may hold ':'; the index keeps them apart
    first = await _published(node.broker, call_id, 2, account)
    await node.broker.stored(first[:1])
    assert (await node.broker.publish(account, [ev(call_id)]))[0].seq == 3  # seq 2 is young: a commit under way
    await asyncio.sleep(0.5)

    assert await node.broker.overdue() == [(account, call_id)]
    with pytest.raises(RepairNeededError):
        await node.broker.publish(account, [ev(call_id)])
    async with node.broker.repairing(account, call_id) as work:
        assert work.seqs == [2, 3]  # seq 1 was confirmed
        await node.broker.repaired(account, call_id, work)
    assert await node.broker.overdue() == []
    assert (await node.broker.publish(account, [ev(call_id)]))[0].seq == 4


async def test_confirmed_events_leave_nothing_behind(redis_nodes: Nodes) -> None:
    redis_nodes.unstored_after_s = 0.2
    node = await redis_nodes.add()
    for _ in range(3):
        await node.broker.stored(await _published(node.broker, "c1", 2))
    await asyncio.sleep(0.3)
    assert await node.broker.overdue() == []
    assert (await node.broker.publish(A, [ev("c1")]))[0].seq == 7
