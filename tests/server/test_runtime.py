"""The publish path (`Runtime.publish`) on the embedded node: a real store and broker, and a hub
that records what it was handed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from callstream.events import Event, NewEvent
from callstream.hub import Hub
from callstream.server.runtime import Runtime
from callstream.settings import Settings
from callstream.store import StoreUnavailableError
from tests.helpers import fill_next_journal_file


class RecordingHub(Hub):
    """The node's hub, keeping each batch it is asked to fan out."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, int]]] = []

    def deliver(self, events: Sequence[Event]) -> int:
        self.batches.append([(e.call_id, e.seq) for e in events])
        return super().deliver(events)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    node = Runtime(Settings(data_dir=str(tmp_path), sentiment=False))
    node.hub = RecordingHub()
    await node.start()
    yield node
    await node.stop()


def state(call_id: str, value: str = "thinking") -> NewEvent:
    return NewEvent(call_id, "agent.state", {"state": value})


async def test_frames_of_one_commit_fan_out_once_in_order_after_it(runtime: Runtime) -> None:
    hub = runtime.hub
    assert isinstance(hub, RecordingHub)
    published = [await runtime.publish("acme", frame) for frame in ([state("c1"), state("c2")], [state("c1")])]
    assert hub.batches == []  # nothing before the commit
    await asyncio.gather(*(durable for _, durable in published))
    await asyncio.sleep(0)
    assert hub.batches == [[("c1", 1), ("c2", 1), ("c1", 2)]]


async def test_events_whose_commit_failed_fan_out_once_a_repair_stored_them_before_anything_newer(
    runtime: Runtime, tmp_path: Path
) -> None:
    hub = runtime.hub
    assert isinstance(hub, RecordingHub)
    fill_next_journal_file(runtime.store, tmp_path / "callstream.db")
    _, durable = await runtime.publish("acme", [state("c1"), state("c2")])
    with pytest.raises(StoreUnavailableError):
        await durable
    await asyncio.sleep(0)
    assert hub.batches == []  # not stored: nobody sees it yet

    _, durable = await runtime.publish("acme", [state("c1", "listening")])  # the store is back
    await durable
    await asyncio.sleep(0)
    assert hub.batches == [[("c1", 1)], [("c1", 2)]]  # the repaired event first, then the new one
    assert [e.seq for e in await runtime.store.events("acme", "c1")] == [1, 2]

    await runtime.history.sweep()  # c2 got no new event: the node's sweep stores it
    assert [e.seq for e in await runtime.store.events("acme", "c2")] == [1]
    assert hub.batches[-1] == [("c2", 1)]


async def test_a_fan_out_bug_after_a_repair_is_logged_not_raised_to_the_publisher(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenHub(Hub):
        def deliver(self, events: Sequence[Event]) -> int:
            raise TypeError("a bug in the fan-out")

    runtime.hub = BrokenHub()
    sequenced, durable = await runtime.publish("acme", [state("c1")])
    await durable
    runtime._repaired(sequenced)  # what HistoryRepair calls once it stored a call's missing events
    assert "delivery after a repair failed" in caplog.text
