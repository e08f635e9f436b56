"""The retention sweep (docs/privacy.md, Retention) on the embedded node: a real store and broker,
and a clock moved days ahead instead of a wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callstream.events import NewEvent
from callstream.server.retention import DAY_MS, RetentionSweep
from callstream.server.runtime import Runtime
from callstream.settings import Settings

A = "acme"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    node = Runtime(Settings(data_dir=str(tmp_path), sentiment=False))
    await node.start()
    yield node
    await node.stop()


async def call(runtime: Runtime, call_id: str, *, end: bool = True) -> None:
    events = [NewEvent(call_id, "transcript.final", {"speaker": "user", "text": "my ssn is 078-05-1120"})]
    if end:
        events.append(NewEvent(call_id, "call.ended", {"status": "completed", "duration_ms": 10}))
    _, durable = await runtime.publish(A, events)
    await durable


def sweep(runtime: Runtime, days: int, *, days_ahead: float) -> RetentionSweep:
    ahead = days_ahead * DAY_MS / 1000
    return RetentionSweep(
        runtime.store, runtime.erasure, days, every_s=60, batch=2, pause_s=0, clock=lambda: time.time() + ahead
    )


async def test_a_sweep_erases_every_ended_call_past_the_retention_batch_after_batch(runtime: Runtime) -> None:
    await runtime.store.create_key(A, frozenset({"admin"}))
    for n in range(5):
        await call(runtime, f"old{n}")
    await call(runtime, "live", end=False)

    assert await sweep(runtime, 3, days_ahead=2).sweep() == 0  # within 3 days: kept
    assert await sweep(runtime, 1, days_ahead=2).sweep() == 5  # three batches of at most 2

    for n in range(5):
        assert await runtime.store.get_call(A, f"old{n}") is None
        assert (await runtime.broker.state(A, f"old{n}")).last_seq == 0
    live = await runtime.store.get_call(A, "live")
    assert live is not None
    assert live.status == "live"
    assert await sweep(runtime, 1, days_ahead=2).sweep() == 0  # nothing left: idempotent


async def test_the_node_runs_the_sweep_and_stops_it_on_shutdown(tmp_path: Path) -> None:
    node = Runtime(Settings(data_dir=str(tmp_path), sentiment=False, retention_days=1, retention_sweep_s=0.05))
    await node.start()
    await asyncio.sleep(0.2)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "retention"]

    await node.stop()

    assert not [t for t in asyncio.all_tasks() if t.get_name() == "retention"]


def test_a_negative_retention_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "callstream", "serve", "--data-dir", str(tmp_path), "--retention-days", "-1"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert refused.returncode == 2
    assert "--retention-days / CALLSTREAM_RETENTION_DAYS" in refused.stderr
