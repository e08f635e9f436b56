"""Idempotent publish in the broker (docs/protocol.md, Producing), over memory and Redis alike:
an event whose `id` its call holds is not applied again and answers the seq it got first."""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
import redis.asyncio as aioredis

from callstream.broker.base import Broker, BrokerUnavailableError, CallEndedError, CallState
from callstream.events import Event, NewEvent, encode_event
from tests.broker.conftest import Calls, Nodes, ev
from tests.faults import ReplyCutter

A = "acme"


def with_id(new: NewEvent, event_id: str) -> NewEvent:
    return dataclasses.replace(new, id=event_id)


def seqs(out: list[Event]) -> list[int]:
    return [e.seq for e in out]


async def test_a_repeated_id_answers_its_first_seq_and_is_not_applied(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "c1")
    first = await node.broker.publish(A, [with_id(ev("c1", "transcript.final", text="hi"), "e1"), ev("c1")])
    again = await node.broker.publish(A, [with_id(ev("c1", "transcript.final", text="hi"), "e1"), ev("c1")])
    assert seqs(first) == [1, 2]
    assert seqs(again) == [1, 3]
    assert [e.repeat for e in again] == [True, False]
    assert await node.wait_seqs("c1", 3) == [1, 2, 3]  # the repeat was never delivered
    assert (await node.broker.state(A, "c1")).last_seq == 3
    held = (await node.broker.history(A, "c1", 0)).events
    assert [e.seq for e in held] == [1, 2, 3]
    assert [orjson.loads(e.frame).get("id") for e in held] == ["e1", None, None]
    # one wire encoding, whichever broker built the frame: the id before the data
    assert held[0].frame == encode_event(held[0].type, "c1", 1, held[0].ts, held[0].data, "e1") == node.got[0].frame
    assert first[0].frame == held[0].frame


async def test_a_repeat_within_one_batch_answers_the_first_ones_seq(nodes: Nodes) -> None:
    node = await nodes.add()
    batch = [with_id(ev("c1"), "a"), with_id(ev("c2"), "a"), with_id(ev("c1"), "a"), with_id(ev("c1"), "b")]
    out = await node.broker.publish(A, batch)
    assert [(e.call_id, e.seq, e.repeat) for e in out] == [
        ("c1", 1, False),
        ("c2", 1, False),  # ids are unique within a call, not across calls
        ("c1", 1, True),
        ("c1", 2, False),
    ]


async def test_an_ended_calls_resent_end_answers_its_seq(nodes: Nodes) -> None:
    """A producer whose ack of `call.ended` was lost sends it again: the call is ended, yet the
    resend is answered with the seq the end got (an event with a new id is still refused)."""
    node = await nodes.add()
    await node.broker.publish(A, [ev("c1"), with_id(ev("c1", "call.ended"), "end")])
    (out,) = await node.broker.publish(A, [with_id(ev("c1", "call.ended"), "end")])
    assert (out.seq, out.repeat) == (2, True)
    with pytest.raises(CallEndedError):
        await node.broker.publish(A, [with_id(ev("c1", "call.ended"), "other")])


async def test_a_call_loaded_from_the_store_knows_its_ids(nodes: Nodes, calls: Calls) -> None:
    """After a restart the store hands the broker the ids of the call's stored events."""
    calls[(A, "old")] = CallState("live", 10, 1234, ids={"x": 7})
    node = await nodes.add()
    out = await node.broker.publish(A, [with_id(ev("old"), "x"), with_id(ev("old"), "y")])
    assert [(e.seq, e.repeat) for e in out] == [(7, True), (11, False)]


async def test_repeats_racing_on_two_nodes_are_applied_once(redis_nodes: Nodes) -> None:
    a, b, c = await redis_nodes.add(), await redis_nodes.add(), await redis_nodes.add()
    await c.broker.watch(A, "c1")

    async def send(node_broker: Broker, n: int) -> list[int]:
        got: list[int] = []
        for i in range(n):
            (out,) = await node_broker.publish(A, [with_id(ev("c1"), f"e{i}")])
            got.append(out.seq)
        return got

    from_a, from_b = await asyncio.gather(send(a.broker, 50), send(b.broker, 50))
    assert from_a == from_b  # each id got one seq, whichever node asked
    assert sorted(from_a) == list(range(1, 51))
    assert await c.wait_seqs("c1", 50) == list(range(1, 51))


async def test_redis_seeds_the_ids_when_it_lost_the_calls_keys(redis_nodes: Nodes, calls: Calls) -> None:
    node = await redis_nodes.add()
    await node.broker.publish(A, [with_id(ev("c1"), "x")])
    calls[(A, "c1")] = CallState("live", 1, 1234, ids={"x": 1})  # what the store committed
    client = aioredis.Redis.from_url(redis_nodes.url)
    keys = [k async for k in client.scan_iter(match=f"{redis_nodes.prefix}*")]
    await client.delete(*keys)
    await client.aclose()
    out = await node.broker.publish(A, [with_id(ev("c1"), "x"), with_id(ev("c1"), "z")])
    assert [(e.seq, e.repeat) for e in out] == [(1, True), (2, False)]


async def test_a_publish_whose_reply_was_lost_is_applied_once_when_resent(
    redis_nodes: Nodes, reply_cutter: ReplyCutter
) -> None:
    """Redis ran the publish script, the node never heard: the producer is told it failed and
    sends the event again (to any node); it keeps the one seq it got."""
    b = await redis_nodes.add()
    a = await redis_nodes.add(await reply_cutter.start())  # through the proxy
    await b.broker.watch(A, "c1")
    await a.broker.publish(A, [ev("c1")])
    reply_cutter.cut_reply_to(b"lost-once")
    with pytest.raises(BrokerUnavailableError):
        await a.broker.publish(A, [with_id(ev("c1"), "lost-once")])
    assert reply_cutter.cut.is_set()
    (again,) = await b.broker.publish(A, [with_id(ev("c1"), "lost-once")])
    assert (again.seq, again.repeat) == (2, True)
    assert await b.wait_seqs("c1", 2) == [1, 2]
    assert [e.seq for e in (await b.broker.history(A, "c1", 0)).events] == [1, 2]
