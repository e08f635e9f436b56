"""The slow-consumer promise: one stalled socket never holds up the others, and loses nothing
but superseded partials once it resumes with `since`."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.helpers import ServerProcess, final, partial, publish, recv, recv_until, send

FINALS = 400  # x 20 KB: more than the kernel buffers (4 MB) hold, so the outbox must act


class StalledClient:
    """A real WebSocket client that stops reading from its socket: websockets' sans-I/O
    protocol over a raw socket, so no library reads on its behalf."""

    def __init__(self, server: ServerProcess, key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.protocol = ClientProtocol(parse_uri(f"{server.ws_url}/v1/events?token={key}"))
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        while not any(isinstance(e, Response) for e in self.protocol.events_received()):
            self.protocol.receive_data(self.sock.recv(4096))

    def read_until(self, kind: str, timeout: float = 10.0) -> None:
        """Read (and drop) messages up to the first of type `kind`, then stop reading again."""
        self.sock.settimeout(timeout)
        while True:
            self.protocol.receive_data(self.sock.recv(4096))
            for frame in self.protocol.events_received():
                if (
                    isinstance(frame, Frame)
                    and frame.opcode == Opcode.TEXT
                    and orjson.loads(frame.data)["type"] == kind
                ):
                    return

    def send(self, message: dict[str, object]) -> None:
        self.protocol.send_text(orjson.dumps(message))
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def read_all(self, timeout: float = 20.0) -> tuple[list[dict[str, object]], int | None]:
        """Resume reading: every message the server queued, then its close code."""
        self.sock.settimeout(timeout)
        messages: list[dict[str, object]] = []
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                self.protocol.receive_eof()
            else:
                self.protocol.receive_data(data)
            for frame in self.protocol.events_received():
                if isinstance(frame, Frame) and frame.opcode == Opcode.TEXT:
                    messages.append(orjson.loads(frame.data))
                elif isinstance(frame, Frame) and frame.opcode == Opcode.CLOSE:
                    close = self.protocol.close_rcvd
                    self.sock.close()
                    return messages, None if close is None else close.code
            if not data:
                self.sock.close()
                return messages, None


async def read_after_cut_off(server: ServerProcess, client: StalledClient) -> tuple[list[dict[str, object]], int | None]:
    while "callstream_slow_consumers_total 1.0" not in httpx.get(server.url + "/metrics").text:
        await asyncio.sleep(0.2)
    return await asyncio.to_thread(client.read_all)


async def test_a_stalled_reader_does_not_delay_others_and_since_recovers_every_final(
    fresh_server: ServerProcess, call_id: str
) -> None:
    fresh_server.env["CALLSTREAM_OUTBOX_HIGH_WATER"] = "262144"
    fresh_server.start()
    key = fresh_server.create_key("acme")
    slow = StalledClient(fresh_server, key)
    slow.send({"type": "subscribe", "call_id": call_id})
    async with await connect(f"{fresh_server.ws_url}/v1/events?token={key}") as fast:
        await send(fast, {"type": "subscribe", "call_id": call_id})
        assert (await recv(fast))["type"] == "subscribed"

        async def produce() -> None:
            for i in range(0, FINALS, 5):
                batch = []
                for j in range(i, i + 5):
                    batch += [partial(f"word {j}", utterance_id=f"u{j}"), final(f"{j} " + "x" * 20_000, utterance_id=f"u{j}")]
                await asyncio.to_thread(publish, fresh_server, key, call_id, batch)

        producer = asyncio.create_task(produce())
        # The stalled client resumes reading once the server has cut it off (as a real client
        # would after a pause), well within the grace the server gives it to read its backlog.
        stalled = asyncio.create_task(read_after_cut_off(fresh_server, slow))
        finals_seen = 0
        while finals_seen < FINALS:
            message = await recv(fast, timeout=10)
            finals_seen += message["type"] == "transcript.final"
        await producer

    # The stalled client was cut off as a slow consumer, after everything queued before that.
    messages, close_code = await stalled
    assert close_code == 4008
    assert messages[-1]["type"] == "error"
    assert messages[-1]["data"]["code"] == "slow_consumer"  # type: ignore[index]
    seqs = [int(m["seq"]) for m in messages if "seq" in m]  # type: ignore[call-overload]
    assert seqs == sorted(seqs)
    assert len(seqs) < 2 * FINALS
    dropped = [
        float(line.split()[-1])
        for line in httpx.get(fresh_server.url + "/metrics", timeout=10).text.splitlines()
        if line.startswith("callstream_partials_dropped_total ")
    ]
    assert len(dropped) == 1
    assert dropped[0] >= 1  # the operator sees the superseded partials it dropped

    # Resuming with since loses nothing but superseded partials.
    last_seen = max(seqs, default=0)
    async with await connect(f"{fresh_server.ws_url}/v1/events?token={key}") as again:
        await send(again, {"type": "subscribe", "call_id": call_id, "since": last_seen})
        replay = await recv_until(again, "subscribed", timeout=20)
    texts = [m["data"]["text"] for m in messages + replay if m.get("type") == "transcript.final"]  # type: ignore[index]
    numbers = sorted({int(str(t).split()[0]) for t in texts})
    assert numbers == list(range(FINALS))


async def test_a_reader_that_pauses_gets_every_frame_intact_and_in_order(
    fresh_server: ServerProcess, call_id: str
) -> None:
    # Room for everything in the outbox: this reader pauses, it is not cut off. Its socket's
    # buffers fill while it pauses, so the server's sends stop part-way through a frame, and what
    # the socket did not take must go out before anything newer; once the reader reads again,
    # the server goes back to sending straight to the socket without overtaking what it holds.
    fresh_server.env["CALLSTREAM_OUTBOX_HIGH_WATER"] = str(64 << 20)
    fresh_server.start()
    key = fresh_server.create_key("acme")
    slow = StalledClient(fresh_server, key)
    slow.send({"type": "subscribe", "call_id": call_id})
    await asyncio.to_thread(slow.read_until, "subscribed")  # live before the events come
    count = 600  # x 20 KB: 12 MB, more than the kernel buffers of both ends hold

    def read_all() -> list[dict[str, object]]:
        finals: list[dict[str, object]] = []
        slow.sock.settimeout(20)
        while len(finals) < count:
            data = slow.sock.recv(8192)
            assert data, "the server closed the socket"
            slow.protocol.receive_data(data)  # a frame cut short or overtaken fails to parse here
            for frame in slow.protocol.events_received():
                assert isinstance(frame, Frame), frame
                if frame.opcode == Opcode.PING:  # the server's keepalive, on a slow machine: answer it
                    for pong in slow.protocol.data_to_send():
                        slow.sock.sendall(pong)
                    continue
                assert frame.opcode == Opcode.TEXT, frame
                finals.append(orjson.loads(frame.data))
            time.sleep(0.0005)
        return finals

    # One kept-alive HTTP client for the 600 publishes: a client each (a TLS context, a connection)
    # made the paused half last long enough on a loaded CI for the server's keepalive ping to go
    # unanswered (20 s, then 20 s more) and end the reader's socket.
    http = httpx.AsyncClient(
        base_url=fresh_server.url, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    )

    async def publish_one(j: int) -> None:  # one fan-out each
        body = orjson.dumps(final(f"{j} " + "x" * 20_000))
        response = await http.post(f"/v1/calls/{call_id}/events", content=body, timeout=10)
        assert response.status_code == 202, response.text

    try:
        for j in range(count // 2):  # the reader pauses
            await publish_one(j)
        reader = asyncio.create_task(asyncio.to_thread(read_all))
        for j in range(count // 2, count):  # it reads again, slowly, while more comes
            await publish_one(j)
        finals = await reader
    finally:
        slow.sock.close()
        await http.aclose()
    assert [m["seq"] for m in finals] == list(range(1, count + 1))
    assert [str(m["data"]["text"]).split()[0] for m in finals] == [str(j) for j in range(count)]  # type: ignore[index]
