"""The control round trip, measured from the supervisor's side (bench scenario `control`).

One producer socket (`/v1/ingest?controls=say`) holds a call and answers every request it is
relayed at once with `control.result`; supervisors on `/v1/events` subscribe to the call and
send `say` requests at a steady pace. The round trip of a request is from the supervisor's send
to the arrival of its `control.result` on the supervisor's socket: server checks, the stored
`control.requested`, the relay (over Redis when the producer is on another node), the producer's
answer, its sequencing, storage and fan-out back. The ack's latency is recorded too.

Runs inside a load process (`loadgen.Worker.control_probe`), on the `websockets` client: the
rate is tens of requests a second, so the client library's cost is not what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect


async def _agent(base: str, token: str, call_id: str, ready: asyncio.Event, answered: list[int]) -> None:
    url = base.replace("http", "ws", 1) + "/v1/ingest?controls=say"
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None) as ws:
        hello = {"call_id": call_id, "type": "agent.state", "data": {"state": "listening"}, "ref": 0}
        await ws.send(orjson.dumps(hello).decode())
        async for raw in ws:
            message = orjson.loads(raw)
            if message.get("type") == "ack":
                ready.set()
            elif message.get("type") == "control":
                result = {"request_id": message["request_id"], "ok": True}
                await ws.send(orjson.dumps({"call_id": call_id, "type": "control.result", "data": result}).decode())
                answered[0] += 1


async def _supervisor(
    ws: ClientConnection, call_id: str, rate: float, until: float, record_from: float, out: dict[str, Any]
) -> None:
    sent: dict[str, int] = {}  # ref → send time (ns)
    asked: dict[str, int] = {}  # request_id → send time (ns)

    async def read() -> None:
        async for raw in ws:
            now = time.perf_counter_ns()
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "control_ack":
                t0 = sent.pop(str(message.get("ref")), None)
                if t0 is not None:
                    asked[message["data"]["request_id"]] = t0
                    if t0 >= record_from:
                        out["ack_ns"].append(now - t0)
            elif kind == "control.result":
                t0 = asked.pop(message["data"]["request_id"], None)
                if t0 is not None and t0 >= record_from:
                    out["rtt_ns"].append(now - t0)
                    if not message["data"]["ok"]:
                        out["failed"] += 1
            elif kind == "error":
                out["errors"] += 1
                if len(out["error_samples"]) < 3:
                    out["error_samples"].append(message["data"])

    reader = asyncio.create_task(read())
    n = 0
    try:
        while time.perf_counter_ns() < until:
            n += 1
            ref = f"p{n}"
            sent[ref] = time.perf_counter_ns()
            request = {"type": "control", "call_id": call_id, "action": "say", "args": {"text": f"probe {n}"}, "ref": ref}
            await ws.send(orjson.dumps(request).decode())
            await asyncio.sleep(1 / rate)
        await asyncio.sleep(1.0)  # the last results
        out["unanswered"] += len(asked) + len(sent)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def probe(
    base: str, token: str, call_id: str, *, agent_base: str | None = None, supervisors: int = 10,
    rate: float = 4.0, warm: float = 1.0, seconds: float = 5.0,
) -> dict[str, Any]:
    """`supervisors` sockets on `base`, each `rate` requests/s (under the 5/s limit), the producer
    on `agent_base` (default: the same node). Samples sent in the `seconds` after `warm` count."""
    ready, answered = asyncio.Event(), [0]
    agent = asyncio.create_task(_agent(agent_base or base, token, call_id, ready, answered))
    out: dict[str, Any] = {"rtt_ns": [], "ack_ns": [], "errors": 0, "error_samples": [], "failed": 0, "unanswered": 0}
    url = base.replace("http", "ws", 1) + f"/v1/events?token={token}"
    sockets: list[ClientConnection] = []
    try:
        await asyncio.wait_for(ready.wait(), 10)
        for _ in range(supervisors):
            ws = await connect(url, compression=None, max_size=None)
            sockets.append(ws)
            await ws.send(orjson.dumps({"type": "subscribe", "call_id": call_id}).decode())
            while orjson.loads(await ws.recv()).get("type") != "subscribed":
                pass
        start = time.perf_counter_ns()
        record_from = start + int(warm * 1e9)
        until = record_from + int(seconds * 1e9)
        await asyncio.gather(*(_supervisor(ws, call_id, rate, until, record_from, out) for ws in sockets))
    finally:
        for ws in sockets:
            await ws.close()
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await agent
    rtt = sorted(x // 1000 for x in out.pop("rtt_ns"))
    ack = sorted(x // 1000 for x in out.pop("ack_ns"))
    return {**out, "samples": len(rtt), "answered_by_agent": answered[0], "rtt_us": rtt, "ack_us": ack}
