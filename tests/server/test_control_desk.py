"""The control desk (`server/control_desk.py`) on the embedded node: a real store and broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callstream.auth import Principal
from callstream.control import Holder
from callstream.events import NewEvent
from callstream.server.runtime import Runtime
from callstream.settings import Settings


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    node = Runtime(Settings(data_dir=str(tmp_path), sentiment=False))
    await node.start()
    yield node
    await node.stop()


async def test_the_requester_is_acked_before_the_producer_hears_of_the_request(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """protocol.md, Live control, step 2: append, ack, then relay. A producer may answer at once,
    and its result must never reach the requester before the ack that names the request."""
    holder = Holder(runtime.broker.node_id, "conn-1", frozenset({"say"})).encode()
    _, durable = await runtime.publish("acme", [NewEvent("c1", "agent.state", {"state": "listening"})], holder)
    await durable
    order: list[str] = []
    relay = runtime.broker.relay

    async def relay_in_order(to: str, frame: bytes) -> None:
        order.append("relay")
        await relay(to, frame)

    monkeypatch.setattr(runtime.broker, "relay", relay_in_order)
    supervisor = Principal("acme", frozenset({"subscribe", "control"}), "key_1", "key")

    request_id, seq = await runtime.control.request(
        supervisor, "c1", "say", {"text": "hello"}, acknowledge=lambda rid, s: order.append(f"ack {rid} {s}")
    )

    assert order == [f"ack {request_id} {seq}", "relay"]
