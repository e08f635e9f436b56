"""docs/protocol.md, Producing and REST, over HTTP against a real server process: publish, calls, tokens, operations."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import orjson
import pytest

from tests.helpers import ServerProcess, ended, final, open_events, partial, publish, recv, recv_until, send


def get(server: ServerProcess, path: str, credential: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    return httpx.get(server.url + path, params=params, headers=headers, timeout=10)


def post_raw(
    server: ServerProcess,
    path: str,
    credential: str | None,
    body: bytes,
    content_type: str = "application/json",
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    return httpx.post(server.url + path, content=body, headers=headers, timeout=10)


def new_account_key(server: ServerProcess, scopes: str = "publish,subscribe,admin") -> str:
    """A key of an account of the test's own, for assertions about 'all the account's calls'."""
    return server.create_key(f"acct_{uuid.uuid4().hex[:10]}", scopes)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def seqs_of(server: ServerProcess, key: str, call_id: str, since: int = 0) -> list[int]:
    response = get(server, f"/v1/calls/{call_id}/events", key, since=since)
    assert response.status_code == 200, response.text
    return [e["seq"] for e in response.json()["events"]]


# ---- POST /v1/calls/{call_id}/events -------------------------------------------------------------


def test_publish_one_event_answers_202_with_its_seq(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    response = publish(server, api_key, call_id, final("hello"))
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "seq": [1]}
    response = publish(server, api_key, call_id, final("again"))
    assert response.json() == {"accepted": 1, "seq": [2]}


def test_publish_array_is_sequenced_in_order(server: ServerProcess, api_key: str, call_id: str) -> None:
    batch = [
        partial("he"),
        final("hello"),
        {"type": "agent.state", "data": {"state": "thinking"}},
        {"type": "function.call", "data": {"name": "book", "args": {"day": "mon"}, "tool_call_id": "t1"}},
        {"type": "function.result", "data": {"name": "book", "result": {"ok": True}, "tool_call_id": "t1"}},
    ]
    response = publish(server, api_key, call_id, batch)
    assert response.status_code == 202
    assert response.json() == {"accepted": 5, "seq": [1, 2, 3, 4, 5]}


def test_invalid_batch_is_422_naming_the_index_and_applies_nothing(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    assert publish(server, api_key, call_id, final("first")).json()["seq"] == [1]
    bad = [
        final("ok"),
        final("ok too"),
        {"type": "transcript.final", "data": {"speaker": "robot", "text": "x"}},
    ]
    error = assert_error(publish(server, api_key, call_id, bad), 422)
    assert error["index"] == 2
    assert "speaker" in error["message"]
    # nothing of the batch was applied: the call still has one event and seq continues gap-free
    assert seqs_of(server, api_key, call_id) == [1]
    assert publish(server, api_key, call_id, final("next")).json()["seq"] == [2]
    assert seqs_of(server, api_key, call_id) == [1, 2]


def test_a_batch_of_more_than_1000_events_is_422_and_applies_nothing(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    error = assert_error(publish(server, api_key, call_id, [final(f"e{i}") for i in range(1001)]), 422)
    assert error["code"] == "invalid_message"
    assert error["index"] == 1000  # the first event past the cap
    assert "at most 1000 events" in error["message"]
    assert get(server, f"/v1/calls/{call_id}", api_key).status_code == 404  # the call was never created
    assert publish(server, api_key, call_id, [final(f"e{i}") for i in range(1000)]).json()["accepted"] == 1000


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ({"type": "transcript.bogus", "data": {}}, "transcript.bogus"),
        ({"type": "error", "data": {"code": "internal", "message": "x"}}, "error"),
        ({"type": "subscribed", "data": {"call_id": "x"}}, "subscribed"),
        ({"type": "unsubscribed", "data": {"call_id": "x"}}, "unsubscribed"),
        ({"data": {"speaker": "user", "text": "no type"}}, "type"),
        ({"type": "transcript.final"}, "data"),
        ({"type": "transcript.final", "data": {"speaker": "user", "text": 5}}, "text"),
        (
            {"type": "transcript.final", "data": {"speaker": "user", "text": "x", "is_final": False}},
            "is_final",
        ),
        ({"type": "agent.state", "data": {"state": "sleeping"}}, "state"),
        ({"type": "function.call", "data": {"name": "f"}}, "args"),
        ({"type": "function.result", "data": {"args": {}}}, "name"),
        ({"type": "call.ended", "data": {"status": "exploded", "duration_ms": 1}}, "status"),
        ({"type": "call.ended", "data": {"status": "completed", "duration_ms": -1}}, "duration_ms"),
        ("just a string", "object"),
    ],
)
def test_invalid_events_are_refused_with_a_reason(
    server: ServerProcess, api_key: str, call_id: str, event: Any, needle: str
) -> None:
    error = assert_error(publish(server, api_key, call_id, [final("fine"), event]), 422)
    assert error["index"] == 1
    assert needle in error["message"]
    assert get(server, f"/v1/calls/{call_id}", api_key).status_code == 404  # the call was never created


def test_bad_json_and_empty_batch_are_422(server: ServerProcess, api_key: str, call_id: str) -> None:
    for body in (b"{not json", b"", b"[]", b"null"):
        assert_error(post_raw(server, f"/v1/calls/{call_id}/events", api_key, body), 422)
    assert get(server, f"/v1/calls/{call_id}", api_key).status_code == 404


@pytest.mark.parametrize("bad_id", ["has space", "x" * 129, "semi;colon", "caf\u00e9"])
def test_bad_call_id_is_422(server: ServerProcess, api_key: str, bad_id: str) -> None:
    response = publish(server, api_key, bad_id, final("x"))
    error = assert_error(response, 422)
    assert "call_id" in error["message"]


def test_oversized_body_is_413_and_applies_nothing(server: ServerProcess, api_key: str, call_id: str) -> None:
    huge = final("x" * (1024 * 1024 + 10))
    assert_error(publish(server, api_key, call_id, huge), 413, "message_too_large")
    assert get(server, f"/v1/calls/{call_id}", api_key).status_code == 404


def test_events_after_call_ended_are_refused(server: ServerProcess, api_key: str, call_id: str) -> None:
    assert publish(server, api_key, call_id, [final("bye"), ended()]).json()["seq"] == [1, 2]
    error = assert_error(publish(server, api_key, call_id, final("too late")), 422)
    assert error["index"] == 0
    assert "ended" in error["message"]
    assert_error(publish(server, api_key, call_id, ended()), 422)  # a second call.ended too
    assert seqs_of(server, api_key, call_id) == [1, 2]


def test_event_after_call_ended_in_the_same_batch_refuses_the_whole_batch(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    error = assert_error(publish(server, api_key, call_id, [final("a"), ended(), final("late")]), 422)
    assert error["index"] == 2
    assert get(server, f"/v1/calls/{call_id}", api_key).status_code == 404  # nothing applied
    assert publish(server, api_key, call_id, final("a")).json()["seq"] == [1]


def test_publish_needs_the_publish_scope(server: ServerProcess, call_id: str) -> None:
    subscriber = new_account_key(server, "subscribe")
    assert_error(publish(server, subscriber, call_id, final("x")), 403, "forbidden")


@pytest.mark.parametrize("credential", [None, "cs_not_a_real_key", "eyJhbGciOiJIUzI1NiJ9.e30.bad"])
def test_publish_without_a_valid_credential_is_401(
    server: ServerProcess, call_id: str, credential: str | None
) -> None:
    body = orjson.dumps(final("x"))
    assert_error(post_raw(server, f"/v1/calls/{call_id}/events", credential, body), 401, "unauthorized")


def test_reading_needs_subscribe_or_admin(server: ServerProcess, call_id: str) -> None:
    producer = new_account_key(server, "publish")
    assert publish(server, producer, call_id, final("x")).status_code == 202
    assert_error(get(server, "/v1/calls", producer), 403, "forbidden")
    assert_error(get(server, f"/v1/calls/{call_id}", producer), 403, "forbidden")
    assert_error(get(server, "/v1/calls", None), 401, "unauthorized")


# ---- GET /v1/calls -------------------------------------------------------------------------------


def test_list_calls_newest_first_with_status_filter(server: ServerProcess) -> None:
    key = new_account_key(server)
    ids = [f"list_{i}" for i in range(4)]
    for call in ids:
        assert publish(server, key, call, final("hi")).status_code == 202
        time.sleep(0.005)  # distinct started_at milliseconds: the order is then fully determined
    assert publish(server, key, ids[1], ended()).status_code == 202

    calls = get(server, "/v1/calls", key).json()["calls"]
    assert [c["call_id"] for c in calls] == ids[::-1]
    started = [c["started_at"] for c in calls]
    assert started == sorted(started, reverse=True)

    live = get(server, "/v1/calls", key, status="live").json()["calls"]
    assert [c["call_id"] for c in live] == [ids[3], ids[2], ids[0]]
    assert {c["status"] for c in live} == {"live"}
    done = get(server, "/v1/calls", key, status="ended").json()["calls"]
    assert [(c["call_id"], c["status"]) for c in done] == [(ids[1], "ended")]
    assert_error(get(server, "/v1/calls", key, status="paused"), 422)


def test_list_calls_pages_with_a_cursor_without_duplicates_or_misses(server: ServerProcess) -> None:
    key = new_account_key(server)
    ids = {f"page_{i:02d}" for i in range(11)}
    for call in sorted(ids):
        assert publish(server, key, call, final("hi")).status_code == 202  # some share a millisecond
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        body = get(server, "/v1/calls", key, **params).json()
        pages += 1
        assert len(body["calls"]) <= 4
        seen += [c["call_id"] for c in body["calls"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert len(seen) == len(set(seen)) == 11
    assert set(seen) == ids
    everything = [c["call_id"] for c in get(server, "/v1/calls", key, limit=500).json()["calls"]]
    assert seen == everything  # paging yields the same newest-first order as one big page


@pytest.mark.parametrize(
    "params", [{"cursor": "garbage!!"}, {"cursor": "WzEsMl0"}, {"limit": 0}, {"limit": 501}, {"limit": "x"}]
)
def test_list_calls_bad_parameters_are_422(
    server: ServerProcess, api_key: str, params: dict[str, Any]
) -> None:
    assert_error(get(server, "/v1/calls", api_key, **params), 422)


# ---- GET /v1/calls/{id}, transcript, events ---------------------------------------------------------


def test_call_goes_from_live_to_ended(server: ServerProcess, api_key: str, call_id: str) -> None:
    before = int(time.time() * 1000)
    publish(server, api_key, call_id, final("hello"))
    call = get(server, f"/v1/calls/{call_id}", api_key).json()
    assert {k: call[k] for k in ("call_id", "status", "ended_at", "duration_ms", "end_status")} == {
        "call_id": call_id,
        "status": "live",
        "ended_at": None,
        "duration_ms": None,
        "end_status": None,
    }
    assert isinstance(call["started_at"], int)
    assert before - 1000 <= call["started_at"] <= before + 10_000

    publish(server, api_key, call_id, ended("no_answer", 4321))
    call2 = get(server, f"/v1/calls/{call_id}", api_key).json()
    assert call2["status"] == "ended"
    assert call2["started_at"] == call["started_at"]
    assert isinstance(call2["ended_at"], int)
    assert call2["ended_at"] >= call2["started_at"]
    assert call2["duration_ms"] == 4321
    assert call2["end_status"] == "no_answer"


def test_transcript_has_finals_only(server: ServerProcess, api_key: str, call_id: str) -> None:
    publish(
        server,
        api_key,
        call_id,
        [
            partial("I'd"),
            final("I'd like to book"),
            {"type": "agent.state", "data": {"state": "thinking"}},
            partial("Sure", speaker="agent"),
            final("Sure, which day?", speaker="agent"),
            {"type": "function.call", "data": {"name": "f", "args": {}}},
            ended(),
        ],
    )
    body = get(server, f"/v1/calls/{call_id}/transcript", api_key).json()
    assert body["call_id"] == call_id
    utterances = body["utterances"]
    assert [(u["seq"], u["speaker"], u["text"]) for u in utterances] == [
        (2, "user", "I'd like to book"),
        (5, "agent", "Sure, which day?"),
    ]
    assert all(isinstance(u["ts"], int) for u in utterances)


def test_events_since_returns_all_but_partials_in_seq_order(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    batch = [
        partial("a"),
        final("ab"),
        {"type": "agent.state", "data": {"state": "speaking"}},
        partial("c", speaker="agent"),
        final("cd", speaker="agent", custom={"kept": True}),
        {"type": "function.call", "data": {"name": "f", "args": {"x": 1}}},
        {"type": "function.result", "data": {"name": "f", "result": [1, 2]}},
        ended("transferred", 99),
    ]
    publish(server, api_key, call_id, batch)
    body = get(server, f"/v1/calls/{call_id}/events", api_key).json()
    events = body["events"]
    assert body["call_id"] == call_id
    assert [(e["seq"], e["type"]) for e in events] == [
        (2, "transcript.final"),
        (3, "agent.state"),
        (5, "transcript.final"),
        (6, "function.call"),
        (7, "function.result"),
        (8, "call.ended"),
    ]
    assert all(e["call_id"] == call_id and isinstance(e["ts"], int) for e in events)
    assert events[2]["data"]["custom"] == {"kept": True}  # unknown fields pass through
    assert events[3]["data"]["args"] == {"x": 1}
    assert events[5]["data"] == {"status": "transferred", "duration_ms": 99}
    assert seqs_of(server, api_key, call_id, since=5) == [6, 7, 8]
    assert seqs_of(server, api_key, call_id, since=8) == []
    assert_error(get(server, f"/v1/calls/{call_id}/events", api_key, since=-1), 422)


@pytest.mark.parametrize("suffix", ["", "/transcript", "/events"])
def test_missing_call_is_404(server: ServerProcess, api_key: str, call_id: str, suffix: str) -> None:
    assert_error(get(server, f"/v1/calls/{call_id}{suffix}", api_key), 404, "not_found")


# ---- tenant isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/transcript", "/events", "/events?since=0"])
def test_another_accounts_call_is_indistinguishable_from_a_missing_one(
    server: ServerProcess, api_key: str, other_key: str, call_id: str, suffix: str
) -> None:
    publish(server, api_key, call_id, [final("acme secret"), ended()])
    theirs = httpx.get(
        f"{server.url}/v1/calls/{call_id}{suffix}", headers={"Authorization": f"Bearer {other_key}"}
    )
    missing_id = "call_" + uuid.uuid4().hex[:12]
    missing = httpx.get(
        f"{server.url}/v1/calls/{missing_id}{suffix}", headers={"Authorization": f"Bearer {other_key}"}
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.content == missing.content
    assert theirs.headers["content-type"] == missing.headers["content-type"]
    assert b"acme" not in theirs.content
    assert call_id.encode() not in theirs.content


def test_call_ids_are_scoped_by_account(
    server: ServerProcess, api_key: str, other_key: str, call_id: str
) -> None:
    publish(server, api_key, call_id, [final("acme 1"), final("acme 2")])
    assert publish(server, other_key, call_id, final("globex 1")).json()["seq"] == [1]  # its own call
    theirs = get(server, f"/v1/calls/{call_id}/transcript", other_key).json()["utterances"]
    assert [u["text"] for u in theirs] == ["globex 1"]
    mine = get(server, f"/v1/calls/{call_id}/transcript", api_key).json()["utterances"]
    assert [u["text"] for u in mine] == ["acme 1", "acme 2"]


def test_list_calls_shows_only_the_accounts_calls(server: ServerProcess, call_id: str) -> None:
    mine, theirs = new_account_key(server), new_account_key(server)
    publish(server, mine, call_id + "_mine", final("x"))
    publish(server, theirs, call_id + "_theirs", final("x"))
    assert [c["call_id"] for c in get(server, "/v1/calls", mine).json()["calls"]] == [call_id + "_mine"]
    assert [c["call_id"] for c in get(server, "/v1/calls", theirs).json()["calls"]] == [call_id + "_theirs"]


# ---- POST /v1/tokens and JWTs --------------------------------------------------------------------


def mint(server: ServerProcess, credential: str | None, body: Any = None) -> httpx.Response:
    raw = b"" if body is None else orjson.dumps(body)
    return post_raw(server, "/v1/tokens", credential, raw)


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_token_defaults_to_15_minutes_subscribe_only(server: ServerProcess, api_key: str) -> None:
    now = int(time.time())
    response = mint(server, api_key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    claims = claims_of(body["token"])
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"
    assert claims["sub"] == "acme"
    assert claims["scope"] == "subscribe"
    assert claims["exp"] - claims["iat"] == 900
    assert body["expires_at"] == claims["exp"]
    assert now - 5 <= claims["iat"] <= now + 5
    assert isinstance(claims["jti"], str)
    assert claims["jti"]
    assert "calls" not in claims
    assert claims_of(mint(server, api_key).json()["token"])["jti"] != claims["jti"]


def test_token_ttl_and_calls_claim(server: ServerProcess, api_key: str) -> None:
    token = mint(server, api_key, {"ttl_s": 60, "calls": ["call_a", "call_b"]}).json()["token"]
    claims = claims_of(token)
    assert claims["exp"] - claims["iat"] == 60
    assert claims["calls"] == ["call_a", "call_b"]
    day = claims_of(mint(server, api_key, {"ttl_s": 86_400}).json()["token"])
    assert day["exp"] - day["iat"] == 86_400


@pytest.mark.parametrize(
    "body",
    [
        {"ttl_s": 0},
        {"ttl_s": -5},
        {"ttl_s": 86_401},
        {"ttl_s": "long"},
        {"calls": "call_a"},
        {"calls": ["bad id"]},
    ],
)
def test_token_bad_requests_are_422(server: ServerProcess, api_key: str, body: dict[str, Any]) -> None:
    assert_error(mint(server, api_key, body), 422)


@pytest.mark.parametrize("raw", [b"{oops", b"\n", b"   "], ids=["broken", "newline", "blanks"])
def test_token_body_that_is_not_json_is_422(server: ServerProcess, api_key: str, raw: bytes) -> None:
    """Only an empty body means "no options"; whitespace is not JSON (found by schemathesis)."""
    assert_error(post_raw(server, "/v1/tokens", api_key, raw), 422)


def test_tokens_need_an_api_key(server: ServerProcess, api_key: str) -> None:
    assert_error(mint(server, None), 401, "unauthorized")
    token = mint(server, api_key).json()["token"]
    assert_error(mint(server, token), 403, "forbidden")  # a JWT cannot mint tokens


def test_jwt_reads_rest_but_only_its_calls_and_cannot_publish(server: ServerProcess, call_id: str) -> None:
    key = new_account_key(server)
    allowed, hidden = call_id + "_ok", call_id + "_hidden"
    publish(server, key, allowed, final("visible"))
    publish(server, key, hidden, final("hidden"))
    token = mint(server, key, {"calls": [allowed]}).json()["token"]

    assert get(server, f"/v1/calls/{allowed}", token).json()["status"] == "live"
    assert [
        u["text"] for u in get(server, f"/v1/calls/{allowed}/transcript", token).json()["utterances"]
    ] == ["visible"]
    assert [c["call_id"] for c in get(server, "/v1/calls", token).json()["calls"]] == [allowed]
    missing = get(server, "/v1/calls/call_never_was", token)
    for suffix in ("", "/transcript", "/events"):
        response = get(server, f"/v1/calls/{hidden}{suffix}", token)
        assert response.status_code == 404
        assert response.content == missing.content
    assert_error(publish(server, token, allowed, final("x")), 403, "forbidden")

    unrestricted = mint(server, key).json()["token"]
    assert {c["call_id"] for c in get(server, "/v1/calls", unrestricted).json()["calls"]} == {allowed, hidden}


def test_tampered_jwt_is_401(server: ServerProcess, api_key: str) -> None:
    token = mint(server, api_key).json()["token"]
    forged = jwt.encode(
        {**claims_of(token), "sub": "globex"}, "not-the-secret-but-long-enough-for-hs256!!", algorithm="HS256"
    )
    assert_error(get(server, "/v1/calls", forged), 401, "unauthorized")
    none_alg = jwt.encode({**claims_of(token), "sub": "globex"}, None, algorithm="none")
    assert_error(get(server, "/v1/calls", none_alg), 401, "unauthorized")


# ---- operations -----------------------------------------------------------------------------------


def test_healthz_is_200(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_metrics_expose_callstream_counters(server: ServerProcess, api_key: str, call_id: str) -> None:
    def counter(name: str) -> float:
        text = httpx.get(server.url + "/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
        return float(line.split()[1])

    published, delivered = counter("callstream_events_published_total"), counter("callstream_events_delivered_total")
    async with await open_events(server, api_key) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id})
        await recv_until(ws, "subscribed")
        publish(server, api_key, call_id, [final("a"), final("b")])
        assert [(await recv(ws))["data"]["text"] for _ in range(2)] == ["a", "b"]
    assert counter("callstream_events_published_total") >= published + 2
    assert counter("callstream_events_delivered_total") >= delivered + 2
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in ("callstream_calls_ended_total", "callstream_connections"):
        assert name in response.text


def test_docs_and_openapi_are_served(server: ServerProcess) -> None:
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "openapi.json" in docs.text
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in (
        "/v1/calls",
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/events",
        "/v1/calls/{call_id}/transcript",
        "/v1/tokens",
    ):
        assert path in spec["paths"], path
    assert "post" in spec["paths"]["/v1/calls/{call_id}/events"]


def test_unknown_path_is_a_json_404(server: ServerProcess, api_key: str) -> None:
    assert_error(get(server, "/v1/nothing-here", api_key), 404)


# ---- JSON bodies, whatever their Content-Type --------------------------------------------------

CURL_FORM = "application/x-www-form-urlencoded"  # what `curl -d '{...}'` sends without `-H`


def json_routes(server: ServerProcess, key: str, call_id: str) -> dict[tuple[str, str], tuple[str, Any, int]]:
    """Every route the OpenAPI page gives a body: (method, path) → (URL path, a valid body, its status)."""
    assert publish(server, key, call_id, final("hello")).status_code == 202
    return {
        ("POST", "/v1/calls/{call_id}/events"): (f"/v1/calls/{call_id}/events", final("again"), 202),
        ("PATCH", "/v1/calls/{call_id}"): (f"/v1/calls/{call_id}", {"metadata": {"campaign": "spring"}}, 200),
        ("POST", "/v1/calls/{call_id}/control"): (f"/v1/calls/{call_id}/control", {"action": "pause"}, 409),
        ("POST", "/v1/tokens"): ("/v1/tokens", {"ttl_s": 60}, 200),
        ("POST", "/v1/keys"): ("/v1/keys", {"scopes": ["subscribe"]}, 201),
        ("POST", "/v1/webhooks"): ("/v1/webhooks", {"url": "http://127.0.0.1:9/hook"}, 201),
        ("POST", "/v1/webhooks/replay"): ("/v1/webhooks/replay", {"since": 0}, 202),
        ("POST", "/v1/login"): ("/v1/login", {"code": "no-such-code"}, 401),
    }


def test_every_json_body_is_read_whatever_its_content_type(server: ServerProcess, call_id: str) -> None:
    """`curl -d '{…}'` without `-H 'Content-Type: application/json'` works on every route with a
    body (a 409 or a 401 here is the route's answer to what the body asked)."""
    key = new_account_key(server, "publish,subscribe,control,admin")
    routes = json_routes(server, key, call_id)
    spec = httpx.get(server.url + "/openapi.json").json()
    with_body = {(m.upper(), path) for path, ops in spec["paths"].items() for m, op in ops.items() if "requestBody" in op}
    assert with_body == set(routes)
    for path, body, status in routes.values():
        method = "PATCH" if path == f"/v1/calls/{call_id}" else "POST"
        response = httpx.request(
            method, server.url + path, content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": CURL_FORM}, timeout=10,
        )  # fmt: skip
        assert response.status_code == status, (path, response.text)


@pytest.mark.parametrize("content_type", [CURL_FORM, "application/json"])
def test_a_body_that_is_not_json_gets_the_same_422_on_every_route(
    server: ServerProcess, call_id: str, content_type: str
) -> None:
    key = new_account_key(server, "publish,subscribe,control,admin")
    answers = []
    for path, _, _ in json_routes(server, key, call_id).values():
        method = "PATCH" if path == f"/v1/calls/{call_id}" else "POST"
        response = httpx.request(
            method, server.url + path, content=b"scopes=subscribe",
            headers={"Authorization": f"Bearer {key}", "Content-Type": content_type}, timeout=10,
        )  # fmt: skip
        error = assert_error(response, 422, "invalid_message")
        assert error["message"].startswith("not valid JSON"), (path, error)
        answers.append(response.json())
    assert all(answer == answers[0] for answer in answers), answers
