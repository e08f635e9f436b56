"""Call metadata where calls are sequenced, over the memory and the Redis broker alike: patches
merge in order, the limits hold for the merged result (a batch past them changes nothing), and
every event carries its call's metadata after it, on whichever node it is delivered."""

from __future__ import annotations

import pytest

from callstream.broker.base import MetadataRefusedError
from callstream.events import CallState
from callstream.metadata import MAX_BYTES, MAX_KEYS
from tests.broker.conftest import Calls, Nodes, ev

A = "acme"


async def test_patches_merge_in_order_and_each_event_carries_the_metadata_after_it(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.watch(A, "*")
    out = await node.broker.publish(A, [
        ev("c1", metadata={"agent": "ada", "campaign": "spring", "vip": True}),
        ev("c1"),
        ev("c1", metadata={"campaign": "summer", "vip": None, "tier": 2}),
    ])
    first, second = {"agent": "ada", "campaign": "spring", "vip": True}, {"agent": "ada", "campaign": "summer", "tier": 2}
    assert [e.meta for e in out if "metadata" in e.data] == [first, second]
    await node.wait_seqs("c1", 3)
    assert [e.meta for e in node.got] == [first, first, second]
    assert node.got[0].data["metadata"] == {"agent": "ada", "campaign": "spring", "vip": True}  # the frame: the patch
    assert (await node.broker.state(A, "c1")).metadata == second
    await node.broker.publish(A, [ev("c1")])
    await node.wait_seqs("c1", 4)
    assert node.got[-1].meta == second


async def test_a_batch_past_a_limit_is_refused_whole_and_changes_nothing(nodes: Nodes) -> None:
    node = await nodes.add()
    await node.broker.publish(A, [ev("c1", metadata={f"k{i}": i for i in range(MAX_KEYS)})])
    with pytest.raises(MetadataRefusedError, match=f"would hold {MAX_KEYS + 1} keys") as caught:
        await node.broker.publish(A, [ev("c1"), ev("c1", metadata={"one_more": 1})])
    assert caught.value.index == 1
    with pytest.raises(MetadataRefusedError, match=f"at most {MAX_BYTES}"):
        await node.broker.publish(A, [ev("c1", metadata={"k0": "x" * MAX_BYTES})])
    state = await node.broker.state(A, "c1")
    assert state.last_seq == 1  # neither batch took a seq
    assert state.metadata == {f"k{i}": i for i in range(MAX_KEYS)}
    (ok,) = await node.broker.publish(A, [ev("c1", metadata={"k0": None, "new": "yes"})])
    assert ok.seq == 2
    assert ok.meta is not None
    assert len(ok.meta) == MAX_KEYS


async def test_a_call_the_store_knows_keeps_its_metadata(nodes: Nodes, calls: Calls) -> None:
    calls[(A, "old")] = CallState("live", 3, 1234, {"campaign": "spring", "agent": "ada"})
    node = await nodes.add()
    await node.broker.watch(A, "*")
    (plain,) = await node.broker.publish(A, [ev("old")])
    (patched,) = await node.broker.publish(A, [ev("old", metadata={"agent": "bob"})])
    assert patched.meta == {"campaign": "spring", "agent": "bob"}
    await node.wait_seqs("old", 2)
    assert [e.meta for e in node.got] == [{"campaign": "spring", "agent": "ada"}, {"campaign": "spring", "agent": "bob"}]
    assert plain.seq == 4


async def test_a_node_that_watches_later_knows_metadata_set_on_another_node(redis_nodes: Nodes) -> None:
    a, b = await redis_nodes.add(), await redis_nodes.add()
    await a.broker.publish(A, [ev("c1", metadata={"campaign": "spring"})])  # nobody on b watches yet
    await b.broker.watch(A, "*")
    await a.broker.publish(A, [ev("c1")])
    await b.broker.publish(A, [ev("c1", metadata={"agent": "ada"})])
    await b.wait_seqs("c1", 2)
    assert [(e.seq, e.meta) for e in b.got] == [
        (2, {"campaign": "spring"}),
        (3, {"campaign": "spring", "agent": "ada"}),
    ]
