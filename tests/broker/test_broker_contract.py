"""The broker contract, run over the memory broker and the Redis broker alike.

The second half needs several nodes on one Redis: cross-node delivery, wildcard watching,
concurrent publishers on different nodes, seeding after Redis lost its keys, and a restart.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis.asyncio as aioredis

from callstream.broker.base import Broker, BrokerUnavailableError, CallEndedError, CallState
from callstream.broker.memory import MemoryBroker
from callstream.events import Event, NewEvent, encode_event
from tests.broker.conftest import Calls, Nodes, ev
from tests.faults import RedisServer
from tests.turn_scripts import CALL, measure

A = "acme"


# ---- one node: sequencing, atomicity, history, state -----------------------------------


async def test_seq_is_gap_free_and_delivered_in_order(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "c1")
    seqs: list[int] = []
    for size in (1, 3, 7, 1, 13, 25):
        out = await node.broker.publish(A, [ev("c1") for _ in range(size)])
        seqs += [e.seq for e in out]
        assert len({e.ts for e in out}) == 1  # one batch, one acceptance time
    assert seqs == list(range(1, 51))
    assert await node.wait_seqs("c1", 50) == seqs


async def test_frame_is_the_one_wire_encoding(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "c1")
    new = ev("c1", "function.call", args={"q": 'naïve "quoted" \n', "n": [1, 2.5, None]})
    (out,) = await node.broker.publish(A, [new])
    assert out.frame == encode_event(out.type, out.call_id, out.seq, out.ts, out.data)
    await node.wait_seqs("c1", 1)
    assert node.got[0].frame == out.frame
    assert node.got[0].data == new.data
    (held,) = (await node.broker.history(A, "c1", 0)).events
    assert held.frame == out.frame


async def test_calls_are_sequenced_independently_within_one_batch(nodes: Nodes) -> None:
    node = await nodes.add()
    out = await node.broker.publish(A, [ev("x"), ev("y"), ev("x"), ev("y"), ev("y")])
    assert [(e.call_id, e.seq) for e in out] == [("x", 1), ("y", 1), ("x", 2), ("y", 2), ("y", 3)]


async def test_batch_after_end_is_refused_whole_with_its_index(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "*")
    batch = [ev("c1"), ev("c2"), ev("c2", "call.ended"), ev("c1"), ev("c2")]
    with pytest.raises(CallEndedError) as caught:
        await node.broker.publish(A, batch)
    assert (caught.value.call_id, caught.value.index) == ("c2", 4)
    for call_id in ("c1", "c2"):
        assert (await node.broker.state(A, call_id)).last_seq == 0
        assert (await node.broker.history(A, call_id, 0)).events == []
    await asyncio.sleep(0.1)
    assert node.got == []


async def test_events_after_call_ended_are_refused(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.publish(A, [ev("c1"), ev("c1", "call.ended")])
    with pytest.raises(CallEndedError) as caught:
        await node.broker.publish(A, [ev("other"), ev("c1")])
    assert caught.value.index == 1
    assert (await node.broker.state(A, "other")).last_seq == 0
    state = await node.broker.state(A, "c1")
    assert (state.status, state.last_seq) == ("ended", 2)


async def test_state_moves_pending_live_ended(nodes: Nodes) -> None:
    node = await nodes.add()
    assert await node.broker.state(A, "c1") == CallState("pending", 0, None)
    (first,) = await node.broker.publish(A, [ev("c1")])
    await node.broker.publish(A, [ev("c1")])
    assert await node.broker.state(A, "c1") == CallState("live", 2, first.ts)
    await node.broker.publish(A, [ev("c1", "call.ended")])
    assert await node.broker.state(A, "c1") == CallState("ended", 3, first.ts)


async def test_history_since_leaves_out_superseded_partials(nodes: Nodes) -> None:
    node = await nodes.add()
    batch = [
        ev("c1", "transcript.partial", text="he", utterance_id="u1"),  # 1 superseded by 3
        ev("c1", "transcript.partial", text="hi", speaker="agent"),  # 2 superseded by 5
        ev("c1", "transcript.final", text="hello", utterance_id="u1"),  # 3
        ev("c1"),  # 4
        ev("c1", "transcript.partial", text="hi the", speaker="agent"),  # 5 superseded by 6
        ev("c1", "transcript.partial", text="hi there", speaker="agent"),  # 6 newest
        ev("c1", "transcript.partial", text="ok", utterance_id="u2"),  # 7 newest of u2
    ]
    await node.broker.publish(A, batch)
    held = await node.broker.history(A, "c1", 0)
    assert [e.seq for e in held.events] == [3, 4, 6, 7]
    assert held.first_seq == 1
    assert [e.seq for e in (await node.broker.history(A, "c1", 4)).events] == [6, 7]
    assert (await node.broker.history(A, "c1", 7)).events == []
    await node.broker.publish(A, [ev("c1", "transcript.final", text="okay", utterance_id="u2")])
    assert [e.seq for e in (await node.broker.history(A, "c1", 4)).events] == [6, 8]


async def test_history_from_any_since_is_the_tail_in_order_without_superseded_partials(nodes: Nodes) -> None:
    """Many partials (enough for the log to compact), then every `since` from before the first
    event to past the last: the answer is exactly the events after it that nothing superseded."""
    node = await nodes.add()
    rng = random.Random(7)
    sent = []
    for _ in range(12):
        batch = []
        for _ in range(100):
            speaker, utterance = rng.choice(["user", "agent"]), f"u{rng.randrange(4)}"
            kind = rng.choice(["transcript.partial"] * 6 + ["transcript.final", "agent.state"])
            batch.append(ev("c1", kind, speaker=speaker, utterance_id=utterance) if kind != "agent.state" else ev("c1"))
        sent += await node.broker.publish(A, batch)
    kept = [e.seq for i, e in enumerate(sent) if not (e.is_partial and any(o.key == e.key for o in sent[i + 1 :]))]
    for since in [-1, *range(0, len(sent) + 2, 7), len(sent) - 1, len(sent), len(sent) + 1]:
        held = await node.broker.history(A, "c1", since)
        assert [e.seq for e in held.events] == [seq for seq in kept if seq > since], since


async def test_resuming_at_the_end_of_a_long_call_costs_what_it_does_on_a_short_one(calls: Calls) -> None:
    """A reconnect storm: thousands of subscribers each ask for the last few events of a long
    live call. The memory broker's answer must not walk (or copy) the call's whole log each time."""
    broker = MemoryBroker()
    await broker.start(lambda events: None, calls.load)
    try:
        for _ in range(100):
            await broker.publish(A, [ev("long") for _ in range(1000)])
        await broker.publish(A, [ev("short") for _ in range(10)])

        async def cost(call_id: str, since: int) -> float:
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                held = await broker.history(A, call_id, since)
                best = min(best, time.perf_counter() - started)
                assert [e.seq for e in held.events] == list(range(since + 1, since + 11))
            return best

        short, long = await cost("short", 0), await cost("long", 99_990)
        assert long < 10 * short, f"the last 10 of 100,000 events: {long * 1e6:.0f} µs, of 10: {short * 1e6:.0f} µs"
    finally:
        await broker.close()


async def test_history_of_unknown_call_is_empty(nodes: Nodes) -> None:
    node = await nodes.add()
    held = await node.broker.history(A, "nobody", 0)
    assert (held.events, held.first_seq) == ([], 1)


async def test_seeds_from_the_store_and_says_where_its_log_starts(nodes: Nodes, calls: Calls) -> None:
    """A call the store knows (e.g. from before a restart) continues at last_seq + 1; the log
    holds only what came after, and `first_seq` tells the caller to read the rest from the store."""
    calls[(A, "old")] = CallState("live", 10, 1234)
    node = await nodes.add()
    out = await node.broker.publish(A, [ev("old"), ev("old")])
    assert [e.seq for e in out] == [11, 12]
    held = await node.broker.history(A, "old", 0)
    assert ([e.seq for e in held.events], held.first_seq) == ([11, 12], 11)
    assert await node.broker.state(A, "old") == CallState("live", 12, 1234)


async def test_a_call_the_store_knows_as_ended_stays_ended(nodes: Nodes, calls: Calls) -> None:
    calls[(A, "done")] = CallState("ended", 4, 1234)
    node = await nodes.add()
    with pytest.raises(CallEndedError):
        await node.broker.publish(A, [ev("done")])


async def test_accounts_never_share_calls(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.publish(A, [ev("same"), ev("same", "call.ended")])
    (out,) = await node.broker.publish("globex", [ev("same")])
    assert out.seq == 1
    assert (await node.broker.state("globex", "same")).status == "live"
    assert [e.account for e in (await node.broker.history("globex", "same", 0)).events] == ["globex"]


async def test_concurrent_publishers_on_one_node_stay_gap_free(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "c1")
    results = await asyncio.gather(
        *(node.broker.publish(A, [ev("c1") for _ in range(random.randint(1, 4))]) for _ in range(40))
    )
    seqs = sorted(e.seq for batch in results for e in batch)
    assert seqs == list(range(1, len(seqs) + 1))
    assert await node.wait_seqs("c1", len(seqs)) == seqs


# ---- turns: measured where the events are sequenced --------------------------------------


async def publish_call(publishers: list[Broker], call_id: str = "c1") -> list[Event]:
    """`turn_scripts.CALL`, one event at a time, a few ms apart, from each publisher in turn."""
    answered: list[Event] = []
    for i, (kind, data) in enumerate(CALL):
        answered += await publishers[i % len(publishers)].publish(A, [NewEvent(call_id, kind, dict(data))])
        await asyncio.sleep(0.003)
    return answered


def assert_measured(answered: list[Event]) -> None:
    """Each event carries what the tracker measures over the events' own ts, frame included."""
    datas, marks = measure(*((e.ts, (e.type, e.data)) for e in answered))
    assert [e.data for e in answered] == datas
    assert [e.marks for e in answered] == marks
    assert [e.frame for e in answered] == [encode_event(e.type, e.call_id, e.seq, e.ts, e.data) for e in answered]
    assert sum("latency_ms" in d for d in datas) == 2
    assert sum(d.get("interrupted") is True for d in datas) == 1


async def test_turn_figures_are_written_into_the_events_live_and_in_history(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "c1")
    answered = await publish_call([node.broker])
    assert_measured(answered)
    await node.wait_seqs("c1", len(CALL))
    assert [e.frame for e in node.got] == [e.frame for e in answered]
    held = (await node.broker.history(A, "c1", 0)).events
    by_seq = {e.seq: e.frame for e in answered}
    assert [e.frame for e in held] == [by_seq[e.seq] for e in held]


async def test_a_batch_is_measured_at_its_one_ts(nodes: Nodes) -> None:
    """A whole call in one batch: one ts, so every figure is 0, and still each turn is there."""
    node = await nodes.add()
    answered = await node.broker.publish(A, [NewEvent("c1", kind, dict(data)) for kind, data in CALL])
    assert_measured(answered)
    assert {e.data["latency_ms"] for e in answered if "latency_ms" in e.data} == {0}


# ---- several nodes on one Redis --------------------------------------------------------


async def test_events_published_on_a_reach_b_in_order(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await b.broker.watch(A, "c1")
    for _ in range(20):
        await a.broker.publish(A, [ev("c1") for _ in range(5)])
    assert await b.wait_seqs("c1", 100) == list(range(1, 101))
    assert a.got == []  # a node hears only what its clients watch


async def test_wildcard_sees_new_calls_and_each_event_once(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await b.broker.watch(A, "*")
    await b.broker.watch(A, "c2")  # explicit and wildcard on the same node: still once
    await a.broker.publish(A, [ev("c1"), ev("c2"), ev("c1"), ev("c2", "call.ended")])
    await a.broker.publish("globex", [ev("c1")])
    await b.wait_for(lambda: len(b.got) >= 4)
    await asyncio.sleep(0.1)
    assert [(e.account, e.call_id, e.seq) for e in b.got] == [
        (A, "c1", 1),
        (A, "c2", 1),
        (A, "c1", 2),
        (A, "c2", 2),
    ]


async def test_watch_is_refcounted_and_unwatch_stops_delivery(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await b.broker.watch(A, "c1")
    await b.broker.watch(A, "c1")
    await b.broker.unwatch(A, "c1")
    await a.broker.publish(A, [ev("c1")])
    assert await b.wait_seqs("c1", 1) == [1]
    await b.broker.unwatch(A, "c1")
    await b.broker.watch(A, "other")  # its confirmation orders it after the UNSUBSCRIBE
    await a.broker.publish(A, [ev("c1")])
    await asyncio.sleep(0.2)
    assert b.seqs("c1") == [1]
    await b.broker.watch(A, "c1")
    await a.broker.publish(A, [ev("c1")])
    assert await b.wait_seqs("c1", 2) == [1, 3]


async def test_concurrent_publishers_on_two_nodes_stay_gap_free(redis_nodes: Nodes) -> None:
    a, b, c = await redis_nodes.add(), await redis_nodes.add(), await redis_nodes.add()
    await c.broker.watch(A, "c1")

    async def produce(node_broker: Broker, n: int) -> list[int]:
        seqs: list[int] = []
        for _ in range(n):
            batch = [ev("c1") for _ in range(random.randint(1, 3))]
            seqs += [e.seq for e in await node_broker.publish(A, batch)]
        return seqs

    from_a, from_b = await asyncio.gather(produce(a.broker, 60), produce(b.broker, 60))
    assert from_a == sorted(from_a)
    assert from_b == sorted(from_b)
    every = sorted(from_a + from_b)
    assert every == list(range(1, len(every) + 1))
    assert await c.wait_seqs("c1", len(every)) == every


async def test_a_call_fed_by_two_nodes_is_measured_as_one(redis_nodes: Nodes) -> None:
    a, b, c = await redis_nodes.add(), await redis_nodes.add(), await redis_nodes.add()
    await c.broker.watch(A, "c1")
    answered = await publish_call([a.broker, b.broker])
    assert_measured(answered)
    await c.wait_seqs("c1", len(CALL))
    assert [e.frame for e in c.got] == [e.frame for e in answered]


async def test_seeds_from_the_store_after_redis_lost_the_keys(redis_nodes: Nodes, calls: Calls) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await a.broker.publish(A, [ev("c1") for _ in range(3)])
    calls[(A, "c1")] = CallState("live", 3, 1234)  # what the store committed meanwhile
    await _forget_keys(redis_nodes)
    (out,) = await b.broker.publish(A, [ev("c1")])
    assert out.seq == 4
    held = await a.broker.history(A, "c1", 0)
    assert (held.first_seq, [e.seq for e in held.events]) == (4, [4])


async def test_the_log_wins_over_a_lagging_store(redis_nodes: Nodes, calls: Calls) -> None:
    """The store writes behind the broker; if only the state hash is gone, the log's tail
    still knows the last seq, and reusing a seq would be worse than trusting it."""
    node = await redis_nodes.add()
    await node.broker.publish(A, [ev("c1") for _ in range(3)])
    calls[(A, "c1")] = CallState("live", 1, 1234)
    client = aioredis.Redis.from_url(redis_nodes.url)
    await client.delete(f"{redis_nodes.prefix}{A}:c1:state")
    await client.aclose()
    (out,) = await node.broker.publish(A, [ev("c1")])
    assert out.seq == 4


async def test_redis_restart_heals_and_tells_the_server(private_redis: RedisServer, calls: Calls) -> None:
    """Kill Redis under a node: it turns unhealthy and publishing fails clearly; once Redis is
    back it resubscribes, turns healthy, calls `on_reconnect`, and `seq` continues gap-free from
    the store (the restarted Redis lost every key)."""
    cluster = Nodes("redis", calls, url=private_redis.url)
    try:
        a, b = await cluster.add(), await cluster.add()
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        b.broker.on_reconnect = on_reconnect  # type: ignore[attr-defined]
        await b.broker.watch(A, "c1")
        await a.broker.publish(A, [ev("c1"), ev("c1")])
        assert await b.wait_seqs("c1", 2) == [1, 2]
        calls[(A, "c1")] = CallState("live", 2, 1234)

        private_redis.stop()
        await b.wait_for(lambda: not b.broker.healthy, wait_s=5)
        with pytest.raises(BrokerUnavailableError):
            await a.broker.publish(A, [ev("c1")])
        private_redis.start()
        await asyncio.wait_for(reconnected.wait(), 10)
        await b.wait_for(lambda: b.broker.healthy and a.broker.healthy, wait_s=10)

        (out,) = await a.broker.publish(A, [ev("c1")])
        assert out.seq == 3
        assert await b.wait_seqs("c1", 3) == [1, 2, 3]
    finally:
        await cluster.close()


async def test_unreachable_redis_fails_fast(calls: Calls) -> None:
    from callstream.broker.redis import RedisBroker
    from tests.helpers import free_port

    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", history_ttl_s=3600)
    with pytest.raises(BrokerUnavailableError):
        await broker.start(lambda _e: None, calls.load)
    await broker.close()


async def test_close_returns_whatever_the_pings_were_doing(redis_nodes: Nodes, calls: Calls) -> None:
    """`close` cancels the node's loops; one that goes on (redis-py can swallow a cancellation
    that lands as it finishes a command) would hang a node's shutdown. Pings back to back (an
    interval of 0) put a command in flight at nearly every moment a close can come."""
    from callstream.broker.redis import RedisBroker

    rng = random.Random(3)
    for _ in range(60):
        broker = RedisBroker(redis_nodes.url, history_ttl_s=3600, prefix=redis_nodes.prefix, ping_interval_s=0.0)
        await broker.start(lambda _e: None, calls.load)
        await asyncio.sleep(rng.random() * 0.01)
        closing = asyncio.create_task(broker.close())
        done, _ = await asyncio.wait({closing}, timeout=5.0)
        assert done, "close did not return within 5 s"


async def _forget_keys(cluster: Nodes) -> None:
    client = aioredis.Redis.from_url(cluster.url)
    try:
        keys = [k async for k in client.scan_iter(match=cluster.prefix + "*")]
        await client.delete(*keys)
    finally:
        await client.aclose()
