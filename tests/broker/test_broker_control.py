"""Live control's share of the broker contract, over the memory broker and the Redis broker alike:
each request takes one result, a call does not end with one waiting, deadlines come due, and a
call's holder is the last producer socket that published it, until it lets go (or its node dies)."""

from __future__ import annotations

import asyncio

import pytest

from callstream.broker.base import ControlResultError, PendingControlsError
from callstream.control import REQUESTED, RESULT, Holder, new_request_id
from callstream.events import NewEvent
from tests.broker.conftest import Nodes, ev

A = "acme"


def requested(call_id: str, action: str = "say") -> tuple[str, NewEvent]:
    request_id = new_request_id()
    data = {"request_id": request_id, "action": action, "args": {}, "by": {"key_id": "key_x"}}
    return request_id, NewEvent(call_id, REQUESTED, data)


def result(call_id: str, request_id: str, ok: bool = True) -> NewEvent:
    return NewEvent(call_id, RESULT, {"request_id": request_id, "ok": ok})


async def test_a_request_takes_one_result_and_a_refused_batch_applies_nothing(nodes: Nodes) -> None:
    broker = (await nodes.add()).broker
    await broker.publish(A, [ev("c1")])
    request_id, event = requested("c1")
    await broker.publish(A, [event])
    with pytest.raises(ControlResultError) as unknown:
        await broker.publish(A, [ev("c1"), result("c1", new_request_id())])
    assert unknown.value.index == 1
    with pytest.raises(ControlResultError):  # twice in one batch
        await broker.publish(A, [result("c1", request_id), result("c1", request_id)])
    assert (await broker.state(A, "c1")).last_seq == 2  # nothing of the refused batches
    assert [e.seq for e in await broker.publish(A, [result("c1", request_id)])] == [3]
    with pytest.raises(ControlResultError):
        await broker.publish(A, [result("c1", request_id, ok=False)])


async def test_a_call_does_not_end_with_a_request_waiting(nodes: Nodes) -> None:
    broker = (await nodes.add()).broker
    await broker.publish(A, [ev("c1")])
    say, first = requested("c1", "say")
    end, second = requested("c1", "end")
    await broker.publish(A, [first, second])
    with pytest.raises(PendingControlsError) as pending:
        await broker.publish(A, [result("c1", say), ev("c1", "call.ended")])
    assert (pending.value.index, pending.value.pending) == (1, {end: "end"})
    ended = await broker.publish(A, [result("c1", say), result("c1", end), ev("c1", "call.ended")])
    assert [e.type for e in ended] == [RESULT, RESULT, "call.ended"]


async def test_requests_past_their_deadline_come_due_until_answered(nodes: Nodes) -> None:
    nodes.control_timeout_s = 0.3
    broker = (await nodes.add()).broker
    await broker.publish(A, [ev("c1"), ev("c2")])
    late, event = requested("c1")
    answered, other = requested("c2")
    await broker.publish(A, [event])
    await broker.publish(A, [other])
    await broker.publish(A, [result("c2", answered)])
    assert await broker.due_controls() == []
    await asyncio.sleep(0.5)
    assert await broker.due_controls() == [(A, "c1", late)]
    await broker.publish(A, [result("c1", late, ok=False)])
    assert await broker.due_controls() == []


async def test_the_last_publishing_socket_holds_the_call_until_it_lets_go(nodes: Nodes) -> None:
    broker = (await nodes.add()).broker
    first = Holder(broker.node_id, "a", frozenset({"say"})).encode()
    second = Holder(broker.node_id, "b", frozenset({"end"})).encode()
    assert await broker.holder(A, "c1") is None
    await broker.publish(A, [ev("c1")], first)
    await broker.publish(A, [ev("c1")])  # no socket (REST): the holder stays
    assert await broker.holder(A, "c1") == first
    await broker.publish(A, [ev("c1")], second)
    await broker.release(A, ["c1"], first)  # the first socket closes: it no longer holds c1
    assert await broker.holder(A, "c1") == second
    await broker.release(A, ["c1"], second)
    assert await broker.holder(A, "c1") is None


async def test_a_request_relayed_on_one_node_reaches_the_holder_on_another(redis_nodes: Nodes) -> None:
    a, b = (await redis_nodes.add()).broker, (await redis_nodes.add()).broker
    got: list[tuple[str, bytes]] = []
    b.on_relay = lambda conn, frame: got.append((conn, frame))
    holder = Holder(b.node_id, "sock1", frozenset({"say"})).encode()
    await b.publish(A, [ev("c1")], holder)
    assert await a.holder(A, "c1") == holder
    await a.relay(holder, b'{"type":"control"}')
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    assert got == [("sock1", b'{"type":"control"}')]
    await b.close()
    redis_nodes.started.remove(next(n for n in redis_nodes.started if n.broker is b))
    assert await a.holder(A, "c1") is None  # its node left: it holds nothing
