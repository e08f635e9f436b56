"""`callstream tail`: follow calls in the terminal, or print NDJSON for jq."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.text import Text

console = Console()

STYLE = {"user": "cyan", "agent": "green"}


def ws_url(base: str, path: str) -> str:
    return base.rstrip("/").replace("https://", "wss://").replace("http://", "ws://") + path


def render(message: dict[str, Any]) -> Text | None:
    kind, data, call = message.get("type"), message.get("data") or {}, message.get("call_id")
    prefix = Text(f"{call} #{message.get('seq', '-')} ", style="dim")
    if kind == "transcript.final":
        sentiment = data.get("sentiment", {}).get("label", "")
        speaker = data.get("speaker", "?")
        return (
            prefix
            + Text(f"{speaker}: ", style=f"bold {STYLE.get(speaker, '')}")
            + Text(f"{data.get('text', '')}  " + (f"[{sentiment}]" if sentiment else ""))
        )
    if kind == "agent.state":
        return prefix + Text(f"agent is {data.get('state')}", style="yellow")
    if kind == "function.call":
        return prefix + Text(
            f"→ {data.get('name')}({orjson.dumps(data.get('args')).decode()})", style="magenta"
        )
    if kind == "function.result":
        return prefix + Text(
            f"← {data.get('name')}: {orjson.dumps(data.get('result')).decode()}", style="magenta"
        )
    if kind == "call.ended":
        return prefix + Text(
            f"call ended: {data.get('status')} after {data.get('duration_ms')} ms", style="bold"
        )
    if kind == "error":
        return prefix + Text(f"error {data.get('code')}: {data.get('message')}", style="red")
    return None


async def follow(url: str, key: str, call_ids: list[str], as_json: bool) -> None:
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {key}"}
    async with connect(ws_url(url, "/v1/events"), additional_headers=headers) as ws:
        for call_id in call_ids:
            await ws.send(orjson.dumps({"type": "subscribe", "call_id": call_id}).decode())
        async for raw in ws:
            message = orjson.loads(raw)
            if as_json:
                if message.get("type") not in ("subscribed", "unsubscribed", "pong"):
                    sys.stdout.write(orjson.dumps(message).decode() + "\n")
                    sys.stdout.flush()
                continue
            line = render(message)
            if line is not None:
                console.print(line)


def tail_command(url: str, key: str, call_ids: list[str], as_json: bool) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow(url, key, call_ids, as_json))
