"""Reference (a): callstream's fan-out subset on bare `websockets` with `broadcast()` and nothing else.

The Python-library ceiling: no framework, no store, no outbox. `/v1/events` takes
`{"type":"subscribe","call_id":C}` (answered with `subscribed`), `/v1/ingest` takes an event or
an array of events with `call_id`; each gets the next `seq` of its call, is encoded once with
orjson and handed to `websockets.broadcast()` for the call's subscriber set; an event with `ref`
is answered `{"type":"ack","ref":R,"seq":S}`. Auth (`?token=`) is accepted and ignored.

    python -m bench.references.bare_websockets --port 8091
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

subscribers: defaultdict[str, set[ServerConnection]] = defaultdict(set)
seqs: defaultdict[str, int] = defaultdict(int)


async def events(ws: ServerConnection) -> None:
    mine: set[str] = set()
    try:
        async for message in ws:
            msg = orjson.loads(message)
            if msg.get("type") == "subscribe":
                call = msg["call_id"]
                subscribers[call].add(ws)
                mine.add(call)
                data = {"call_id": call, "status": "live", "seq": seqs[call], "replayed": 0}
                await ws.send(orjson.dumps({"type": "subscribed", "call_id": call, "data": data}).decode())
            elif msg.get("type") == "ping":
                await ws.send('{"type":"pong"}')
    finally:
        for call in mine:
            subscribers[call].discard(ws)


async def ingest(ws: ServerConnection) -> None:
    async for message in ws:
        obj = orjson.loads(message)
        for ev in obj if isinstance(obj, list) else [obj]:
            call = ev["call_id"]
            seqs[call] += 1
            seq = seqs[call]
            frame = orjson.dumps(
                {"type": ev["type"], "call_id": call, "seq": seq, "ts": time.time_ns() // 1_000_000, "data": ev["data"]}
            ).decode()
            broadcast(subscribers[call], frame)
            if "ref" in ev:
                await ws.send(orjson.dumps({"type": "ack", "ref": ev["ref"], "seq": seq}).decode())


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path.split("?", 1)[0] if ws.request else ""
    if path == "/v1/events":
        await events(ws)
    elif path == "/v1/ingest":
        await ingest(ws)


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, max_size=1 << 24, ping_interval=20, backlog=4096,
                     compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.host, args.port))
