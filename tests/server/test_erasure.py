"""Erasure's order of steps on the embedded node (server/erasure.py): a real store and broker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callstream.events import Event, NewEvent
from callstream.server.erasure import CallLiveError, CallNotFoundError, CallSettlingError
from callstream.server.retention import DAY_MS, RetentionSweep
from callstream.server.runtime import Runtime
from callstream.settings import Settings

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


async def test_a_call_whose_events_are_not_all_confirmed_stored_is_left_for_later(runtime: Runtime) -> None:
    events = await ended_call(runtime, "unsettled")
    await runtime.broker.mark_unstored(events)  # as after a commit that failed

    with pytest.raises(CallSettlingError):
        await runtime.erasure.erase_call(A, "unsettled")
    sweep = RetentionSweep(
        runtime.store, runtime.erasure, 1, every_s=60, pause_s=0, clock=lambda: time.time() + 2 * DAY_MS / 1000
    )
    assert await sweep.sweep() == 0

    assert await runtime.store.get_call(A, "unsettled") is not None


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
