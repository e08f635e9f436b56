"""docs/protocol.md, the events socket (Connecting, Client → server, Server → client) over real sockets against a real server process."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import (
    ServerProcess,
    ended,
    final,
    no_message,
    open_events,
    partial,
    publish,
    recv,
    recv_until,
    send,
)


async def test_subscribe_then_live_events_in_order(server: ServerProcess, api_key: str, call_id: str) -> None:
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id})
        subscribed = await recv(ws)
        assert subscribed == {
            "type": "subscribed",
            "call_id": call_id,
            "data": {"call_id": call_id, "status": "pending", "seq": 0, "replayed": 0},
        }
        batch = [partial("hel"), partial("hello"), final("hello there"), ended()]
        assert publish(server, api_key, call_id, batch).json()["seq"] == [1, 2, 3, 4]
        got = [await recv(ws) for _ in range(4)]
    assert [m["seq"] for m in got] == [1, 2, 3, 4]
    assert [m["type"] for m in got] == ["transcript.partial"] * 2 + ["transcript.final", "call.ended"]
    assert all(m["call_id"] == call_id and isinstance(m["ts"], int) for m in got)
    assert got[2]["data"]["is_final"] is True
    assert got[0]["data"]["is_final"] is False
    assert got[2]["data"]["sentiment"]["label"] in {"positive", "neutral", "negative"}


async def test_since_replays_without_gap_or_duplicate(server: ServerProcess, api_key: str, call_id: str) -> None:
    publish(server, api_key, call_id, [final(f"line {i}") for i in range(1, 6)])
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 2})
        replay = await recv_until(ws, "subscribed")
        assert [m["seq"] for m in replay[:-1]] == [3, 4, 5]
        assert replay[-1]["data"] == {"call_id": call_id, "status": "live", "seq": 5, "replayed": 3}
        publish(server, api_key, call_id, final("line 6"))
        assert (await recv(ws))["seq"] == 6


async def test_since_during_concurrent_publishing_is_gapless(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    """Subscribing with since while a producer publishes: every seq exactly once, in order."""
    publish(server, api_key, call_id, final("first"))

    async def produce() -> None:
        for i in range(40):
            await asyncio.to_thread(publish, server, api_key, call_id, final(f"n{i}"))

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.05)
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
        await producer
        seqs: list[int] = []
        while len(seqs) < 41:
            message = await recv(ws)
            if message["type"] != "subscribed":
                seqs.append(message["seq"])
    assert seqs == list(range(1, 42))


async def test_superseded_partials_are_not_replayed(server: ServerProcess, api_key: str, call_id: str) -> None:
    publish(
        server,
        api_key,
        call_id,
        [partial("a", utterance_id="u1"), partial("ab", utterance_id="u1"), final("abc", utterance_id="u1")],
    )
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
        replay = await recv_until(ws, "subscribed")
    assert [(m["type"], m.get("seq")) for m in replay[:-1]] == [("transcript.final", 3)]


async def test_two_calls_on_one_socket_and_unsubscribe(server: ServerProcess, api_key: str, call_id: str) -> None:
    call_a, call_b = call_id + "_a", call_id + "_b"
    async with await open_events(server, api_key) as ws:
        for c in (call_a, call_b):
            await send(ws, {"type": "subscribe", "call_id": c})
            assert (await recv(ws))["type"] == "subscribed"
        publish(server, api_key, call_a, final("to a"))
        publish(server, api_key, call_b, final("to b"))
        got = {(m["call_id"], m["data"]["text"]) for m in [await recv(ws), await recv(ws)]}
        assert got == {(call_a, "to a"), (call_b, "to b")}
        await send(ws, {"type": "unsubscribe", "call_id": call_a})
        assert await recv(ws) == {"type": "unsubscribed", "call_id": call_a, "data": {"call_id": call_a}}
        publish(server, api_key, call_a, final("unheard"))
        publish(server, api_key, call_b, final("heard"))
        message = await recv(ws)
        assert (message["call_id"], message["data"]["text"]) == (call_b, "heard")
        assert await no_message(ws)


async def test_subscribing_twice_replaces_without_duplicates(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with await open_events(server, api_key) as ws:
        for _ in range(2):
            await send(ws, {"type": "subscribe", "call_id": call_id})
            await recv_until(ws, "subscribed")
        publish(server, api_key, call_id, final("once"))
        assert (await recv(ws))["data"]["text"] == "once"
        assert await no_message(ws)


async def test_wildcard_sees_new_calls_of_its_account_only(
    server: ServerProcess, api_key: str, other_key: str, call_id: str
) -> None:
    async with await open_events(server, api_key) as mine, await open_events(server, other_key) as theirs:
        for ws in (mine, theirs):
            await send(ws, {"type": "subscribe", "call_id": "*"})
            assert (await recv(ws))["data"]["call_id"] == "*"
        publish(server, api_key, call_id, final("acme only"))
        message = await recv(mine)
        assert (message["call_id"], message["data"]["text"]) == (call_id, "acme only")
        assert await no_message(theirs)


async def test_wildcard_plus_explicit_delivers_once(server: ServerProcess, api_key: str, call_id: str) -> None:
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": "*"})
        await recv(ws)
        await send(ws, {"type": "subscribe", "call_id": call_id})
        await recv(ws)
        publish(server, api_key, call_id, final("x"))
        assert (await recv(ws))["seq"] == 1
        assert await no_message(ws)


async def test_types_filter(server: ServerProcess, api_key: str, call_id: str) -> None:
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "types": ["transcript.final", "call.ended"]})
        await recv(ws)
        publish(server, api_key, call_id, [partial("h"), {"type": "agent.state", "data": {"state": "thinking"}}])
        publish(server, api_key, call_id, [final("hi"), ended()])
        assert [(await recv(ws))["type"] for _ in range(2)] == ["transcript.final", "call.ended"]
        assert await no_message(ws)


async def test_same_call_id_in_two_accounts_never_mixes(
    server: ServerProcess, api_key: str, other_key: str, call_id: str
) -> None:
    async with await open_events(server, other_key) as theirs:
        await send(theirs, {"type": "subscribe", "call_id": call_id, "since": 0})
        assert (await recv(theirs))["data"]["status"] == "pending"
        publish(server, api_key, call_id, final("secret of acme"))
        assert await no_message(theirs)
        publish(server, other_key, call_id, final("globex's own"))
        message = await recv(theirs)
        assert (message["seq"], message["data"]["text"]) == (1, "globex's own")


async def test_ping_and_bad_messages_keep_the_socket_open(server: ServerProcess, api_key: str) -> None:
    async with await open_events(server, api_key) as ws:
        cases = [
            ("not json", "invalid_message"),
            ("[1,2]", "invalid_message"),
            ('{"type": 5}', "invalid_message"),
            ('{"type": "dance"}', "unknown_type"),
            ('{"type": "subscribe"}', "invalid_message"),
            ('{"type": "subscribe", "call_id": "bad id!"}', "invalid_message"),
            ('{"type": "subscribe", "call_id": "*", "since": 3}', "invalid_message"),
            ('{"type": "subscribe", "call_id": "c", "since": -1}', "invalid_message"),
            ('{"type": "subscribe", "call_id": "c", "types": ["nope"]}', "invalid_message"),
            ('{"type": "auth"}', "invalid_message"),
        ]
        for raw, code in cases:
            await ws.send(raw)
            message = await recv(ws)
            assert message["type"] == "error", raw
            assert message["data"]["code"] == code, raw
            assert message["data"]["message"]
        await ws.send(b'{"type":"ping"}')
        assert (await recv(ws))["data"]["code"] == "invalid_message"
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


@pytest.mark.parametrize("where", ["query", "header", "subprotocol"])
async def test_credential_in_query_header_or_subprotocol(
    server: ServerProcess, api_key: str, call_id: str, where: str
) -> None:
    token = httpx.post(
        f"{server.url}/v1/tokens", json={"ttl_s": 60}, headers={"Authorization": f"Bearer {api_key}"}
    ).json()["token"]
    url = f"{server.ws_url}/v1/events"
    kwargs: dict[str, object] = {}
    if where == "query":
        url += f"?token={token}"
    elif where == "header":
        kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
    else:
        kwargs["subprotocols"] = ["bearer", token]
    async with connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        if where == "subprotocol":
            assert ws.subprotocol == "bearer"
        await send(ws, {"type": "subscribe", "call_id": call_id})
        assert (await recv(ws))["type"] == "subscribed"


@pytest.mark.parametrize("credential", ["", "cs_not_a_key", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhY21lIn0."])
async def test_bad_credentials_get_401_json_without_upgrade(server: ServerProcess, credential: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await connect(f"{server.ws_url}/v1/events?token={credential}")
    response = caught.value.response
    assert response.status_code == 401
    assert b'"code":"unauthorized"' in response.body


async def test_publish_only_key_cannot_subscribe(server: ServerProcess) -> None:
    key = server.create_key("acme", "publish")
    with pytest.raises(InvalidStatus) as caught:
        await open_events(server, key)
    assert caught.value.response.status_code == 403


async def test_jwt_limited_to_calls_forbids_others(server: ServerProcess, api_key: str, call_id: str) -> None:
    token = httpx.post(
        f"{server.url}/v1/tokens", json={"calls": [call_id]}, headers={"Authorization": f"Bearer {api_key}"}
    ).json()["token"]
    async with await open_events(server, token) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id})
        assert (await recv(ws))["type"] == "subscribed"
        for other in ("someone_else", "*"):
            await send(ws, {"type": "subscribe", "call_id": other})
            message = await recv(ws)
            assert (message["type"], message["data"]["code"]) == ("error", "forbidden")


async def test_expired_token_closes_4001_and_auth_refresh_keeps_it(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    def mint(ttl: int) -> str:
        response = httpx.post(
            f"{server.url}/v1/tokens", json={"ttl_s": ttl}, headers={"Authorization": f"Bearer {api_key}"}
        )
        return str(response.json()["token"])

    # `refreshed` gets a few seconds: exp is in whole seconds, and a loaded machine must still get
    # its `auth` in before the first token runs out
    async with await open_events(server, mint(3)) as refreshed, await open_events(server, mint(1)) as lapsed:
        await send(refreshed, {"type": "auth", "token": mint(60)})
        await send(refreshed, {"type": "subscribe", "call_id": call_id})
        got = await recv(refreshed)
        assert got["type"] == "subscribed", got
        message = await recv(lapsed, timeout=10)
        assert message["data"]["code"] == "token_expired"
        with pytest.raises(ConnectionClosed) as closed:
            await recv(lapsed)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001
        await asyncio.sleep(3.0)  # past the first token of `refreshed`
        publish(server, api_key, call_id, final("still here"))
        assert (await recv(refreshed))["data"]["text"] == "still here"


async def test_revoking_a_key_ends_its_sockets_within_5s(server: ServerProcess) -> None:
    key = server.create_key("acme")
    key_id = server.cli("keys", "list", "--json", "--data-dir", str(server.data_dir)).stdout
    async with await open_events(server, key) as ws:
        import orjson

        ids = [k["id"] for k in orjson.loads(key_id) if k["account"] == "acme"]
        for kid in ids[-1:]:
            server.cli("keys", "revoke", kid, "--data-dir", str(server.data_dir))
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws, timeout=6)
        assert asyncio.get_running_loop().time() - started < 5
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001


async def test_message_too_large_closes_1009(server: ServerProcess, api_key: str) -> None:
    async with await open_events(server, api_key) as ws:
        await ws.send('{"type":"ping","pad":"' + "x" * 70_000 + '"}')
        message = await recv(ws)
        assert message["data"]["code"] == "message_too_large"
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_rate_limit_answers_rate_limited_and_keeps_serving(server: ServerProcess, api_key: str) -> None:
    async with await open_events(server, api_key) as ws:
        for _ in range(130):
            await send(ws, {"type": "ping"})
        replies = [await recv(ws) for _ in range(130)]
        limited = [r for r in replies if r.get("type") == "error"]
        assert limited
        assert all(r["data"]["code"] == "rate_limited" for r in limited)
        assert sum(r == {"type": "pong"} for r in replies) >= 100
        await asyncio.sleep(0.5)
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_an_ended_call_replays_completely_from_the_store(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    """Once a call ended, the node keeps its history in the store only: since still works."""
    batch = [partial("he", utterance_id="u1"), final("hello", utterance_id="u1")]
    batch += [{"type": "function.call", "data": {"name": "f", "args": {}}}, final("bye", speaker="agent")]
    publish(server, api_key, call_id, [*batch, ended()])
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 1})
        replay = await recv_until(ws, "subscribed")
    assert [(m["type"], m.get("seq")) for m in replay] == [
        ("transcript.final", 2),
        ("function.call", 3),
        ("transcript.final", 4),
        ("call.ended", 5),
        ("subscribed", None),
    ]
    assert replay[-1]["data"] == {"call_id": call_id, "status": "ended", "seq": 5, "replayed": 4}


async def test_sockets_closed_by_either_side_end_at_once_and_leave_no_descriptor_open(
    fresh_server: ServerProcess, call_id: str
) -> None:
    fresh_server.start()
    key = fresh_server.create_key("acme")
    assert fresh_server.proc is not None
    descriptors = f"/proc/{fresh_server.proc.pid}/fd"

    async def subscribed() -> ClientConnection:
        ws = await open_events(fresh_server, key)
        await send(ws, {"type": "subscribe", "call_id": call_id})
        assert (await recv(ws))["type"] == "subscribed"
        return ws

    await (await subscribed()).close()  # the first connection opens what the server keeps open
    await asyncio.sleep(0.5)
    baseline = len(os.listdir(descriptors))
    clients = [await subscribed() for _ in range(50)]
    assert len(os.listdir(descriptors)) >= baseline + 50
    await asyncio.gather(*(ws.close() for ws in clients))

    # The server ends this one: its TCP connection must end with the close handshake, not after
    # the client's close timeout (10 s) because something kept the server's side open.
    ws = await subscribed()
    started = asyncio.get_running_loop().time()
    await ws.send('{"type":"ping","pad":"' + "x" * 70_000 + '"}')
    assert (await recv(ws))["data"]["code"] == "message_too_large"
    await ws.wait_closed()
    assert asyncio.get_running_loop().time() - started < 3

    for _ in range(50):
        if len(os.listdir(descriptors)) <= baseline:
            break
        await asyncio.sleep(0.1)
    assert len(os.listdir(descriptors)) <= baseline
