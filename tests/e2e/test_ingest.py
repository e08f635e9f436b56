"""docs/protocol.md, Producing: the /v1/ingest socket and callstream.Publisher against a real server process."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callstream import Publisher
from callstream.errors import PublishError
from tests.helpers import (
    ServerProcess,
    ended,
    final,
    history,
    open_events,
    partial,
    publish,
    recv,
    recv_until,
    send,
)


async def open_ingest(server: ServerProcess, key: str, **kwargs: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {key}"}
    return await connect(f"{server.ws_url}/v1/ingest", additional_headers=headers, **kwargs)


def ev(call_id: str, event: dict[str, Any], ref: Any = None) -> dict[str, Any]:
    """An ingest event: the REST event plus its call_id (and a ref when given)."""
    out = {"call_id": call_id, **event}
    if ref is not None:
        out["ref"] = ref
    return out


async def send_frame(ws: ClientConnection, payload: Any) -> None:
    await ws.send(orjson.dumps(payload).decode())


async def recv_n(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    return [await recv(ws) for _ in range(n)]


async def test_single_events_and_arrays_are_acked_in_order(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with await open_ingest(server, api_key) as ws:
        await send_frame(ws, ev(call_id, final("one"), ref=1))
        await send_frame(ws, [ev(call_id, final("two"), ref=2), ev(call_id, final("three"), ref=3)])
        await send_frame(ws, ev(call_id, final("four"), ref="four"))
        acks = await recv_n(ws, 4)
    assert acks == [
        {"type": "ack", "ref": 1, "seq": 1},
        {"type": "ack", "ref": 2, "seq": 2},
        {"type": "ack", "ref": 3, "seq": 3},
        {"type": "ack", "ref": "four", "seq": 4},
    ]
    assert [e["data"]["text"] for e in history(server, api_key, call_id)] == ["one", "two", "three", "four"]


async def test_ack_is_cumulative_over_events_without_ref(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with await open_ingest(server, api_key) as ws:
        await send_frame(ws, [ev(call_id, final("a")), ev(call_id, partial("b")), ev(call_id, final("bc"))])
        await send_frame(ws, ev(call_id, {"type": "agent.state", "data": {"state": "listening"}}, ref="r"))
        assert await recv(ws) == {"type": "ack", "ref": "r", "seq": 4}
    # the ack covers every earlier event on this socket: they are all stored already
    assert [e["seq"] for e in history(server, api_key, call_id)] == [1, 3, 4]


async def test_ingested_events_reach_subscribers(server: ServerProcess, api_key: str, call_id: str) -> None:
    async with await open_events(server, api_key) as sub, await open_ingest(server, api_key) as ingest:
        await send(sub, {"type": "subscribe", "call_id": call_id})
        await recv_until(sub, "subscribed")
        await send_frame(ingest, [ev(call_id, partial("hi")), ev(call_id, final("hi there"), ref=1)])
        got = [await recv(sub), await recv(sub)]
        assert await recv(ingest) == {"type": "ack", "ref": 1, "seq": 2}
    assert [(m["type"], m["seq"], m["call_id"]) for m in got] == [
        ("transcript.partial", 1, call_id),
        ("transcript.final", 2, call_id),
    ]


async def test_invalid_event_gets_error_with_ref_and_socket_stays_open(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    bad = ev(call_id, {"type": "transcript.final", "data": {"speaker": "robot", "text": "x"}}, ref=7)
    async with await open_ingest(server, api_key) as ws:
        await send_frame(ws, ev(call_id, final("ok"), ref=6))
        assert await recv(ws) == {"type": "ack", "ref": 6, "seq": 1}
        await send_frame(ws, bad)
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["ref"] == 7
        assert error["call_id"] == call_id
        assert error["data"]["code"] == "invalid_message"
        assert error["data"]["call_id"] == call_id
        assert "speaker" in error["data"]["message"]
        await send_frame(ws, ev(call_id, final("still here"), ref=8))
        assert await recv(ws) == {"type": "ack", "ref": 8, "seq": 2}  # the bad one took no seq
    assert [e["data"]["text"] for e in history(server, api_key, call_id)] == ["ok", "still here"]


@pytest.mark.parametrize(
    ("payload", "ref"),
    [
        ({"type": "transcript.final", "data": {"speaker": "user", "text": "no call id"}, "ref": 1}, 1),
        ({"call_id": "bad id!", "type": "transcript.final", "data": {}, "ref": "x"}, "x"),
        ({"call_id": "c", "type": "error", "data": {"code": "x", "message": "y"}, "ref": 2}, 2),
        ({"call_id": "c", "type": "nope", "data": {}, "ref": 3}, 3),
        ({"call_id": "c", "type": "agent.state", "ref": 4}, 4),
        ("not an object", None),
    ],
)
async def test_malformed_events_get_errors_and_later_events_still_ack(
    server: ServerProcess, api_key: str, call_id: str, payload: Any, ref: Any
) -> None:
    async with await open_ingest(server, api_key) as ws:
        await send_frame(ws, payload)
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["data"]["code"] in {"invalid_message", "unknown_type"}
        assert error.get("ref") == ref
        await send_frame(ws, ev(call_id, final("fine"), ref="after"))
        assert await recv(ws) == {"type": "ack", "ref": "after", "seq": 1}


async def test_frames_that_are_not_json_get_an_error(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with await open_ingest(server, api_key) as ws:
        await ws.send("{definitely not json")
        error = await recv(ws)
        assert (error["type"], error["data"]["code"]) == ("error", "invalid_message")
        await ws.send(b"\x00\x01binary")
        error = await recv(ws)
        assert (error["type"], error["data"]["code"]) == ("error", "invalid_message")
        await send_frame(ws, ev(call_id, final("fine"), ref=1))
        assert await recv(ws) == {"type": "ack", "ref": 1, "seq": 1}


async def test_events_after_call_ended_are_refused_but_other_calls_go_through(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    done, live = call_id + "_done", call_id + "_live"
    assert publish(server, api_key, done, [final("bye"), ended()]).status_code == 202
    async with await open_ingest(server, api_key) as ws:
        await send_frame(
            ws,
            [
                ev(live, final("first"), ref="l1"),
                ev(done, final("too late"), ref="d1"),
                ev(live, final("second"), ref="l2"),
            ],
        )
        messages = await recv_n(ws, 3)
    by_ref = {m["ref"]: m for m in messages}
    assert by_ref["l1"] == {"type": "ack", "ref": "l1", "seq": 1}
    assert by_ref["l2"] == {"type": "ack", "ref": "l2", "seq": 2}
    assert by_ref["d1"]["type"] == "error"
    assert by_ref["d1"]["call_id"] == done
    assert "ended" in by_ref["d1"]["data"]["message"]
    acks = [m["ref"] for m in messages if m["type"] == "ack"]
    assert acks == ["l1", "l2"]  # acks keep their order
    assert [e["seq"] for e in history(server, api_key, done)] == [1, 2]
    assert [e["data"]["text"] for e in history(server, api_key, live)] == ["first", "second"]


async def test_call_ended_then_more_in_one_frame(server: ServerProcess, api_key: str, call_id: str) -> None:
    async with await open_ingest(server, api_key) as ws:
        await send_frame(
            ws, [ev(call_id, final("a"), ref=1), ev(call_id, ended(), ref=2), ev(call_id, final("b"), ref=3)]
        )
        messages = await recv_n(ws, 3)
    by_ref = {m["ref"]: m for m in messages}
    assert by_ref[1] == {"type": "ack", "ref": 1, "seq": 1}
    assert by_ref[2] == {"type": "ack", "ref": 2, "seq": 2}
    assert by_ref[3]["type"] == "error"
    assert by_ref[3]["call_id"] == call_id
    assert [e["type"] for e in history(server, api_key, call_id)] == ["transcript.final", "call.ended"]


async def test_oversized_frame_gets_message_too_large_and_socket_stays_open(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with await open_ingest(server, api_key) as ws:
        await send_frame(ws, ev(call_id, final("x" * (1024 * 1024 + 10)), ref="big"))
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["data"]["code"] == "message_too_large"
        await send_frame(ws, ev(call_id, final("small"), ref="small"))
        assert await recv(ws) == {"type": "ack", "ref": "small", "seq": 1}


async def test_revoking_the_key_ends_ingest_sockets_within_5s(server: ServerProcess, call_id: str) -> None:
    account = f"revoke_{uuid.uuid4().hex[:8]}"
    out = await asyncio.to_thread(
        server.cli, "keys", "create", "--account", account, "--json", *server.database_args()
    )
    created = orjson.loads(out.stdout)
    async with await open_ingest(server, created["key"]) as ws:
        await send_frame(ws, ev(call_id, final("before"), ref=1))
        assert (await recv(ws))["type"] == "ack"
        await asyncio.to_thread(server.cli, "keys", "revoke", created["id"], *server.database_args())
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionClosed):
            await drain(ws)
        assert asyncio.get_running_loop().time() - started < 5
        assert ws.close_code == 4001
    with pytest.raises(InvalidStatus) as caught:
        await open_ingest(server, created["key"])
    assert caught.value.response.status_code == 401


async def drain(ws: ClientConnection) -> None:
    while True:
        await recv(ws, timeout=6)


async def test_subscribe_only_key_is_refused_at_the_handshake(server: ServerProcess) -> None:
    key = server.create_key(f"sub_{uuid.uuid4().hex[:8]}", "subscribe")
    with pytest.raises(InvalidStatus) as caught:
        await open_ingest(server, key)
    assert caught.value.response.status_code == 403
    assert orjson.loads(caught.value.response.body)["error"]["code"] == "forbidden"


@pytest.mark.parametrize("credential", ["", "cs_wrong"])
async def test_ingest_without_a_valid_key_is_401(server: ServerProcess, credential: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await open_ingest(server, credential)
    assert caught.value.response.status_code == 401
    assert orjson.loads(caught.value.response.body)["error"]["code"] == "unauthorized"


async def test_a_jwt_cannot_ingest(server: ServerProcess, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    token = (await asyncio.to_thread(httpx.post, f"{server.url}/v1/tokens", headers=headers)).json()["token"]
    with pytest.raises(InvalidStatus) as caught:
        await open_ingest(server, token)
    assert caught.value.response.status_code == 403


async def test_ingest_is_per_account(
    server: ServerProcess, api_key: str, other_key: str, call_id: str
) -> None:
    async with await open_ingest(server, other_key) as ws:
        await send_frame(ws, ev(call_id, final("globex"), ref=1))
        assert (await recv(ws))["seq"] == 1
    headers = {"Authorization": f"Bearer {api_key}"}
    missing = await asyncio.to_thread(httpx.get, f"{server.url}/v1/calls/{call_id}", headers=headers)
    assert missing.status_code == 404  # globex's call_id is not acme's


async def test_acked_events_survive_sigkill_and_seq_continues(
    fresh_server: ServerProcess, call_id: str
) -> None:
    """Slow-ish (two server starts)."""
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    async with await open_ingest(fresh_server, key) as ws:
        await send_frame(
            ws,
            [
                ev(call_id, final("one")),
                ev(call_id, partial("tw")),
                ev(call_id, final("two")),
                ev(call_id, {"type": "function.call", "data": {"name": "f", "args": {}}}),
            ],
        )
        await send_frame(ws, ev(call_id, final("three"), ref="last"))
        assert await recv(ws) == {"type": "ack", "ref": "last", "seq": 5}
        fresh_server.kill()  # SIGKILL right after the ack: no shutdown code runs
    await asyncio.to_thread(fresh_server.start)
    assert [e["seq"] for e in history(fresh_server, key, call_id)] == [1, 3, 4, 5]
    assert [e["data"].get("text") for e in history(fresh_server, key, call_id)] == [
        "one",
        "two",
        None,
        "three",
    ]
    async with await open_ingest(fresh_server, key) as ws:
        await send_frame(ws, ev(call_id, final("four"), ref=1))
        assert await recv(ws) == {"type": "ack", "ref": 1, "seq": 6}
    assert publish(fresh_server, key, call_id, ended()).json()["seq"] == [7]
    assert [e["seq"] for e in history(fresh_server, key, call_id)] == [1, 3, 4, 5, 6, 7]


# ---- callstream.Publisher ----------------------------------------------------------------------------


async def test_publisher_publishes_through_the_real_server(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with await open_events(server, api_key) as sub:
        await send(sub, {"type": "subscribe", "call_id": call_id})
        await recv_until(sub, "subscribed")
        async with Publisher(server.url, api_key) as pub:
            assert await pub.publish(call_id, "transcript.final", {"speaker": "user", "text": "hello"}) == 1
            futures = [
                pub.send(call_id, "transcript.partial", {"speaker": "agent", "text": "Hi"}),
                pub.send(call_id, "transcript.final", {"speaker": "agent", "text": "Hi there"}),
                pub.send(call_id, "call.ended", {"status": "completed", "duration_ms": 1234}),
            ]
            await pub.flush()
            assert [f.result() for f in futures] == [2, 3, 4]
        received = [await recv(sub) for _ in range(4)]
    assert [(m["type"], m["seq"]) for m in received] == [
        ("transcript.final", 1),
        ("transcript.partial", 2),
        ("transcript.final", 3),
        ("call.ended", 4),
    ]
    assert [e["seq"] for e in history(server, api_key, call_id)] == [1, 3, 4]


async def test_publisher_surfaces_refusals_per_event(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with Publisher(server.url, api_key) as pub:
        bad = pub.send(call_id, "transcript.final", {"speaker": "robot", "text": "x"})
        good = pub.send(call_id, "transcript.final", {"speaker": "user", "text": "fine"})
        end = pub.send(call_id, "call.ended", {"status": "completed", "duration_ms": 1})
        late = pub.send(call_id, "transcript.final", {"speaker": "user", "text": "late"})
        await pub.flush()
        with pytest.raises(PublishError) as caught:
            bad.result()
        assert caught.value.code == "invalid_message"
        assert (good.result(), end.result()) == (1, 2)
        with pytest.raises(PublishError) as late_error:
            late.result()
        assert "ended" in late_error.value.message


async def test_publisher_with_a_subscribe_only_key_fails_at_start(server: ServerProcess) -> None:
    key = server.create_key(f"sub_{uuid.uuid4().hex[:8]}", "subscribe")
    pub = Publisher(server.url, key)
    with pytest.raises(PublishError) as caught:
        await pub.start()
    assert caught.value.code == "unauthorized"
    await pub.close()


async def test_seq_is_never_reused_after_a_crash(fresh_server: ServerProcess, call_id: str) -> None:
    """A subscriber that saw seq N and resumes with since=N after a crash gets every new event.

    KNOWN SERVER BUG (fails today, see the report): events are fanned out to subscribers before
    the store commits them, and after a SIGKILL the per-call counter restarts from the store's
    last_seq. New events then reuse seqs subscribers already saw for other (lost) events, and a
    client resuming with `since` silently skips them. Slow-ish (two server starts).
    """
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    seen: list[int] = []
    # close_timeout: after the kill, do not wait for a closing handshake behind unread frames
    sub = await open_events(fresh_server, key, close_timeout=0.5)
    ingest = await open_ingest(fresh_server, key, close_timeout=0.5)
    async with sub, ingest:
        await send(sub, {"type": "subscribe", "call_id": call_id})
        await recv_until(sub, "subscribed")
        for frame in range(100):  # a burst: the producer does not wait for acks
            batch = [ev(call_id, final(f"burst {frame}.{i}")) for i in range(50)]
            await send_frame(ingest, batch)
        while len(seen) < 500:
            seen.append((await recv(sub))["seq"])
        fresh_server.kill()
    max_seen = max(seen)

    await asyncio.to_thread(fresh_server.start)
    async with await open_events(fresh_server, key) as sub:
        await send(sub, {"type": "subscribe", "call_id": call_id, "since": max_seen})
        await recv_until(sub, "subscribed")
        new_seq = publish(fresh_server, key, call_id, final("after the crash")).json()["seq"][0]
        assert new_seq > max_seen, f"seq {new_seq} reused: a subscriber already saw seq {max_seen}"
        message = await recv(sub, timeout=2)
        assert message["data"]["text"] == "after the crash"


async def test_acked_events_survive_sigkill_at_random_moments(
    fresh_server: ServerProcess, call_id: str
) -> None:
    """The fault-injection run: a producer streams events with refs without waiting for acks; the
    server is SIGKILLed at a random moment; after the restart every acked ref is stored with the
    seq its ack named. Three kills per run; the seed is printed for replay. Slow-ish (4 starts)."""
    seed = int(os.environ.get("CALLSTREAM_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"fault seed {seed}")
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    acked_total = 0
    for round_no in range(3):
        cid = f"{call_id}_{round_no}"
        acked: dict[str, int] = {}
        ws = await open_ingest(fresh_server, key, close_timeout=0.5)

        async def produce(ws: ClientConnection = ws, cid: str = cid) -> None:
            n = 0
            while True:
                size = rng.randint(1, 20)
                batch = [ev(cid, final(f"e{n + i}"), ref=f"e{n + i}") for i in range(size)]
                await send_frame(ws, batch if size > 1 else batch[0])
                n += size
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))

        async def collect(ws: ClientConnection = ws, acked: dict[str, int] = acked) -> None:
            async for raw in ws:
                message = orjson.loads(raw)
                assert message["type"] == "ack", message
                acked[message["ref"]] = message["seq"]

        tasks = [asyncio.create_task(produce()), asyncio.create_task(collect())]
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        await asyncio.to_thread(fresh_server.kill)  # no shutdown code runs
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert acked, "nothing was acked before the kill: the moment was too early to prove anything"

        await asyncio.to_thread(fresh_server.start)
        held = {e["data"]["text"]: e["seq"] for e in history(fresh_server, key, cid)}
        lost = {ref: seq for ref, seq in acked.items() if held.get(ref) != seq}
        assert not lost, f"seed {seed}: {len(lost)} acked events lost or moved, e.g. {list(lost.items())[:5]}"
        acked_total += len(acked)
        after = publish(fresh_server, key, cid, final("after the restart")).json()["seq"][0]
        assert after > max(acked.values())  # no seq handed out twice
    print(f"fault seed {seed}: 3 SIGKILLs, {acked_total} acked events, 0 lost")
