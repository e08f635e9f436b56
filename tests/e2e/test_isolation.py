"""One account's values never break another's: docs/protocol.md, Values and isolation, on real servers.

Account A sends what a hostile or buggy producer would; account B's canary call must keep publishing,
replaying and reading over REST, and the node must stay healthy, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, final, publish


@pytest.fixture(scope="module")
def hostile(store_node: ServerProcess) -> str:
    return store_node.create_key(f"acct_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def canary(store_node: ServerProcess) -> str:
    return store_node.create_key(f"acct_{uuid.uuid4().hex[:8]}")


def get(server: ServerProcess, path: str, key: str) -> httpx.Response:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def canary_serves(server: ServerProcess, key: str, call_id: str) -> None:
    """Account B publishes, reads its call and its history, and the node says it is healthy."""
    answer = publish(server, key, call_id, final("still here", speaker="agent"))
    assert answer.status_code == 202, answer.text
    seq = answer.json()["seq"][0]
    call = get(server, f"/v1/calls/{call_id}", key)
    assert call.status_code == 200, call.text
    assert call.json()["last_seq"] >= seq
    events = get(server, f"/v1/calls/{call_id}/events?since={seq - 1}", key)
    assert events.status_code == 200, events.text
    assert [e["seq"] for e in events.json()["events"]] == [seq]
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_sentiment_sum_that_would_overflow_is_refused_and_other_accounts_go_on(
    store_node: ServerProcess, hostile: str, canary: str
) -> None:
    canary_call = f"canary_{uuid.uuid4().hex[:8]}"
    call_id = f"call_overflow_{uuid.uuid4().hex[:8]}"
    canary_serves(store_node, canary, canary_call)
    huge = final("great", sentiment={"score": 1e308, "label": "positive"})
    # Two in one request (their commit's sum overflows) and two apart (the call's sum does).
    answers = [publish(store_node, hostile, call_id, [huge, huge])]
    answers += [publish(store_node, hostile, call_id, huge) for _ in range(2)]
    time.sleep(1.5)  # past the embedded store's fold interval: a poisoned row would have been folded
    canary_serves(store_node, canary, canary_call)
    for answer in answers:
        assert answer.status_code == 422, answer.text
        assert "sentiment.score" in answer.json()["error"]["message"]
    assert get(store_node, f"/v1/calls/{call_id}", hostile).status_code == 404  # nothing of it was applied


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"type":"function.call","data":{"name":"f","args":{"n":18446744073709551615}}}', "64 bits"),
        (b'{"type":"function.call","data":{"name":"f","args":{"n":1e400}}}', "infinity"),
        (b'{"type":"function.call","data":{"name":"f","args":' + b"[" * 300 + b"]" * 300 + b"}}", "deeper"),
        (b'{"type":"call.ended","data":{"status":"failed","duration_ms":1,"reason":"a\\u0000b"}}', "U+0000"),
        (b'{"type":"transcript.final","data":{"speaker":"user","text":"x","sentiment":{"score":2}}}', "[-1, 1]"),
    ],
)
def test_values_the_server_could_not_keep_are_refused_with_the_reason(
    store_node: ServerProcess, hostile: str, canary: str, body: bytes, problem: str
) -> None:
    call_id = f"call_bad_{uuid.uuid4().hex[:8]}"
    answer = httpx.post(
        f"{store_node.url}/v1/calls/{call_id}/events",
        content=body,
        headers={"Authorization": f"Bearer {hostile}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 422, answer.text
    assert problem in answer.json()["error"]["message"]
    assert get(store_node, f"/v1/calls/{call_id}", hostile).status_code == 404
    canary_serves(store_node, canary, f"canary_{uuid.uuid4().hex[:8]}")


def test_the_node_stays_healthy_across_a_restart_after_hostile_input(tmp_path: Path) -> None:
    """The defect this file was written for survived restarts: the bad row was folded again at start."""
    server = ServerProcess(tmp_path).start()
    try:
        hostile = server.create_key("acct_hostile")
        canary = server.create_key("acct_canary")
        huge = final("great", sentiment={"score": 1e308, "label": "positive"})
        publish(server, hostile, "call_overflow", [huge, huge])
        time.sleep(1.5)
        server.restart()
        canary_serves(server, canary, "canary_after_restart")
    finally:
        server.stop()


async def test_on_the_embedded_store_a_call_refused_at_fold_time_fails_alone(tmp_path: Path) -> None:
    """SQLite journals a commit before the fold files it, so the refusal comes after the ack:
    the call's next event gets `internal`, a replay of it answers from the store (never with
    events the store did not take), and the account's other call goes on."""
    import asyncio
    import sqlite3

    import orjson
    from websockets.asyncio.client import connect

    from tests.helpers import recv, recv_until, send

    server = ServerProcess(tmp_path)
    await asyncio.to_thread(server.start)
    try:
        key = await asyncio.to_thread(server.create_key, "acct_fold")
        with sqlite3.connect(tmp_path / "callstream.db") as db:
            db.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON event_chunks WHEN NEW.call_id = 'poison'"
                " BEGIN SELECT RAISE(ABORT, 'this call is refused'); END"
            )
        headers = {"Authorization": f"Bearer {key}"}
        async with await connect(f"{server.ws_url}/v1/ingest", additional_headers=headers) as ingest:
            frame = [
                {"call_id": "good", **final("one"), "ref": "g1"},
                {"call_id": "poison", **final("two"), "ref": "p1"},
            ]
            await ingest.send(orjson.dumps(frame).decode())
            assert [(m["type"], m["ref"]) for m in [await recv(ingest), await recv(ingest)]] == [
                ("ack", "g1"), ("ack", "p1"),
            ]
            await asyncio.sleep(1.5)  # the fold files the journal and refuses poison's rows
            await ingest.send(orjson.dumps({"call_id": "poison", **final("three"), "ref": "p2"}).decode())
            refused = await recv(ingest)
            assert (refused["type"], refused["ref"], refused["data"]["code"]) == ("error", "p2", "internal")
            await ingest.send(orjson.dumps({"call_id": "good", **final("four"), "ref": "g2"}).decode())
            assert (await recv(ingest))["type"] == "ack"
        async with await connect(f"{server.ws_url}/v1/events?token={key}") as sub:
            await send(sub, {"type": "subscribe", "call_id": "poison", "since": 0})
            replay = await recv_until(sub, "subscribed")
            assert [m["type"] for m in replay] == ["subscribed"]  # nothing the store did not take
            await send(sub, {"type": "subscribe", "call_id": "good", "since": 0})
            replay = await recv_until(sub, "subscribed")
            assert [m["data"]["text"] for m in replay if m["type"] == "transcript.final"] == ["one", "four"]
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        await asyncio.to_thread(server.stop)
