"""Erasure (docs/protocol.md, Retention and erasure; docs/privacy.md) through real server processes: on SQLite and
PostgreSQL, and across two nodes on Redis. An erased call answers like one that never existed,
everywhere, and its id starts a new call at seq 1."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.broker.services import NODES_REDIS_URL
from tests.helpers import (
    Cluster,
    ServerProcess,
    ended,
    final,
    free_port,
    key_of,
    open_events,
    publish,
    recv,
    send,
)

SECRET = "my card is 4111 1111 1111 1111"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def ended_call(server: ServerProcess, key: str, call_id: str) -> None:
    for events in ([final("hello"), final(SECRET)], [ended()]):
        assert publish(server, key, call_id, events).status_code == 202


def delete(server: ServerProcess, key: str, call_id: str) -> httpx.Response:
    return httpx.delete(f"{server.url}/v1/calls/{call_id}", headers=auth(key), timeout=30)


def get(server: ServerProcess, key: str, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers=auth(key), timeout=10)


def wait_for(predicate: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def assert_never_existed(server: ServerProcess, key: str, call_id: str) -> None:
    """Every REST read of the call answers like one of a call that never existed."""
    for path in (f"/v1/calls/{call_id}", f"/v1/calls/{call_id}/events", f"/v1/calls/{call_id}/transcript"):
        response = get(server, key, path)
        assert response.status_code == 404, (path, response.text)
        assert response.json() == {"error": {"code": "not_found", "message": "no such call"}}
    listed = get(server, key, "/v1/calls?limit=500").json()["calls"]
    assert call_id not in [c["call_id"] for c in listed]
    assert call_id not in searched(server, key, SECRET)


def searched(server: ServerProcess, key: str, words: str) -> list[str]:
    """The calls a full-text search over final transcripts finds (`GET /v1/calls?q=`)."""
    answer = httpx.get(f"{server.url}/v1/calls", params={"q": words, "limit": 500}, headers=auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    return [c["call_id"] for c in answer.json()["calls"]]


async def replay_from_zero(server: ServerProcess, key: str, call_id: str) -> dict[str, Any]:
    """What a socket that subscribes with `since: 0` gets first (the replay, then `subscribed`)."""
    async with await open_events(server, key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
        return await recv(ws)


def journal_mentions(data_dir: Path, call_id: str) -> bool:
    """Whether a file of the embedded store's journal (its events not folded yet) names the call."""
    return any(call_id.encode() in journal.read_bytes() for journal in data_dir.glob("*-events.*"))


NEVER_EXISTED = {"status": "pending", "seq": 0, "replayed": 0}


# ---- one node, on SQLite and PostgreSQL ------------------------------------------------------


async def test_an_erased_call_is_gone_from_rest_replay_webhooks_and_the_journal(any_store: ServerProcess) -> None:
    key, call_id = key_of(any_store), new_call_id()
    hook = {"url": f"http://127.0.0.1:{free_port()}/hook"}  # nobody listens: its message stays pending
    webhook = httpx.post(f"{any_store.url}/v1/webhooks", json=hook, headers=auth(key), timeout=10).json()
    ended_call(any_store, key, call_id)
    deliveries = f"/v1/webhooks/{webhook['id']}/deliveries"
    wait_for(lambda: get(any_store, key, deliveries).json()["deliveries"])
    assert searched(any_store, key, SECRET) == [call_id]

    answer = delete(any_store, key, call_id)

    assert answer.status_code == 204, answer.text
    assert answer.content == b""
    assert_never_existed(any_store, key, call_id)
    assert get(any_store, key, deliveries).json()["deliveries"] == []
    subscribed = await replay_from_zero(any_store, key, call_id)
    assert subscribed == {"type": "subscribed", "call_id": call_id, "data": {"call_id": call_id, **NEVER_EXISTED}}
    assert not journal_mentions(Path(any_store.data_dir), call_id)


def test_an_erased_call_id_starts_a_new_call_at_seq_1(any_store: ServerProcess) -> None:
    key, call_id = key_of(any_store), new_call_id()
    ended_call(any_store, key, call_id)
    assert delete(any_store, key, call_id).status_code == 204

    again = publish(any_store, key, call_id, [final("a new call")])

    assert again.status_code == 202, again.text
    assert again.json()["seq"] == [1]
    call = get(any_store, key, f"/v1/calls/{call_id}").json()
    assert (call["status"], call["last_seq"]) == ("live", 1)
    texts = [u["text"] for u in get(any_store, key, f"/v1/calls/{call_id}/transcript").json()["utterances"]]
    assert texts == ["a new call"]


def test_a_live_call_is_not_erased(any_store: ServerProcess) -> None:
    key, call_id = key_of(any_store), new_call_id()
    assert publish(any_store, key, call_id, [final("still talking")]).status_code == 202

    answer = delete(any_store, key, call_id)

    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "call_not_live"
    assert "end it first" in answer.json()["error"]["message"]
    assert get(any_store, key, f"/v1/calls/{call_id}").json()["status"] == "live"


def test_another_accounts_call_answers_exactly_like_a_missing_one(any_store: ServerProcess) -> None:
    owner, stranger, call_id = key_of(any_store), key_of(any_store), new_call_id()
    ended_call(any_store, owner, call_id)

    theirs, missing = delete(any_store, stranger, call_id), delete(any_store, stranger, new_call_id())

    assert (theirs.status_code, theirs.json()) == (missing.status_code, missing.json())
    assert theirs.status_code == 404
    assert get(any_store, owner, f"/v1/calls/{call_id}").status_code == 200


def test_erasure_needs_the_admin_scope(any_store: ServerProcess) -> None:
    account = f"acct_{uuid.uuid4().hex[:10]}"
    admin, reader = any_store.create_key(account), any_store.create_key(account, "publish,subscribe")
    call_id = new_call_id()
    ended_call(any_store, admin, call_id)

    answer = delete(any_store, reader, call_id)

    assert answer.status_code == 403
    assert get(any_store, admin, f"/v1/calls/{call_id}").status_code == 200


def test_the_cli_erases_a_call_and_says_why_it_cannot(any_store: ServerProcess) -> None:
    key, done, live = key_of(any_store), new_call_id(), new_call_id()
    ended_call(any_store, key, done)
    assert publish(any_store, key, live, [final("still talking")]).status_code == 202

    def cli(call_id: str) -> Any:
        return any_store.cli("calls", "delete", call_id, "--url", any_store.url, "--key", key, check=False)

    erased, twice, refused = cli(done), cli(done), cli(live)

    assert (erased.returncode, erased.stdout.strip()) == (0, f"call {done} erased")
    assert twice.returncode == 1
    assert "not_found" in twice.stderr
    assert refused.returncode == 1
    assert "call_not_live" in refused.stderr
    assert_never_existed(any_store, key, done)


# ---- two nodes on Redis and PostgreSQL --------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
async def test_an_erasure_on_one_node_holds_on_every_node(cluster: Cluster, account: str) -> None:
    a, b = cluster.start(2)
    key, call_id = cluster.key(account), new_call_id()
    async with await open_events(b, key) as follower:  # node b delivers the call, so it keeps its seqs
        await send(follower, {"type": "subscribe", "call_id": call_id})
        assert (await recv(follower))["type"] == "subscribed"
        ended_call(a, key, call_id)
        seen = [await recv(follower) for _ in range(3)]
        assert [m["seq"] for m in seen] == [1, 2, 3]

    assert delete(a, key, call_id).status_code == 204

    for node in (a, b):
        assert_never_existed(node, key, call_id)
    client = redis.Redis.from_url(NODES_REDIS_URL, decode_responses=True)
    try:
        assert not list(client.scan_iter(match=f"*:{call_id}:*"))
        for zset in client.scan_iter(_type="zset"):
            assert not [m for m in client.zrange(zset, 0, -1) if call_id in m], zset
    finally:
        client.close()
    async with await open_events(b, key) as follower:
        await send(follower, {"type": "subscribe", "call_id": call_id, "since": 0})
        subscribed = await recv(follower)
        assert subscribed["data"] == {"call_id": call_id, **NEVER_EXISTED}
        again = publish(a, key, call_id, [final("a new call")])
        assert again.json()["seq"] == [1]
        first = await recv(follower)  # b forgot the old call's seqs: 1 is not taken for a duplicate
        assert (first["seq"], first["data"]["text"]) == (1, "a new call")
