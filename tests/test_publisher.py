"""Publisher against a small ingest server speaking the wire protocol of docs/protocol.md, Producing.

The fake server is a real WebSocket server on loopback, not a mock of the Publisher's internals:
these tests pin the client's side of the protocol (refs, cumulative acks, errors, reconnects,
backpressure, auth refusal) independently of the real server's implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from callstream.errors import PublishError
from callstream.publisher import Publisher, ingest_url
from tests.helpers import ServerProcess, open_events, recv_until, send

KEY = "good-key"
TYPES = {"transcript.partial", "transcript.final", "agent.state", "call.ended"}


class FakeIngest:
    """Acks every ref (or every ``ack_every``-th), refuses unknown types, drops on request."""

    def __init__(self) -> None:
        self.url = ""
        self.handshakes = 0
        self.connections: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.seq: dict[str, int] = {}
        self.ack_every = 1
        self.drop_at: int | None = None  # abort the socket on this many received events, no ack
        self.close_code: int | None = None  # close with this code on the next event
        self.hold = False  # keep acks back until release()
        self.held: list[tuple[ServerConnection, bytes]] = []
        self.held_more = asyncio.Event()

    @property
    def received(self) -> list[dict[str, Any]]:
        return [msg for conn in self.connections for msg in conn]

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            body = orjson.dumps({"error": {"code": "unauthorized", "message": "unknown key"}})
            return connection.respond(HTTPStatus.UNAUTHORIZED, body.decode())
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers.append(dict(ws.request.headers.raw_items()))
        self.paths.append(ws.request.path)
        frames: list[dict[str, Any]] = []
        self.connections.append(frames)
        async for raw in ws:
            msg = orjson.loads(raw)
            frames.append(msg)
            if self.close_code is not None:
                await ws.close(self.close_code)
                return
            if self.drop_at is not None and len(self.received) >= self.drop_at:
                self.drop_at = None
                ws.transport.abort()
                return
            await self._answer(ws, msg)

    async def _answer(self, ws: ServerConnection, msg: dict[str, Any]) -> None:
        if msg["type"] not in TYPES:
            error = {"code": "unknown_type", "message": f"no event type {msg['type']!r}"}
            await ws.send(orjson.dumps(
                {"type": "error", "call_id": msg["call_id"], "ref": msg["ref"], "data": error}
            ).decode())
            return
        seq = self.seq[msg["call_id"]] = self.seq.get(msg["call_id"], 0) + 1
        if msg["ref"] % self.ack_every:
            return
        ack = orjson.dumps({"type": "ack", "ref": msg["ref"], "seq": seq})
        if self.hold:
            self.held.append((ws, ack))
            self.held_more.set()
        else:
            await ws.send(ack.decode())

    async def wait_held(self, count: int) -> None:
        while len(self.held) < count:
            self.held_more.clear()
            await self.held_more.wait()

    async def release(self) -> None:
        self.hold = False
        held, self.held = self.held, []
        for ws, ack in held:
            await ws.send(ack.decode())


@pytest.fixture
async def fake() -> AsyncIterator[FakeIngest]:
    ingest = FakeIngest()
    async with serve(ingest.handler, "127.0.0.1", 0, process_request=ingest.process_request) as srv:
        port = srv.sockets[0].getsockname()[1]
        ingest.url = f"http://127.0.0.1:{port}"
        yield ingest


def state(n: int) -> dict[str, Any]:
    return {"state": "listening", "n": n}


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/ingest"),
        ("https://api.example.com/", "wss://api.example.com/v1/ingest"),
        ("https://example.com/callstream", "wss://example.com/callstream/v1/ingest"),
        ("ws://h:1", "ws://h:1/v1/ingest"),
    ],
)
def test_ingest_url_maps_scheme_and_path(base: str, expected: str) -> None:
    assert ingest_url(base) == expected


def test_ingest_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="http"):
        ingest_url("ftp://example.com")


async def test_publish_returns_seq_and_authenticates_by_header(fake: FakeIngest) -> None:
    async with Publisher(fake.url, KEY) as pub:
        seqs = [await pub.publish("call_a", "agent.state", state(n)) for n in range(3)]
    assert seqs == [1, 2, 3]
    assert fake.paths == ["/v1/ingest"]  # the key is never in the URL
    assert fake.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert [set(m) for m in fake.received] == [{"call_id", "type", "data", "ref", "id"}] * 3
    refs = [m["ref"] for m in fake.received]
    assert refs == sorted(refs)
    assert len(set(refs)) == 3


async def test_send_many_then_flush_keeps_per_call_order(fake: FakeIngest) -> None:
    async with Publisher(fake.url, KEY) as pub:
        futures = [pub.send(f"call_{n % 3}", "agent.state", state(n)) for n in range(600)]
        await pub.flush()
        assert all(f.done() for f in futures)
        assert pub.statistics().in_flight == 0
    assert [f.result() for f in futures[0::3]] == list(range(1, 201))
    assert [m["data"]["n"] for m in fake.received] == list(range(600))


async def test_refused_event_fails_its_future_and_socket_stays_open(fake: FakeIngest) -> None:
    async with Publisher(fake.url, KEY) as pub:
        with pytest.raises(PublishError) as refused:
            await pub.publish("call_a", "no.such.type", {})
        assert refused.value.code == "unknown_type"
        assert "no.such.type" in refused.value.message
        assert await pub.publish("call_a", "agent.state", state(1)) == 1
        assert pub.statistics().errors == 1
    assert len(fake.connections) == 1


async def test_cumulative_ack_resolves_skipped_refs(fake: FakeIngest) -> None:
    fake.ack_every = 3  # the fake acks refs 3, 6, … only
    async with Publisher(fake.url, KEY) as pub:
        futures = [pub.send("call_a", "agent.state", state(n)) for n in range(6)]
        await pub.flush()
    assert [f.result() for f in futures] == [None, None, 3, None, None, 6]


async def test_reconnects_and_resends_unacked_in_order(fake: FakeIngest) -> None:
    fake.drop_at = 5  # the 5th event is received but never acked: the socket is torn down
    async with Publisher(fake.url, KEY, reconnect_max_delay=0.2) as pub:
        futures = [pub.send("call_a", "agent.state", state(n)) for n in range(20)]
        await pub.flush()
        assert pub.statistics().connections == 2
    assert all(isinstance(f.result(), int) for f in futures)
    first, second = ([m["data"]["n"] for m in conn] for conn in fake.connections)
    assert first[:5] == [0, 1, 2, 3, 4]
    # Everything not acked on the first socket is re-sent first, in order, then the rest.
    assert second == list(range(second[0], 20))
    assert second[0] <= 4


async def test_every_event_has_an_id_of_its_own_and_a_resend_keeps_it(fake: FakeIngest) -> None:
    """The server stores a resend once because it carries the id of the event it repeats."""
    fake.drop_at = 5
    async with Publisher(fake.url, KEY, reconnect_max_delay=0.2) as pub:
        for n in range(10):
            pub.send("call_a", "agent.state", state(n))
        await pub.flush()
        await pub.publish("call_a", "agent.state", state(100), id="mine-1")
    async with Publisher(fake.url, KEY) as other:
        await other.publish("call_a", "agent.state", state(99))
    first, second = fake.connections[0], fake.connections[1]
    ids = {m["data"]["n"]: m["id"] for m in first}
    assert len(set(ids.values())) == len(ids)
    assert all(m["id"] == ids[m["data"]["n"]] for m in second if m["data"]["n"] in ids)  # resent as sent
    assert [m["id"] for m in fake.received if m["data"]["n"] == 100] == ["mine-1"]
    from_other = [m["id"] for m in fake.received if m["data"]["n"] == 99]
    assert from_other
    assert from_other[0] not in ids.values()


async def test_an_invalid_id_is_refused_before_anything_is_sent(fake: FakeIngest) -> None:
    async with Publisher(fake.url, KEY) as pub:
        for bad in ("", "a b", "x" * 129):
            with pytest.raises(ValueError, match="id must be"):
                pub.send("call_a", "agent.state", state(0), id=bad)
    assert fake.received == []


async def test_unauthorized_handshake_fails_without_retrying(fake: FakeIngest) -> None:
    pub = Publisher(fake.url, "wrong-key", reconnect_max_delay=0.05)
    with pytest.raises(PublishError) as refused:
        await pub.start()
    assert refused.value.code == "unauthorized"
    assert refused.value.message == "unknown key"
    with pytest.raises(PublishError, match="unauthorized"):
        pub.send("call_a", "agent.state", state(0))
    await asyncio.sleep(0.2)
    assert fake.handshakes == 1
    await pub.close()


async def test_revoked_key_close_fails_pending_and_stops(fake: FakeIngest) -> None:
    fake.close_code = 4001
    async with Publisher(fake.url, KEY, reconnect_max_delay=0.05) as pub:
        with pytest.raises(PublishError) as revoked:
            await pub.publish("call_a", "agent.state", state(0))
        assert revoked.value.code == "unauthorized"
        await asyncio.sleep(0.2)
        with pytest.raises(PublishError, match="unauthorized"):
            await pub.flush()
    assert fake.handshakes == 1


async def test_backpressure_raises_or_waits(fake: FakeIngest) -> None:
    fake.hold = True
    async with Publisher(fake.url, KEY, max_in_flight=2) as pub:
        first = [pub.send("call_a", "agent.state", state(n)) for n in range(2)]
        with pytest.raises(PublishError) as full:
            pub.send("call_a", "agent.state", state(2))
        assert full.value.code == "backpressure"
        waiting = asyncio.create_task(pub.send_wait("call_a", "agent.state", state(2)))
        await fake.wait_held(2)
        await asyncio.sleep(0.01)  # give the waiting sender a chance to (wrongly) get through
        assert not waiting.done()
        await fake.release()
        third = await waiting
        assert await asyncio.gather(*first, third) == [1, 2, 3]


async def test_close_fails_unacked_events(fake: FakeIngest) -> None:
    fake.hold = True
    pub = Publisher(fake.url, KEY)
    await pub.start()
    future = pub.send("call_a", "agent.state", state(0))
    await pub.close()
    with pytest.raises(PublishError) as closed:
        await future
    assert closed.value.code == "closed"
    with pytest.raises(PublishError, match="closed"):
        pub.send("call_a", "agent.state", state(1))


async def test_buffers_while_server_is_unreachable() -> None:
    async with serve(lambda ws: ws.close(), "127.0.0.1", 0) as srv:  # only to get a free port
        port = srv.sockets[0].getsockname()[1]
    pub = Publisher(f"http://127.0.0.1:{port}", KEY, reconnect_max_delay=0.05)
    await pub.start()  # does not raise: a producer rides out a server restart
    future = pub.send("call_a", "agent.state", state(0))
    await asyncio.sleep(0.1)
    assert not future.done()
    assert pub.statistics().in_flight == 1
    await pub.close()
    with pytest.raises(PublishError, match="closed"):
        await future


# -- against the real server ---------------------------------------------------------------------


async def test_real_server_stores_what_the_publisher_sends(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    lines = ["Hi, I'd like to book a table.", "For four, please.", "Thanks!"]
    async with Publisher(server.url, api_key) as pub:
        seqs = [
            await pub.publish(call_id, "transcript.final", {"speaker": "user", "text": line})
            for line in lines
        ]
        futures = [pub.send(call_id, "agent.state", {"state": "thinking"}),
                   pub.send(call_id, "call.ended", {"status": "completed", "duration_ms": 900})]
        await pub.flush()
    assert [*seqs, *[f.result() for f in futures]] == [1, 2, 3, 4, 5]
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
        messages = await recv_until(ws, "subscribed")
    replayed, subscribed = messages[:-1], messages[-1]
    assert [m["seq"] for m in replayed] == [1, 2, 3, 4, 5]
    assert [m["data"]["text"] for m in replayed[:3]] == lines
    assert replayed[-1]["type"] == "call.ended"
    assert subscribed["data"]["status"] == "ended"


async def test_real_server_refusals_reach_the_right_future(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with Publisher(server.url, api_key) as pub:
        bad = pub.send(call_id, "agent.state", {"state": "dancing"})
        good = pub.send(call_id, "agent.state", {"state": "speaking"})
        with pytest.raises(PublishError) as refused:
            await bad
        assert refused.value.code == "invalid_message"
        assert await good == 1
    with pytest.raises(PublishError) as unauthorized:
        await Publisher(server.url, "cs_not_a_real_key").start()
    assert unauthorized.value.code == "unauthorized"


async def test_real_server_restart_loses_nothing(fresh_server: ServerProcess, call_id: str) -> None:
    fresh_server.start()
    key = fresh_server.create_key("acme")
    async with Publisher(fresh_server.url, key, reconnect_max_delay=0.5) as pub:
        for n in range(5):
            await pub.publish(call_id, "agent.state", {"state": "listening", "n": n})
        await asyncio.to_thread(fresh_server.stop)
        pending = [pub.send(call_id, "agent.state", {"state": "listening", "n": n})
                   for n in range(5, 10)]
        await asyncio.to_thread(fresh_server.start)
        seqs = await asyncio.gather(*pending)
    assert seqs == [6, 7, 8, 9, 10]
