"""Reference (d): the same fan-out subset as bare_websockets.py on a `picows` server (Cython WebSocket).

Shows what "a faster WebSocket transport behind the same app" can reach on this machine: one
callback per frame instead of a reader coroutine per socket, frames written straight to the
transport, no per-connection task. Same messages as the bare reference (subscribe → subscribed,
ingest arrays → per-call seq, one encoding per event, acks).

    python -m bench.references.picows_server --port 8093
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

TEXT = WSMsgType.TEXT
subscribers: defaultdict[str, set[WSTransport]] = defaultdict(set)
seqs: defaultdict[str, int] = defaultdict(int)


class Events(WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.mine: set[str] = set()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not TEXT:
            return
        msg = orjson.loads(frame.get_payload_as_bytes())
        if msg.get("type") == "subscribe":
            call = msg["call_id"]
            subscribers[call].add(transport)
            self.mine.add(call)
            data = {"call_id": call, "status": "live", "seq": seqs[call], "replayed": 0}
            transport.send(TEXT, orjson.dumps({"type": "subscribed", "call_id": call, "data": data}))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for call in self.mine:
            subscribers[call].discard(transport)


class Ingest(WSListener):  # type: ignore[misc]
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not TEXT:
            return
        obj: Any = orjson.loads(frame.get_payload_as_bytes())
        for ev in obj if isinstance(obj, list) else [obj]:
            call = ev["call_id"]
            seqs[call] += 1
            seq = seqs[call]
            out = orjson.dumps({"type": ev["type"], "call_id": call, "seq": seq, "ts": time.time_ns() // 1_000_000,
                                "data": ev["data"]})
            for sub in subscribers[call]:
                sub.send(TEXT, out)
            if "ref" in ev:
                transport.send(TEXT, orjson.dumps({"type": "ack", "ref": ev["ref"], "seq": seq}))


def route(request: WSUpgradeRequest) -> WSListener | None:
    path = request.path.split(b"?", 1)[0]
    if path == b"/v1/events":
        return Events()
    if path == b"/v1/ingest":
        return Ingest()
    return None


async def main(host: str, port: int) -> None:
    server = await ws_create_server(route, host, port, max_frame_size=1 << 24, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.host, args.port))
