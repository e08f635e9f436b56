"""callstream.Client against the real server (and a small fake one for what the real one won't do).

The properties pinned here are the ones a subscriber relies on: events of a call arrive in seq
order and once; subscriptions change at any time; a server restart or a token expiry mid-call
loses no final and duplicates nothing; history the server cannot replay is fetched over REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from callstream import AuthError, Client, SyncClient, iter_events
from callstream.client import (
    AgentState,
    CallEnded,
    ErrorEvent,
    Event,
    FunctionCall,
    Metrics,
    Subscribed,
    TranscriptFinal,
    TranscriptPartial,
    Unsubscribed,
    _Track,
    events_url,
    parse_message,
    token_expiry,
)
from callstream.testing import metrics, server_event
from callstream.wire import failure_reason
from tests.helpers import ServerProcess, ended, final, partial, publish


async def next_of(events: AsyncIterator[Event], kind: type[Event], within: float = 10.0) -> Event:
    """The next event of this class, skipping others."""
    async with asyncio.timeout(within):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError("the iterator ended")


async def collect(
    events: AsyncIterator[Event], call_id: str, count: int, within: float = 15.0
) -> list[Event]:
    """The next ``count`` events (with a seq) of ``call_id``."""
    got: list[Event] = []
    async with asyncio.timeout(within):
        async for event in events:
            if event.call_id == call_id and event.seq is not None:
                got.append(event)
                if len(got) == count:
                    return got
    raise AssertionError(f"the iterator ended after {got}")


async def post(server: ServerProcess, key: str, call_id: str, events: Any) -> list[int]:
    response = await asyncio.to_thread(publish, server, key, call_id, events)
    assert response.status_code == 202, response.text
    return list(response.json()["seq"])


def mint(server: ServerProcess, key: str, ttl_s: int) -> str:
    response = httpx.post(
        f"{server.url}/v1/tokens", json={"ttl_s": ttl_s}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


# ---- pure parts ---------------------------------------------------------------------------------


def test_parse_message_types_each_event() -> None:
    msg = {"type": "transcript.final", "call_id": "c", "seq": 3, "ts": 5,
           "data": {"speaker": "user", "text": "hi", "utterance_id": "u1",
                    "sentiment": {"label": "positive", "score": 0.5}}}
    event = parse_message(msg)
    assert isinstance(event, TranscriptFinal)
    assert (event.call_id, event.seq, event.ts, event.speaker, event.text) == ("c", 3, 5, "user", "hi")
    assert event.utterance_id == "u1"
    assert event.sentiment == {"label": "positive", "score": 0.5}
    assert event.raw is msg
    assert event.is_call_event
    sub = parse_message({"type": "subscribed", "call_id": "c",
                         "data": {"call_id": "c", "status": "live", "seq": 9, "replayed": 2}})
    assert isinstance(sub, Subscribed)
    assert (sub.last_seq, sub.replayed, sub.seq) == (9, 2, None)
    err = parse_message({"type": "error", "call_id": None, "data": {"code": "rate_limited", "message": "m"}})
    assert isinstance(err, ErrorEvent)
    assert (err.call_id, err.code) == ("", "rate_limited")
    assert parse_message({"type": "future.thing", "call_id": "c", "seq": 1}).type == "unknown"


def test_turn_figures_and_producer_metrics_are_typed() -> None:
    speaking = parse_message({"type": "agent.state", "call_id": "c", "seq": 4, "ts": 9,
                              "data": {"state": "speaking", "latency_ms": 820}})  # fmt: skip
    assert isinstance(speaking, AgentState)
    assert (speaking.state, speaking.latency_ms, speaking.interrupted) == ("speaking", 820, False)
    cut = parse_message({"type": "agent.state", "call_id": "c", "seq": 5, "ts": 9,
                         "data": {"state": "listening", "interrupted": True}})  # fmt: skip
    assert isinstance(cut, AgentState)
    assert (cut.latency_ms, cut.interrupted) == (None, True)
    stage = parse_message({"type": "metrics", "call_id": "c", "seq": 6, "ts": 9,
                           "data": {"stage": "tts", "ttfb_ms": 180.5, "duration_ms": True}})  # fmt: skip
    assert isinstance(stage, Metrics)
    assert (stage.stage, stage.ttfb_ms, stage.duration_ms) == ("tts", 180.5, None)
    built = server_event(metrics("llm", ttfb_ms=420, model="m"), "c", 7)  # callstream.testing's builder
    assert isinstance(built, Metrics)
    assert (built.stage, built.ttfb_ms, built.data["model"]) == ("llm", 420, "m")


def test_track_drops_duplicates_and_replay_overlap() -> None:
    track = _Track()
    assert [track.accept(s) for s in (1, 2, 5, 3, 4, 5, 2)] == [True, True, True, True, True, False, False]
    assert track.last_seq == 5


def test_urls_and_token_expiry() -> None:
    assert events_url("http://h:1") == "ws://h:1/v1/events"
    assert events_url("https://h/base/") == "wss://h/base/v1/events"
    with pytest.raises(ValueError, match="http"):
        events_url("ftp://h")
    assert token_expiry("cs_live_key") is None
    assert token_expiry("x.eyJleHAiOjEyM30.y") == 123.0  # {"exp":123}


def test_wildcard_refuses_since() -> None:
    client = Client("http://127.0.0.1:1", "k")
    with pytest.raises(ValueError, match="since"):
        asyncio.run(client.subscribe("*", since=3))


# ---- against the real server ---------------------------------------------------------------------


async def test_events_arrive_typed_in_order_with_the_header_credential(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async with Client(server.url, api_key) as client:
        events = client.events(call_id)
        assert isinstance(await next_of(events, Subscribed), Subscribed)
        batch = [
            partial("hel", utterance_id="u1"),
            final("hello", utterance_id="u1"),
            {"type": "agent.state", "data": {"state": "thinking"}},
            {"type": "function.call", "data": {"name": "lookup", "args": {"id": 7}, "tool_call_id": "t1"}},
            ended("completed", 1200),
        ]
        await post(server, api_key, call_id, batch)
        got = await collect(events, call_id, len(batch))
    assert [type(e) for e in got] == [TranscriptPartial, TranscriptFinal, AgentState, FunctionCall, CallEnded]
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert isinstance(got[1], TranscriptFinal)
    assert got[1].text == "hello"
    assert isinstance(got[3], FunctionCall)
    assert got[3].tool_call_id == "t1"
    assert got[3].args == {"id": 7}
    assert isinstance(got[4], CallEnded)
    assert got[4].status == "completed"


async def test_subscribe_with_since_replays_then_goes_live(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    await post(server, api_key, call_id, [final("one"), final("two"), final("three")])
    async with Client(server.url, api_key) as client:
        await client.subscribe(call_id, since=1)
        events = client.events()
        replayed = await collect(events, call_id, 2)
        subscribed = await next_of(events, Subscribed)
        await post(server, api_key, call_id, final("four"))
        live = await collect(events, call_id, 1)
    assert [e.seq for e in replayed + live] == [2, 3, 4]
    assert isinstance(subscribed, Subscribed)
    assert subscribed.replayed == 2
    assert subscribed.last_seq == 3


async def test_subscribe_and_unsubscribe_at_any_time(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    other = call_id + "_b"
    async with Client(server.url, api_key) as client:
        events = client.events(call_id)
        await next_of(events, Subscribed)
        await post(server, api_key, call_id, final("a1"))
        assert [e.seq for e in await collect(events, call_id, 1)] == [1]
        await client.subscribe(other)  # while iterating
        await next_of(events, Subscribed)
        await post(server, api_key, other, final("b1"))
        assert [e.data["text"] for e in await collect(events, other, 1)] == ["b1"]
        await client.unsubscribe(call_id)
        gone = await next_of(events, Unsubscribed)
        assert gone.call_id == call_id
        await post(server, api_key, call_id, final("a2: not for us"))
        await post(server, api_key, other, final("b2"))
        nxt = await next_of(events, TranscriptFinal)
    assert (nxt.call_id, nxt.data["text"]) == (other, "b2")


async def test_wildcard_with_types_filter(server: ServerProcess, other_key: str, call_id: str) -> None:
    async with Client(server.url, other_key) as client:  # the other tenant: nobody else publishes
        events = client.events("*", types=["transcript.final", "call.ended"])
        await next_of(events, Subscribed)
        await post(server, other_key, call_id, [partial("x"), final("x y"), ended()])
        got = await collect(events, call_id, 2)
    assert [e.type for e in got] == ["transcript.final", "call.ended"]
    assert [e.seq for e in got] == [2, 3]


async def test_refused_key_raises_auth_error_at_start(server: ServerProcess) -> None:
    with pytest.raises(AuthError) as refused:
        async with Client(server.url, "cs_not_a_real_key"):
            pass
    assert refused.value.code == "unauthorized"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_server_restart_mid_call_loses_no_final_and_duplicates_nothing(
    fresh_server: ServerProcess, call_id: str, how: str
) -> None:
    fresh_server.start()
    key = fresh_server.create_key("acme")
    async with Client(fresh_server.url, key, reconnect_max_delay=0.5) as client:
        events = client.events(call_id)
        await next_of(events, Subscribed)
        await post(fresh_server, key, call_id, [final(f"before {n}") for n in range(3)])
        got = await collect(events, call_id, 3)
        await asyncio.to_thread(fresh_server.stop if how == "stop" else fresh_server.kill)
        await asyncio.to_thread(fresh_server.start)
        # published while the client is (most likely) still reconnecting: must come by replay
        await post(fresh_server, key, call_id, [final(f"during {n}") for n in range(3)])
        await post(fresh_server, key, call_id, [final("after"), ended()])
        got += await collect(events, call_id, 5)
        assert client.statistics().connections >= 2
    texts = [e.data.get("text") for e in got if isinstance(e, TranscriptFinal)]
    assert [e.seq for e in got] == list(range(1, 9))
    assert texts == [f"before {n}" for n in range(3)] + [f"during {n}" for n in range(3)] + ["after"]


async def test_expired_token_is_refreshed_after_4001_without_loss(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    minted: list[str] = []

    async def provider() -> str:
        minted.append(await asyncio.to_thread(mint, server, api_key, 2))
        return minted[-1]

    async with Client(server.url, token_provider=provider, refresh_margin=None,
                      reconnect_max_delay=0.5) as client:
        events = client.events(call_id)
        await next_of(events, Subscribed)
        await post(server, api_key, call_id, final("first"))
        first = await collect(events, call_id, 1)
        expired = await next_of(events, ErrorEvent, within=10)  # token_expired, then 4001
        assert expired.code == "token_expired"
        await post(server, api_key, call_id, final("second"))
        second = await collect(events, call_id, 1)
        assert client.statistics().connections >= 2
    assert [e.seq for e in first + second] == [1, 2]
    assert len(minted) >= 2


async def test_token_is_refreshed_before_expiry_on_the_open_socket(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    async def provider() -> str:
        return await asyncio.to_thread(mint, server, api_key, 6)

    token = await asyncio.to_thread(mint, server, api_key, 6)
    async with Client(server.url, token, token_provider=provider, refresh_margin=2) as client:
        events = client.events(call_id)
        await next_of(events, Subscribed)
        await asyncio.sleep(8)  # past the first token's expiry
        await post(server, api_key, call_id, final("still here"))
        got = await collect(events, call_id, 1)
        assert client.statistics().connections == 1
    assert got[0].data["text"] == "still here"


async def test_expired_token_without_provider_ends_the_iterator(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    token = await asyncio.to_thread(mint, server, api_key, 1)

    async def drain(client: Client) -> None:
        async with asyncio.timeout(10):
            async for _ in client.events(call_id):
                pass

    # The token lasts a second: on a busy machine it may expire before the first connection is up,
    # so the client may refuse to start as well as end its iterator; either way, with this code.
    with pytest.raises(AuthError) as ended_by:
        async with Client(server.url, token) as client:
            await drain(client)
    assert ended_by.value.code == "token_expired"


async def test_since_ahead_of_the_call_answers_history_unavailable_then_goes_live(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    await post(server, api_key, call_id, [final("one"), final("two")])
    async with Client(server.url, api_key) as client:
        await client.subscribe(call_id, since=50)
        events = client.events()
        error = await next_of(events, ErrorEvent)
        assert isinstance(error, ErrorEvent)
        assert error.code == "history_unavailable"
        subscribed = await next_of(events, Subscribed)
        assert isinstance(subscribed, Subscribed)
        assert subscribed.last_seq == 2
        await post(server, api_key, call_id, final("three"))
        got = await collect(events, call_id, 1)
    assert [(e.seq, e.data["text"]) for e in got] == [(3, "three")]  # taken though 3 < since


async def test_slow_consumer_close_resumes_with_since(fresh_server: ServerProcess, call_id: str) -> None:
    fresh_server.env = {"CALLSTREAM_OUTBOX_HIGH_WATER": "4096"}
    fresh_server.start()
    key = fresh_server.create_key("acme")
    filler = "x" * 2000
    async with Client(fresh_server.url, key, max_queue=1, reconnect_max_delay=0.5) as client:
        events = client.events(call_id)
        await next_of(events, Subscribed)
        total = 0
        for _ in range(12):  # ~12 MB while nobody reads: more than the socket buffers hold
            seqs = await post(fresh_server, key, call_id, [final(filler) for _ in range(400)])
            total = seqs[-1]
        got = await collect(events, call_id, total, within=60)
        assert [e.seq for e in got] == list(range(1, total + 1))
        assert client.statistics().connections >= 2, "the server never closed the slow consumer"


async def test_sync_client_and_iter_events(server: ServerProcess, api_key: str, call_id: str) -> None:
    await post(server, api_key, call_id, [final("one"), ended()])

    def read() -> list[tuple[str, int | None]]:
        with SyncClient(server.url, api_key) as client:
            client.subscribe(call_id, since=0)
            out = []
            for event in client.events():
                out.append((event.type, event.seq))
                if isinstance(event, CallEnded):
                    return out
        return out

    assert await asyncio.to_thread(read) == [("transcript.final", 1), ("call.ended", 2)]

    def first_subscribed() -> str:
        for event in iter_events(server.url, api_key, [call_id]):
            return event.type
        return ""

    assert await asyncio.to_thread(first_subscribed) == "subscribed"


# ---- a fake server: what the real one won't do on demand -------------------------------------


class FakeServer:
    """Answers `since=2` with history_unavailable and serves the stored events 3 to `last` over
    REST: all in one answer without `next_since` (as servers before paging did), or in pages of
    `page` events that each name the `next_since` to ask from."""

    def __init__(self, last: int = 5, page: int | None = None) -> None:
        self.subscribes: list[dict[str, Any]] = []
        self.rest_queries: list[str] = []
        self.url = ""
        self.last, self.page = last, page

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/v1/calls/"):
            self.rest_queries.append(request.path)
            since = int(urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)["since"][0])
            seqs = list(range(max(since, 2) + 1, self.last + 1))
            body: dict[str, Any] = {"call_id": "c1", "events": [
                {"type": "transcript.final", "call_id": "c1", "seq": s, "ts": 1,
                 "data": {"speaker": "user", "text": f"t{s}", "is_final": True}} for s in seqs[: self.page]]}
            if self.page is not None:
                body["next_since"] = seqs[self.page - 1] if len(seqs) > self.page else None
            return Response(200, "OK", Headers({"Content-Type": "application/json"}), orjson.dumps(body))
        if request.headers.get("Authorization") != "Bearer k":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "no")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg["type"] != "subscribe":
                continue
            self.subscribes.append(msg)
            if msg.get("since") == 2:
                await ws.send(orjson.dumps({"type": "error", "call_id": "c1", "data": {
                    "code": "history_unavailable", "message": "too old", "call_id": "c1"}}).decode())
                continue
            await ws.send(orjson.dumps({"type": "subscribed", "call_id": "c1", "data": {
                "call_id": "c1", "status": "live", "seq": self.last, "replayed": 0}}).decode())
            await ws.send(orjson.dumps({"type": "transcript.final", "call_id": "c1", "seq": self.last + 1,
                                        "ts": 2, "data": {"speaker": "agent", "text": "live"}}).decode())


@contextlib.asynccontextmanager
async def running(server: FakeServer) -> AsyncGenerator[FakeServer]:
    async with serve(server.handler, "127.0.0.1", 0, process_request=server.process_request) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        server.url = f"http://127.0.0.1:{port}"
        yield server


@pytest.fixture
async def fake() -> AsyncGenerator[FakeServer]:
    async with running(FakeServer()) as server:
        yield server


async def test_history_unavailable_falls_back_to_rest_then_resumes_after_it(fake: FakeServer) -> None:
    async with Client(fake.url, "k") as client:
        await client.subscribe("c1", since=2)
        events = client.events()
        got = [await anext(events) for _ in range(6)]
    assert [(e.type, e.seq) for e in got] == [
        ("error", None), ("transcript.final", 3), ("transcript.final", 4), ("transcript.final", 5),
        ("subscribed", None), ("transcript.final", 6)]
    assert fake.rest_queries == ["/v1/calls/c1/events?since=2"]
    assert [m.get("since") for m in fake.subscribes] == [2, 5]  # resumed after what REST gave
    assert client.statistics().fetched == 3


async def test_history_unavailable_fallback_follows_next_since_across_pages() -> None:
    """A long call comes back in pages: the client asks from each page's `next_since` until it
    is null, hands on every event once and in order, then resumes live after the last."""
    async with running(FakeServer(last=2_502, page=1_000)) as fake, Client(fake.url, "k") as client:
        await client.subscribe("c1", since=2)
        events = client.events()
        got: list[Event] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                while len(got) < 2_503:
                    got.append(await anext(events))
    assert len(got) == 2_503, [(e.type, e.seq) for e in got[-3:]]
    assert got[0].type == "error"
    assert [e.seq for e in got[1:2_501]] == list(range(3, 2_503))
    assert (got[2_501].type, got[2_502].seq) == ("subscribed", 2_503)
    assert fake.rest_queries == [f"/v1/calls/c1/events?since={s}" for s in (2, 1_002, 2_002)]
    assert [m.get("since") for m in fake.subscribes] == [2, 2_502]  # resumed after the last page
    assert client.statistics().fetched == 2_500


async def test_backoff_is_capped_with_full_jitter() -> None:
    client = Client("http://127.0.0.1:1", "k", reconnect_initial_delay=0.1, reconnect_max_delay=1.0)
    delays = [client._next_delay() for _ in range(40)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(delays[:3]) <= 0.4
    assert max(delays[10:]) > 0.3
    started = time.monotonic()
    async with Client("http://127.0.0.1:1", "k", reconnect_max_delay=0.2) as unreachable:
        assert not unreachable.connected  # an unreachable server does not raise: it retries
    assert time.monotonic() - started < 5


# ---- callstream.testing: the helpers users test their own code with -----------------------------


async def test_testing_run_server_publish_and_server_event(tmp_path: Any) -> None:
    from callstream import testing

    def scenario() -> list[tuple[str, int | None]]:
        with testing.run_server(tmp_path, account="t1", sentiment=False) as srv:
            seqs = srv.publish("c1", [
                testing.transcript_partial("he", utterance_id="u"),
                testing.transcript_final("hello", utterance_id="u"),
                testing.agent_state("thinking"),
                testing.function_call("f", {"a": 1}, tool_call_id="t"),
                testing.function_result("f", {"ok": True}, tool_call_id="t"),
                testing.call_ended("completed", 10, reason="done"),
            ])
            assert seqs == [1, 2, 3, 4, 5, 6]
            with SyncClient(srv.url, srv.key) as client:
                client.subscribe("c1", since=0)
                got = []
                for event in client.events():
                    got.append((event.type, event.seq))
                    if isinstance(event, CallEnded):
                        assert event.reason == "done"
                        return got
        return []

    assert await asyncio.to_thread(scenario) == [
        ("transcript.final", 2), ("agent.state", 3), ("function.call", 4), ("function.result", 5),
        ("call.ended", 6)]  # the superseded partial is not held for replays
    event = testing.server_event(testing.transcript_final("hi", "agent"), "c9", 4)
    assert isinstance(event, TranscriptFinal)
    assert (event.call_id, event.seq, event.speaker, event.data["is_final"]) == ("c9", 4, "agent", True)


def test_why_a_connection_failed_names_the_host_never_its_password() -> None:
    """`tail` prints this reason on its header and on stderr, which CI logs keep."""
    reason = failure_reason("ws://user:s3cret@127.0.0.1:1/v1/events", ConnectionRefusedError())
    assert reason == "cannot reach 127.0.0.1:1: connection refused"
    assert "s3cret" not in failure_reason("wss://u:s3cret@example.com/v1/events", TimeoutError())


def test_why_a_connection_failed_writes_an_ipv6_host_as_a_url_would() -> None:
    assert failure_reason("ws://[::1]:8080/v1/events", ConnectionRefusedError()) == (
        "cannot reach [::1]:8080: connection refused"
    )
    assert failure_reason("ws://[::1]/v1/events", TimeoutError()) == "cannot reach [::1]: timed out"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:99999", "invalid port in 'http://127.0.0.1:99999' (expected 1-65535)"),
        ("ws://h:0", "invalid port in 'ws://h:0' (expected 1-65535)"),
        ("http://h:port", "invalid port in 'http://h:port' (expected 1-65535)"),
        ("http://[::1", "invalid host in 'http://[::1'"),
        ("http://:8080", "invalid host in 'http://:8080'"),
        ("http://u@/", "invalid host in 'http://u@/'"),
    ],
)
def test_a_url_whose_port_or_host_is_not_one_is_refused_before_connecting(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(says)}$"):
        events_url(url)
    with pytest.raises(ValueError, match=f"^{re.escape(says)}$"):
        Client(url, "k")


@pytest.mark.parametrize(
    ("url", "events"),
    [
        ("http://[::1]:8080", "ws://[::1]:8080/v1/events"),
        ("ws://h:65535", "ws://h:65535/v1/events"),
        ("https://u:p@h:8443/base", "wss://u:p@h:8443/base/v1/events"),
        ("http://h:", "ws://h:/v1/events"),  # an empty port is the scheme's
    ],
)
def test_a_url_with_any_port_a_url_may_have_is_taken(url: str, events: str) -> None:
    assert events_url(url) == events


def test_why_a_connection_failed_never_raises_on_a_url_it_cannot_read() -> None:
    assert failure_reason("ws://h:99999/v1/events", TimeoutError()) == "cannot reach the server: timed out"
