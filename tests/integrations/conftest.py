"""Fixtures of the framework adapters' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import ServerProcess, Supervisor, open_events, send


@pytest.fixture
async def supervisor(server: ServerProcess, api_key: str, call_id: str) -> AsyncIterator[Supervisor]:
    """A supervisor subscribed to the test's call (the default key has the control scope)."""
    ws = await open_events(server, api_key)
    await send(ws, {"type": "subscribe", "call_id": call_id})
    sup = Supervisor(ws)
    await sup.until(lambda m: m["type"] == "subscribed")
    yield sup
    await ws.close()
