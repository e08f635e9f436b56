"""Property tests against a real server: producer events, REST bodies and client messages.

Every answer is either a success or a documented error (`{"error": {"code", "message"}}` over
HTTP, an `error` message with a known code over the sockets); never a 5xx, never a closed socket
for a bad message, and nothing of a refused request is applied. The oracle for events is the
sans-I/O validator (`callstream.protocol`), which the server must agree with.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from callstream import protocol as p
from callstream.events import ENDED, PARTIAL, PUBLISHABLE_TYPES
from tests.helpers import ServerProcess

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
# Fields with a meaning, each either a plausible or an arbitrary value.
data_strategy = st.fixed_dictionaries(
    {},
    optional={
        "speaker": st.sampled_from(["user", "agent", "robot", ""]) | json_scalars,
        "text": st.text(max_size=40) | json_scalars,
        "is_final": st.booleans() | json_scalars,
        "utterance_id": st.text(max_size=8) | json_scalars,
        "state": st.sampled_from(["listening", "thinking", "speaking", "napping"]) | json_scalars,
        "name": st.text(max_size=10) | json_scalars,
        "args": json_values,
        "result": json_values,
        "tool_call_id": st.text(max_size=8) | json_scalars,
        "status": st.sampled_from(
            ["completed", "failed", "no_answer", "busy", "canceled", "transferred", "x"]
        )
        | json_scalars,
        "duration_ms": st.integers(-5, 10**12) | st.integers(2**63 - 2, 2**64 - 1) | json_scalars,
        "reason": st.text(max_size=20) | json_scalars,
        "extra": json_values,
    },
)
event_strategy = st.fixed_dictionaries(
    {
        "type": st.sampled_from(sorted(PUBLISHABLE_TYPES | {"error", "subscribed", "nope"})) | json_scalars,
        "data": data_strategy | json_values,
    },
    optional={"ref": json_scalars},
)
body_strategy = st.one_of(
    event_strategy,
    st.lists(event_strategy, min_size=0, max_size=5),
    json_values,
)


@pytest.fixture(scope="module")
def key(server: ServerProcess) -> str:
    """An account of its own: fuzzing never touches other tests' data."""
    return server.create_key(f"fuzz_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def http(server: ServerProcess, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        yield client


def assert_documented(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["code"], str)
        assert isinstance(body["error"]["message"], str)
        assert body["error"]["message"]


def expected(body: Any, call_id: str) -> tuple[int, int]:
    """(status, stored events) the contract predicts for publishing `body` to a new call."""
    try:
        events = p.parse_event_batch(copy.deepcopy(body), call_id)
    except p.ProtocolError:
        return 422, 0
    if any(e.type == ENDED for e in events[:-1]):
        return 422, 0  # an event after call.ended: nothing of the batch applies
    return 202, sum(e.type != PARTIAL for e in events)


@FUZZ
@given(body=body_strategy)
def test_publishing_any_body(http: httpx.Client, body: Any) -> None:
    call_id = f"fz_{uuid.uuid4().hex[:12]}"
    status, stored = expected(body, call_id)
    response = http.post(f"/v1/calls/{call_id}/events", content=orjson.dumps(body))
    assert_documented(response)
    assert response.status_code == status, (body, response.text)
    events = http.get(f"/v1/calls/{call_id}/events")
    if status == 202:
        assert len(response.json()["seq"]) == (len(body) if isinstance(body, list) else 1)
        assert len(events.json()["events"]) == stored
    else:
        assert events.status_code == 404  # nothing applied: the call does not even exist


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_publishing_any_bytes(http: httpx.Client, raw: bytes) -> None:
    call_id = f"fz_{uuid.uuid4().hex[:12]}"
    response = http.post(f"/v1/calls/{call_id}/events", content=raw)
    assert_documented(response)
    if response.status_code != 202:
        assert http.get(f"/v1/calls/{call_id}").status_code == 404


@FUZZ
@given(body=json_values | st.fixed_dictionaries({}, optional={"ttl_s": json_scalars, "calls": json_values}))
def test_minting_tokens_with_any_body(http: httpx.Client, body: Any) -> None:
    assert_documented(http.post("/v1/tokens", content=orjson.dumps(body)))


@FUZZ
@given(
    call_id=st.text(min_size=1, max_size=140),
    suffix=st.sampled_from(["", "/transcript", "/events", "/events?since=-1", "/events?since=x"]),
)
def test_reading_any_call_id(http: httpx.Client, call_id: str, suffix: str) -> None:
    response = http.get(f"/v1/calls/{quote(call_id, safe='')}{suffix}")
    assert_documented(response)
    assert response.status_code in {200, 404, 422}


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["status", "limit", "cursor", "since", "junk"]),
        st.text(max_size=30) | st.integers(-10, 1000).map(str),
        max_size=4,
    )
)
def test_listing_calls_with_any_query(http: httpx.Client, params: dict[str, str]) -> None:
    response = http.get("/v1/calls", params=params)
    assert_documented(response)


@FUZZ
@given(body=json_values | st.fixed_dictionaries({}, optional={"url": json_scalars, "events": json_values}))
def test_webhook_bodies(http: httpx.Client, body: Any) -> None:
    response = http.post("/v1/webhooks", content=orjson.dumps(body))
    assert_documented(response)
    if response.status_code == 201:  # keep the account under its endpoint limit
        assert http.delete(f"/v1/webhooks/{response.json()['id']}").status_code == 204


# ---- the sockets: client messages and producer frames -------------------------------------------

client_message = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "unsubscribe", "auth", "ping", "nope"]) | json_scalars},
        optional={
            "call_id": st.sampled_from(["*", "c1", "bad id", ""]) | json_scalars,
            "since": st.integers(-3, 10**20) | json_scalars,
            "types": st.lists(st.sampled_from(sorted(PUBLISHABLE_TYPES | {"x"})), max_size=3) | json_values,
            "token": st.text(max_size=30) | json_scalars,
        },
    ),
    json_values,
)


def replies(ws: ClientConnection, last: Any) -> list[dict[str, Any]]:
    """Every reply up to the one `last(reply)` recognizes (the answer to the final probe)."""
    out: list[dict[str, Any]] = []
    while not out or not last(out[-1]):
        out.append(orjson.loads(ws.recv(timeout=5)))
    return out


@FUZZ
@given(messages=st.lists(client_message, min_size=1, max_size=5))
def test_any_client_messages(server: ServerProcess, key: str, messages: list[Any]) -> None:
    with connect(f"{server.ws_url}/v1/events?token={key}") as ws:
        for message in messages:
            ws.send(json.dumps(message))  # stdlib json: integers beyond 64 bits too
        ws.send('{"type":"ping"}')
        got = replies(ws, lambda r: r == {"type": "pong"})  # still open after every bad message
    for reply in got:
        assert reply["type"] in {"pong", "error", "subscribed", "unsubscribed"}, reply
        if reply["type"] == "error":
            assert reply["data"]["code"] in p.ERROR_CODES
            assert reply["data"]["code"] != p.ErrorCode.INTERNAL, reply


@FUZZ
@given(frames=st.lists(body_strategy, min_size=1, max_size=4))
def test_any_producer_frames(server: ServerProcess, key: str, frames: list[Any]) -> None:
    call_id = f"fz_{uuid.uuid4().hex[:12]}"
    with connect(f"{server.ws_url}/v1/ingest?token={key}") as ws:
        for frame in frames:
            events = frame if isinstance(frame, list) else [frame]
            for event in events:
                if isinstance(event, dict):
                    event["call_id"] = call_id
            ws.send(orjson.dumps(frame).decode())
        ws.send(
            orjson.dumps(
                {"call_id": call_id, "type": "agent.state", "data": {"state": "listening"}, "ref": "end"}
            ).decode()
        )
        got = replies(ws, lambda r: r.get("ref") == "end")
    for reply in got:
        assert reply["type"] in {"ack", "error"}, reply
        if reply["type"] == "error":
            assert reply["data"]["code"] in p.ERROR_CODES
            assert reply["data"]["code"] != p.ErrorCode.INTERNAL, reply
