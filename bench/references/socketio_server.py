"""Reference (b): what a Python team would otherwise write: python-socketio on uvicorn (ASGI).

Client semantics mapped onto Socket.IO: `subscribe` (with an ack) joins the room named after the
call; `publish` (with an ack) takes a list of events, gives each the next `seq` of its call and
emits it as `event` to the call's room (python-socketio encodes each emit once per room). With
`--redis URL` the server uses `AsyncRedisManager`, the stock way to run several nodes.

    python -m bench.references.socketio_server --port 8092 [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import socketio
import uvicorn


def build(redis: str | None) -> Any:
    manager = socketio.AsyncRedisManager(redis, channel="bench-socketio") if redis else None
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", client_manager=manager)
    seqs: defaultdict[str, int] = defaultdict(int)

    @sio.on("subscribe")  # type: ignore[untyped-decorator]
    async def subscribe(sid: str, call_id: str) -> dict[str, Any]:
        await sio.enter_room(sid, call_id)
        return {"call_id": call_id, "status": "live", "seq": seqs[call_id]}

    @sio.on("publish")  # type: ignore[untyped-decorator]
    async def publish(sid: str, events: list[dict[str, Any]]) -> int:
        for ev in events:
            call = ev["call_id"]
            seqs[call] += 1
            body = {"type": ev["type"], "call_id": call, "seq": seqs[call], "ts": time.time_ns() // 1_000_000,
                    "data": ev["data"]}
            await sio.emit("event", body, room=call)
        return len(events)

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    uvicorn.run(build(args.redis), host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, backlog=4096)
