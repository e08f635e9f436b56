"""docs/protocol.md, Idempotent publish, against real server processes on SQLite and PostgreSQL:
an event whose `id` its call holds is not stored again, and its answer carries its first seq."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from callstream import Publisher
from tests.faults import ReplyCutter
from tests.helpers import (
    ServerProcess,
    ended,
    final,
    history,
    key_of,
    open_events,
    publish,
    recv,
    recv_until,
    send,
)


@pytest.fixture
def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def with_id(event: dict[str, Any], event_id: Any) -> dict[str, Any]:
    return {**event, "id": event_id}


async def open_ingest(server: ServerProcess, key: str) -> ClientConnection:
    return await connect(f"{server.ws_url}/v1/ingest", additional_headers={"Authorization": f"Bearer {key}"})


async def send_frame(ws: ClientConnection, payload: Any) -> None:
    await ws.send(orjson.dumps(payload).decode())


def stored(server: ServerProcess, key: str, call_id: str) -> list[tuple[int, str | None, str | None]]:
    """(seq, id, text) of every stored event of the call."""
    return [(e["seq"], e.get("id"), e["data"].get("text")) for e in history(server, key, call_id)]


async def test_a_repeated_rest_event_answers_its_first_seq_and_is_stored_once(
    store_node: ServerProcess, call_id: str
) -> None:
    key = key_of(store_node)
    first = publish(store_node, key, call_id, [with_id(final("a"), "a"), with_id(final("b"), "b")])
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": 2, "seq": [1, 2]}
    # a lost answer, retried with one more event; and an id repeated inside one batch
    again = publish(store_node, key, call_id, [with_id(final("a"), "a"), with_id(final("c"), "c"), with_id(final("c"), "c")])
    assert again.status_code == 202, again.text
    assert again.json()["seq"] == [1, 3, 3]
    assert stored(store_node, key, call_id) == [(1, "a", "a"), (2, "b", "b"), (3, "c", "c")]
    async with await open_events(store_node, key) as ws:  # replay carries the id too
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
        replayed = await recv_until(ws, "subscribed")
    assert [(m["seq"], m.get("id")) for m in replayed[:-1]] == [(1, "a"), (2, "b"), (3, "c")]


async def test_an_invalid_id_is_refused_with_its_index_and_nothing_applied(
    store_node: ServerProcess, call_id: str
) -> None:
    key = key_of(store_node)
    assert publish(store_node, key, call_id, final("first")).status_code == 202
    for bad in ["", "a b", "x" * 129, 12]:
        response = publish(store_node, key, call_id, [with_id(final("ok"), "fine"), with_id(final("no"), bad)])
        assert response.status_code == 422, (bad, response.text)
        body = response.json()["error"]
        assert (body["code"], body["index"]) == ("invalid_message", 1)
        assert "id must be" in body["message"]
    assert stored(store_node, key, call_id) == [(1, None, "first")]


async def test_an_ingest_resend_after_a_reconnect_is_acked_with_its_first_seq(
    store_node: ServerProcess, call_id: str
) -> None:
    key = key_of(store_node)
    async with await open_ingest(store_node, key) as ws:
        await send_frame(ws, {"call_id": call_id, **with_id(final("once"), "u1"), "ref": 1})
        assert await recv(ws) == {"type": "ack", "ref": 1, "seq": 1}
    async with await open_ingest(store_node, key) as ws:
        await send_frame(ws, {"call_id": call_id, **with_id(final("bad"), "no spaces"), "ref": "bad"})
        error = await recv(ws)
        assert (error["type"], error["ref"], error["data"]["code"]) == ("error", "bad", "invalid_message")
        await send_frame(ws, [
            {"call_id": call_id, **with_id(final("once"), "u1"), "ref": 7},
            {"call_id": call_id, **with_id(final("twice"), "u2"), "ref": 8},
        ])
        assert [await recv(ws), await recv(ws)] == [
            {"type": "ack", "ref": 7, "seq": 1},
            {"type": "ack", "ref": 8, "seq": 2},
        ]
    assert stored(store_node, key, call_id) == [(1, "u1", "once"), (2, "u2", "twice")]


async def test_ids_outlive_a_sigkill_of_the_embedded_node(fresh_server: ServerProcess, call_id: str) -> None:
    """The ids come back with the call's state from the store, also those of an ended call."""
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    assert publish(fresh_server, key, call_id, [with_id(final("a"), "a"), with_id(final("b"), "b")]).json()["seq"] == [1, 2]
    fresh_server.kill()
    await asyncio.to_thread(fresh_server.start)
    assert publish(fresh_server, key, call_id, [with_id(final("b"), "b"), with_id(final("c"), "c")]).json()["seq"] == [2, 3]
    assert publish(fresh_server, key, call_id, with_id(ended(), "end")).json()["seq"] == [4]
    fresh_server.kill()
    await asyncio.to_thread(fresh_server.start)
    resent = publish(fresh_server, key, call_id, with_id(ended(), "end"))  # its ack was lost
    assert (resent.status_code, resent.json()["seq"]) == (202, [4])
    assert publish(fresh_server, key, call_id, with_id(ended(), "other")).status_code == 422  # a new event: ended
    assert [(seq, event_id) for seq, event_id, _ in stored(fresh_server, key, call_id)] == [
        (1, "a"), (2, "b"), (3, "c"), (4, "end"),
    ]


async def test_a_publisher_whose_ack_is_lost_stores_its_event_once(
    store_node: ServerProcess, call_id: str
) -> None:
    key = key_of(store_node)
    cutter = ReplyCutter("127.0.0.1", store_node.port)
    await cutter.start()
    try:
        cutter.cut_reply_holding(b'"type":"ack"')
        async with Publisher(f"http://127.0.0.1:{cutter.port}", key, reconnect_max_delay=0.2) as pub:
            seq = await asyncio.wait_for(pub.publish(call_id, "transcript.final", {"speaker": "user", "text": "once"}), 15)
            assert cutter.cut.is_set()  # the first ack never arrived: the event was sent again
            assert pub.statistics().connections == 2
            assert seq == 1
            assert await pub.publish(call_id, "transcript.final", {"speaker": "user", "text": "mine"}, id="own-1") == 2
            assert await pub.publish(call_id, "transcript.final", {"speaker": "user", "text": "mine"}, id="own-1") == 2
    finally:
        await cutter.stop()
    assert [text for _, _, text in stored(store_node, key, call_id)] == ["once", "mine"]
