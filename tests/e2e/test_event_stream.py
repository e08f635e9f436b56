"""docs/protocol.md, Server-Sent Events, over plain HTTP against real server processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from tests.helpers import Cluster, ServerProcess, ended, final, open_events, partial, publish
from tests.sse_reader import SseMessage, open_stream


def calls(*call_ids: str) -> list[tuple[str, str]]:
    return [("call_id", c) for c in call_ids]


def new_call() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def seqs(messages: list[SseMessage], call_id: str) -> list[int]:
    return [m.json["seq"] for m in messages if m.json.get("call_id") == call_id and "seq" in m.json]


async def test_a_stream_of_two_calls_carries_the_socket_json_with_a_cursor_in_each_id(
    server: ServerProcess, api_key: str
) -> None:
    a, b = new_call(), new_call()
    publish(server, api_key, a, final("before"))
    async with open_stream(server.url, calls(a, b), api_key) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        first = await stream.events(2)
        assert [(m.event, m.json["data"]["seq"]) for m in first] == [("subscribed", 1), ("subscribed", 0)]
        assert first[1].id == f"{a}=1,{b}=0"
        publish(server, api_key, b, final("hello b"))
        publish(server, api_key, a, [partial("hel"), ended()])
        got = await stream.events(3)
    assert [(m.event, m.id) for m in got] == [
        ("transcript.final", f"{a}=1,{b}=1"),
        ("transcript.partial", f"{a}=2,{b}=1"),
        ("call.ended", f"{a}=3,{b}=1"),
    ]
    message = got[0].json
    assert message["type"] == "transcript.final"
    assert message["call_id"] == b
    assert message["seq"] == 1
    assert message["data"]["text"] == "hello b"
    assert isinstance(message["ts"], int)
    assert stream.retry == 1000


async def test_last_event_id_resumes_several_calls_with_no_gap_and_no_duplicate(
    server: ServerProcess, api_key: str
) -> None:
    a, b = new_call(), new_call()
    async with open_stream(server.url, calls(a, b), api_key) as stream:
        await stream.events(2)
        publish(server, api_key, a, [final("a1"), final("a2")])
        publish(server, api_key, b, final("b1"))
        await stream.events(3)
        cursor = stream.last_id
    assert cursor == f"{a}=2,{b}=1"
    publish(server, api_key, a, [final("a3"), final("a4")])  # while nobody listens
    publish(server, api_key, b, [final("b2")])
    async with open_stream(server.url, calls(a, b), api_key, {"Last-Event-ID": cursor}) as stream:
        caught_up = await stream.events(5)  # a: 3, 4 and subscribed; b: 2 and subscribed
        publish(server, api_key, b, final("b3"))
        live = await stream.next()
    assert seqs(caught_up, a) == [3, 4]
    assert seqs(caught_up, b) == [2]
    assert [m.event for m in caught_up].count("subscribed") == 2
    assert (live.json["call_id"], live.json["seq"], live.id) == (b, 3, f"{a}=4,{b}=3")


async def test_since_replays_one_call_and_a_cursor_in_the_query_works_like_the_header(
    server: ServerProcess, api_key: str
) -> None:
    a = new_call()
    publish(server, api_key, a, [final(f"line {i}") for i in range(1, 5)])
    async with open_stream(server.url, [*calls(a), ("since", "2")], api_key) as stream:
        replay = await stream.until("subscribed")
    assert seqs(replay, a) == [3, 4]
    params = [*calls(a), ("since", "0"), ("last_event_id", f"{a}=3")]  # the cursor wins over since
    async with open_stream(server.url, params, api_key) as stream:
        assert seqs(await stream.until("subscribed"), a) == [4]


async def test_types_filter_and_token_in_the_query(server: ServerProcess, api_key: str) -> None:
    a = new_call()
    token = httpx.post(f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {api_key}"}).json()["token"]
    params = [*calls(a), ("types", "transcript.final,call.ended"), ("token", token)]
    async with open_stream(server.url, params) as stream:
        await stream.next()
        publish(server, api_key, a, [partial("x"), final("xy"), ended()])
        got = await stream.events(2)
    assert [m.event for m in got] == ["transcript.final", "call.ended"]
    assert token not in server.log()


async def test_a_wildcard_stream_follows_new_calls_and_resumes_the_ones_it_had_seen(
    server: ServerProcess,
) -> None:
    key = server.create_key(f"acct_{uuid.uuid4().hex[:8]}")
    a, b = new_call(), new_call()
    async with open_stream(server.url, calls("*"), key) as stream:
        assert (await stream.next()).event == "subscribed"
        publish(server, key, a, final("a1"))
        publish(server, key, b, [final("b1"), ended()])
        got = await stream.events(3)
        cursor = stream.last_id
    assert [m.id for m in got] == [f"{a}=1", f"{a}=1,{b}=1", f"{a}=1"]  # an ended call leaves the cursor
    publish(server, key, a, [final("a2"), final("a3")])
    async with open_stream(server.url, calls("*"), key, {"Last-Event-ID": str(cursor)}) as stream:
        caught_up = await stream.until("subscribed")  # a's catch-up
        await stream.until("subscribed")  # then `*`
        publish(server, key, a, final("a4"))
        live = await stream.next()
    assert seqs(caught_up, a) == [2, 3]
    assert live.json["seq"] == 4
    assert live.id == f"{a}=4"


@pytest.mark.parametrize(
    ("params", "headers", "status", "code"),
    [
        ([("call_id", "c1")], {"Last-Event-ID": "garbage"}, 400, "invalid_cursor"),
        ([("call_id", "c1")], {"Last-Event-ID": "c2=5"}, 400, "invalid_cursor"),
        ([("call_id", "c1")], {"Last-Event-ID": "c1=-1"}, 400, "invalid_cursor"),
        ([("call_id", "c1")], {"Last-Event-ID": "c1=99999999999999999999"}, 400, "invalid_cursor"),
        ([], {}, 422, "invalid_message"),
        ([("call_id", "bad id!")], {}, 422, "invalid_message"),
        ([("call_id", "*"), ("since", "3")], {}, 422, "invalid_message"),
        ([("call_id", "c1"), ("types", "no.such")], {}, 422, "invalid_message"),
        ([("call_id", "c1")], {"Accept": "application/json"}, 406, "not_acceptable"),
    ],
)
async def test_a_bad_query_or_cursor_is_refused_with_a_clear_error(
    server: ServerProcess, api_key: str, params: list[tuple[str, str]], headers: dict[str, str], status: int, code: str
) -> None:
    async with open_stream(server.url, params, api_key, headers) as stream:
        await stream.response.aread()
    assert stream.response.status_code == status
    assert stream.response.json()["error"]["code"] == code


@pytest.mark.parametrize("since", ["99999999999999999999999", "9223372036854775808", "-1", "x"])
async def test_a_since_out_of_range_is_refused_alike_by_the_stream_and_the_events_page(
    server: ServerProcess, api_key: str, since: str
) -> None:
    """One rule for `since` everywhere: a seq from 0 to 2^63-1, and a message that says so."""
    call_id = new_call()
    publish(server, api_key, call_id, final("hello"))
    async with open_stream(server.url, [*calls(call_id), ("since", since)], api_key) as stream:
        await stream.response.aread()
    page = httpx.get(
        f"{server.url}/v1/calls/{call_id}/events", params={"since": since},
        headers={"Authorization": f"Bearer {api_key}"}, timeout=10,
    )  # fmt: skip
    assert (stream.response.status_code, page.status_code) == (422, 422)
    message = stream.response.json()["error"]["message"]
    assert message == page.json()["error"]["message"]
    assert "9223372036854775807" in message
    largest = httpx.get(
        f"{server.url}/v1/calls/{call_id}/events", params={"since": 2**63 - 1},
        headers={"Authorization": f"Bearer {api_key}"}, timeout=10,
    )  # fmt: skip
    assert (largest.status_code, largest.json()["events"]) == (200, [])


async def test_no_credential_is_401_and_another_accounts_call_stays_invisible(
    server: ServerProcess, api_key: str, other_key: str
) -> None:
    async with open_stream(server.url, calls("c1")) as stream:
        await stream.response.aread()
    assert stream.response.status_code == 401
    a = new_call()
    publish(server, api_key, a, final("secret"))
    async with open_stream(server.url, calls(a), other_key) as stream:
        subscribed = await stream.next()
        publish(server, api_key, a, final("still secret"))
        with pytest.raises(TimeoutError):
            await stream.next(0.5)
    assert subscribed.json["data"] == {"call_id": a, "status": "pending", "seq": 0, "replayed": 0}


async def test_keepalive_comments_and_origin_check(fresh_server: ServerProcess) -> None:
    fresh_server.env = {"CALLSTREAM_SSE_KEEPALIVE_S": "0.3", "CALLSTREAM_ALLOWED_ORIGINS": "https://ok.example"}
    fresh_server.start()
    key = fresh_server.create_key("acme")
    async with open_stream(fresh_server.url, calls("c1"), key, {"Origin": "https://evil.example"}) as stream:
        await stream.response.aread()
    assert stream.response.status_code == 403
    async with open_stream(fresh_server.url, calls("c1"), key, {"Origin": "https://ok.example"}) as stream:
        assert stream.response.headers["access-control-allow-origin"] == "https://ok.example"
        await stream.next()
        with pytest.raises(TimeoutError):
            await stream.next(1.5)
    assert stream.comments.count("keepalive") >= 2


async def refusal(server: ServerProcess, key: str) -> httpx.Response:
    """The answer to a stream that must not start (it fails the test at once if it does)."""
    async with open_stream(server.url, calls("c1"), key) as stream:
        assert stream.response.status_code != 200, "the stream was let in"
        await stream.response.aread()
    return stream.response


async def test_a_stream_holds_a_connection_slot_of_its_key_and_account_like_a_socket(
    fresh_server: ServerProcess,
) -> None:
    fresh_server.env = {"CALLSTREAM_MAX_CONNECTIONS_PER_KEY": "1", "CALLSTREAM_QUOTA_SOCKETS": "2"}
    await asyncio.to_thread(fresh_server.start)
    k1, k2, k3 = [await asyncio.to_thread(fresh_server.create_key, "acme") for _ in range(3)]
    async with open_stream(fresh_server.url, calls("c1"), k1) as held:
        assert (await held.next()).event == "subscribed"
        second = await refusal(fresh_server, k1)
        with pytest.raises(InvalidStatus) as socket:  # streams and sockets count together
            await open_events(fresh_server, k1)
        async with open_stream(fresh_server.url, calls("c1"), k2) as other_key:
            assert (await other_key.next()).event == "subscribed"
            third = await refusal(fresh_server, k3)  # the account's 3rd
    for refused, code in ((second, "rate_limited"), (third, "quota_exceeded")):
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == code
        assert int(refused.headers["Retry-After"]) >= 1
    assert socket.value.response.status_code == 429
    assert orjson.loads(socket.value.response.body or b"{}")["error"]["code"] == "rate_limited"
    deadline = time.monotonic() + 5  # a stream's end frees its slot
    while True:
        async with open_stream(fresh_server.url, calls("c1"), k1) as again:
            if again.response.status_code == 200:
                assert (await again.next()).event == "subscribed"
                break
            await again.response.aread()
        assert time.monotonic() < deadline, again.response.text
        await asyncio.sleep(0.1)


async def test_revoking_the_key_over_rest_ends_its_stream_within_5_s(server: ServerProcess) -> None:
    account = f"acct_{uuid.uuid4().hex[:8]}"
    admin = server.create_key(account)
    created = httpx.post(
        f"{server.url}/v1/keys", json={"scopes": ["subscribe"], "name": "wall"}, headers={"Authorization": f"Bearer {admin}"}
    ).json()
    async with open_stream(server.url, calls("c1"), created["key"]) as stream:
        await stream.next()
        started = time.monotonic()
        revoked = httpx.delete(f"{server.url}/v1/keys/{created['id']}", headers={"Authorization": f"Bearer {admin}"})
        assert revoked.status_code == 204
        last = await stream.rest(timeout=6)
    assert time.monotonic() - started < 5
    assert stream.ended
    assert [m.event for m in last] == ["error"]
    assert last[0].json["data"]["code"] == "unauthorized"
    assert last[0].id is None


async def test_a_stream_resumes_across_a_server_restart(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path).start()
    try:
        key = node.create_key("acme")
        a, b = new_call(), new_call()
        publish(node, key, a, final("a1"))
        async with open_stream(node.url, calls(a, b), key) as stream:
            await stream.events(2)
            publish(node, key, b, final("b1"))
            await stream.next()
            cursor = stream.last_id
            node.stop()
            await stream.rest()  # the server goes away: the stream ends
        node.start()
        publish(node, key, a, final("a2"))
        publish(node, key, b, final("b2"))
        async with open_stream(node.url, calls(a, b), key, {"Last-Event-ID": str(cursor)}) as stream:
            got = await stream.events(4)
    finally:
        node.kill()
    assert seqs(got, a) == [2]
    assert seqs(got, b) == [2]


async def test_an_overflowing_stream_ends_with_slow_consumer_and_resumes_without_loss(
    fresh_server: ServerProcess,
) -> None:
    fresh_server.env = {"CALLSTREAM_OUTBOX_HIGH_WATER": "65536"}
    fresh_server.start()
    key = fresh_server.create_key("acme")
    a = new_call()
    text = "x" * 20_000
    async with open_stream(fresh_server.url, calls(a), key) as stream:
        await stream.next()
        for start in range(0, 400, 25):  # 8 MB: more than the kernel's buffers and the outbox hold
            assert publish(fresh_server, key, a, [final(f"{i} {text}") for i in range(start, start + 25)]).status_code == 202
        await asyncio.sleep(1.0)  # the stream is not read meanwhile
        got = await stream.rest(timeout=20)
        cursor = stream.last_id
    assert got[-1].event == "error"
    assert got[-1].json["data"]["code"] == "slow_consumer"
    delivered = seqs(got, a)
    assert delivered == list(range(1, len(delivered) + 1))
    assert len(delivered) < 400
    async with open_stream(fresh_server.url, calls(a), key, {"Last-Event-ID": str(cursor)}) as stream:
        await asyncio.sleep(1.0)  # the replay fills what the kernel holds and then waits for the reader
        rest = await stream.until("subscribed", timeout=20)
    assert seqs(rest, a) == list(range(len(delivered) + 1, 401))


async def test_a_cursor_from_one_node_resumes_on_another_through_redis(cluster: Cluster, account: str) -> None:
    first, second = cluster.start(2)
    key = first.create_key(account)
    a, b = new_call(), new_call()
    async with open_stream(first.url, calls(a, b), key) as stream:
        await stream.events(2)
        publish(second, key, a, final("a1"))  # accepted on the other node, delivered through Redis
        publish(second, key, b, final("b1"))
        got = await stream.events(2)
        cursor = stream.last_id
    assert [m.json["call_id"] for m in got] == [a, b]
    assert cursor == f"{a}=1,{b}=1"
    publish(first, key, a, [final("a2"), final("a3")])
    publish(first, key, b, final("b2"))
    async with open_stream(second.url, calls(a, b), key, {"Last-Event-ID": str(cursor)}) as stream:
        resumed = await stream.events(5)
        publish(first, key, b, final("b3"))
        live = await stream.next()
    assert seqs(resumed, a) == [2, 3]
    assert seqs(resumed, b) == [2]
    assert (live.json["seq"], live.id) == (3, f"{a}=3,{b}=3")


async def test_revoking_on_one_node_ends_a_stream_on_another_within_5_s(cluster: Cluster, account: str) -> None:
    first, second = cluster.start(2)
    admin = first.create_key(account)
    headers = {"Authorization": f"Bearer {admin}"}
    created = httpx.post(f"{first.url}/v1/keys", json={"scopes": ["subscribe"]}, headers=headers).json()
    async with open_stream(second.url, calls("c1"), created["key"]) as stream:
        await stream.next()
        started = time.monotonic()
        assert httpx.delete(f"{first.url}/v1/keys/{created['id']}", headers=headers).status_code == 204
        last = await stream.rest(timeout=6)
    assert time.monotonic() - started < 5
    assert [m.json["data"]["code"] for m in last] == ["unauthorized"]
