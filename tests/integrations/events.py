"""What both framework integrations' tests read back: a subscribed socket, and events in brief."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.helpers import ServerProcess, open_events, recv_until, send


async def subscribed(server: ServerProcess, key: str, call_id: str) -> ClientConnection:
    ws = await open_events(server, key)
    await send(ws, {"type": "subscribe", "call_id": call_id})
    await recv_until(ws, "subscribed")
    return ws


def brief(message: dict[str, Any]) -> tuple[Any, ...]:
    """The fields a test compares, per event type."""
    data, kind = message["data"], message["type"]
    if kind.startswith("transcript."):
        return (kind, data["speaker"], data["text"], data["utterance_id"])
    if kind == "agent.state":
        return (kind, data["state"])
    if kind == "function.call":
        return (kind, data["name"], data["args"], data["tool_call_id"])
    if kind == "function.result":
        return (kind, data["name"], data["result"], data["tool_call_id"])
    if kind == "metrics":
        return (kind, data["stage"])
    return (kind, data["status"], data.get("reason"))


# -- live control ------------------------------------------------------------------------------

CallerSays = Callable[[str], Awaitable[None]]
"""Makes the caller of a call under test say one turn."""
