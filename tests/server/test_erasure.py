"""Erasure's order of steps on the embedded node (server/erasure.py): a real store and broker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callstream.broker import BrokerUnavailableError
from callstream.broker.base import Unstored
from callstream.broker.memory import MemoryBroker
from callstream.events import Event, NewEvent
from callstream.server.erasure import CallLiveError, CallNotFoundError, CallSettlingError, Erasure
from callstream.server.retention import DAY_MS, RetentionSweep
from callstream.server.runtime import Runtime
from callstream.settings import Settings
from callstream.store import SqlStore
from tests.faults import RedisServer

A = "acme"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    node = Runtime(Settings(data_dir=str(tmp_path), sentiment=False))
    await node.start()
    await node.store.create_key(A, frozenset({"admin"}))
    yield node
    await node.stop()


async def ended_call(runtime: Runtime, call_id: str) -> list[Event]:
    events = [
        NewEvent(call_id, "transcript.final", {"speaker": "user", "text": "hello"}),
        NewEvent(call_id, "call.ended", {"status": "completed", "duration_ms": 10}),
    ]
    sequenced, durable = await runtime.publish(A, events)
    await durable
    return sequenced


async def test_a_call_whose_events_are_not_all_confirmed_stored_is_left_until_they_are(tmp_path: Path) -> None:
    """A store and a broker without the node's repair, so the call stays unsettled until told."""
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await store.start()
    broker = MemoryBroker()
    await broker.start(lambda _: None, store.call_state)
    erasure = Erasure(store, broker)
    try:
        await store.create_key(A, frozenset({"admin"}))
        events = await broker.publish(A, [NewEvent("c1", "transcript.final", {"speaker": "user", "text": "hi"})])
        events += await broker.publish(A, [NewEvent("c1", "call.ended", {"status": "completed", "duration_ms": 1})])
        await store.append(events)
        await broker.mark_unstored(events[:1])  # as after a commit that failed

        with pytest.raises(CallSettlingError):
            await erasure.erase_call(A, "c1")
        sweep = RetentionSweep(store, erasure, 1, every_s=60, pause_s=0, clock=lambda: time.time() + 2 * DAY_MS / 1000)
        assert await sweep.sweep() == 0
        assert await store.get_call(A, "c1") is not None

        await broker.repaired(A, "c1", Unstored([events[0].seq]))
        await erasure.erase_call(A, "c1")
        assert await store.get_call(A, "c1") is None
    finally:
        await broker.close()
        await store.close()


async def test_live_missing_and_erased_calls_are_refused_with_their_reason(runtime: Runtime) -> None:
    _, durable = await runtime.publish(A, [NewEvent("live", "transcript.final", {"speaker": "user", "text": "hi"})])
    await durable
    await ended_call(runtime, "done")

    with pytest.raises(CallLiveError):
        await runtime.erasure.erase_call(A, "live")
    with pytest.raises(CallNotFoundError):
        await runtime.erasure.erase_call(A, "never")
    await runtime.erasure.erase_call(A, "done")
    with pytest.raises(CallNotFoundError):
        await runtime.erasure.erase_call(A, "done")


@pytest.mark.redis
async def test_a_broker_out_of_reach_fails_the_erasure_before_anything_is_erased(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    node = Runtime(Settings(data_dir=str(tmp_path), broker=private_redis.url, sentiment=False))
    await node.start()
    try:
        await ended_call(node, "kept")
        private_redis.stop()

        with pytest.raises(BrokerUnavailableError):
            await node.erasure.erase_call(A, "kept")

        assert await node.store.get_call(A, "kept") is not None
    finally:
        await node.stop()
