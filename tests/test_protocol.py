"""The sans-I/O protocol core (callstream.protocol) without sockets, plus property tests."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callstream import protocol as p
from callstream.events import END_STATUSES, PUBLISHABLE_TYPES

# ---- parse_client_message --------------------------------------------------------------------------


def parse(message: Any) -> p.ClientMessage:
    return p.parse_client_message(orjson.dumps(message))


def refused(message: Any) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_client_message(message if isinstance(message, str | bytes) else orjson.dumps(message))
    assert caught.value.code in p.ERROR_CODES
    assert caught.value.message
    return caught.value


def test_subscribe_variants() -> None:
    assert parse({"type": "subscribe", "call_id": "call_1"}) == p.Subscribe("call_1")
    assert parse({"type": "subscribe", "call_id": "c", "since": 0}) == p.Subscribe("c", 0)
    assert parse({"type": "subscribe", "call_id": "c", "since": None}) == p.Subscribe("c")
    assert parse({"type": "subscribe", "call_id": "*"}) == p.Subscribe("*")
    assert parse(
        {"type": "subscribe", "call_id": "a.B:c-d_9", "types": ["transcript.final", "call.ended"]}
    ) == (p.Subscribe("a.B:c-d_9", None, frozenset({"transcript.final", "call.ended"})))
    assert parse({"type": "subscribe", "call_id": "x" * 128}).call_id == "x" * 128  # type: ignore[union-attr]


def test_other_client_messages() -> None:
    assert parse({"type": "unsubscribe", "call_id": "c"}) == p.Unsubscribe("c")
    assert parse({"type": "unsubscribe", "call_id": "*"}) == p.Unsubscribe("*")
    assert parse({"type": "auth", "token": "eyJ.x.y"}) == p.Auth("eyJ.x.y")
    assert parse({"type": "ping"}) == p.Ping()
    assert p.parse_client_message('{"type":"ping","extra":1}') == p.Ping()  # unknown fields are ignored


def test_bytes_and_str_frames_parse_alike() -> None:
    raw = '{"type":"subscribe","call_id":"c"}'
    assert p.parse_client_message(raw) == p.parse_client_message(raw.encode())


@pytest.mark.parametrize(
    "raw",
    ["", "not json", "{", '{"type":"ping"', "[1,2", "\ud800", b"\xff\xfe", b"\x00"],
)
def test_not_json_is_invalid_message(raw: str | bytes) -> None:
    assert refused(raw).code == p.ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("value", [[], [{"type": "ping"}], "ping", 1, None, True])
def test_not_an_object_is_invalid_message(value: Any) -> None:
    assert refused(value).code == p.ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("kind", [None, 1, ["ping"], {"a": 1}, True])
def test_missing_or_non_string_type_is_invalid_message(kind: Any) -> None:
    message = {} if kind is None else {"type": kind}
    assert refused(message).code == p.ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("kind", ["subscribed", "transcript.final", "PING", "", "error", "ack"])
def test_unknown_type_is_unknown_type(kind: str) -> None:
    assert refused({"type": kind}).code == p.ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize(
    "call_id", [None, "", "x" * 129, "has space", "slash/no", "caf\u00e9", 5, ["c"], "**", "a*"]
)
def test_bad_call_ids_are_invalid_message(call_id: Any) -> None:
    message: dict[str, Any] = {"type": "subscribe"}
    if call_id is not None:
        message["call_id"] = call_id
    assert refused(message).code == p.ErrorCode.INVALID_MESSAGE
    message["type"] = "unsubscribe"
    assert refused(message).code == p.ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("since", [-1, 2**63, 2**64 - 1, 1.5, "3", True, False, [1], {"n": 1}])
def test_bad_since_is_invalid_message_naming_the_call(since: Any) -> None:
    error = refused({"type": "subscribe", "call_id": "c", "since": since})
    assert error.code == p.ErrorCode.INVALID_MESSAGE
    assert error.call_id == "c"
    assert error.message == "since must be an integer from 0 to 9223372036854775807"


def test_since_is_not_allowed_with_the_wildcard() -> None:
    error = refused({"type": "subscribe", "call_id": "*", "since": 0})
    assert error.code == p.ErrorCode.INVALID_MESSAGE
    assert error.call_id == "*"


@pytest.mark.parametrize(
    "types", [[], "transcript.final", ["transcript.final", 3], ["nope"], ["error"], ["subscribed"], {"a": 1}]
)
def test_bad_types_filter_is_invalid_message(types: Any) -> None:
    error = refused({"type": "subscribe", "call_id": "c", "types": types})
    assert error.code == p.ErrorCode.INVALID_MESSAGE
    assert "types" in error.message


@pytest.mark.parametrize("token", [None, "", 5, ["t"]])
def test_auth_needs_a_token_string(token: Any) -> None:
    message: dict[str, Any] = {"type": "auth"}
    if token is not None:
        message["token"] = token
    assert refused(message).code == p.ErrorCode.INVALID_MESSAGE


# ---- parse_event and parse_event_batch ----------------------------------------------------------


def test_parse_event_from_rest_takes_the_call_id_from_the_url() -> None:
    event = p.parse_event({"type": "transcript.final", "data": {"speaker": "user", "text": "hi"}}, "c1")
    assert (event.call_id, event.type, event.ref) == ("c1", "transcript.final", None)
    assert event.data == {"speaker": "user", "text": "hi", "is_final": True}  # is_final completed


def test_parse_event_from_ingest_takes_call_id_and_ref_from_the_object() -> None:
    event = p.parse_event(
        {
            "call_id": "c2",
            "type": "transcript.partial",
            "data": {"speaker": "agent", "text": "h"},
            "ref": "r1",
        }
    )
    assert (event.call_id, event.ref, event.data["is_final"]) == ("c2", "r1", False)


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("transcript.partial", {"speaker": "user", "text": "", "utterance_id": "u1"}),
        ("transcript.final", {"speaker": "agent", "text": "ok", "is_final": True, "custom": [1]}),
        ("agent.state", {"state": "listening"}),
        ("agent.state", {"state": "thinking"}),
        ("agent.state", {"state": "speaking"}),
        ("function.call", {"name": "f", "args": None, "tool_call_id": "t"}),
        ("function.result", {"name": "f", "result": {"deep": [1, {"x": 2}]}}),
        *[("call.ended", {"status": s, "duration_ms": 0}) for s in sorted(END_STATUSES)],
        ("call.ended", {"status": "completed", "duration_ms": 5, "reason": "hung up"}),
    ],
)
def test_valid_payloads_pass_unchanged(event_type: str, data: dict[str, Any]) -> None:
    event = p.parse_event({"type": event_type, "data": dict(data)}, "c")
    for key, value in data.items():
        assert event.data[key] == value


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"type": "transcript.final", "data": {"speaker": "bot", "text": "x"}}, "speaker"),
        ({"type": "transcript.final", "data": {"speaker": "user"}}, "text"),
        (
            {"type": "transcript.partial", "data": {"speaker": "user", "text": "x", "is_final": True}},
            "is_final",
        ),
        (
            {"type": "transcript.final", "data": {"speaker": "user", "text": "x", "utterance_id": 1}},
            "utterance_id",
        ),
        ({"type": "agent.state", "data": {"state": "idle"}}, "state"),
        ({"type": "function.call", "data": {"name": "f"}}, "args"),
        ({"type": "function.call", "data": {"name": "f", "args": {}, "tool_call_id": 3}}, "tool_call_id"),
        ({"type": "function.result", "data": {"result": 1}}, "name"),
        ({"type": "call.ended", "data": {"status": "done", "duration_ms": 1}}, "status"),
        ({"type": "call.ended", "data": {"status": "busy", "duration_ms": True}}, "duration_ms"),
        ({"type": "call.ended", "data": {"status": "busy", "duration_ms": 1.5}}, "duration_ms"),
        ({"type": "call.ended", "data": {"status": "busy", "duration_ms": 1, "reason": 5}}, "reason"),
        ({"type": "error", "data": {"code": "x", "message": "y"}}, "cannot be published"),
        ({"type": "subscribed", "data": {}}, "cannot be published"),
        ({"type": "unsubscribed", "data": {}}, "cannot be published"),
        ({"type": 3, "data": {}}, "type"),
        ({"type": "agent.state", "data": [1]}, "data"),
        ({"type": "agent.state"}, "data"),
        ([1], "object"),
    ],
)
def test_invalid_events_say_why(obj: Any, needle: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event(obj, "c")
    assert caught.value.code == p.ErrorCode.INVALID_MESSAGE
    assert needle in caught.value.message


def test_invalid_ingest_event_carries_its_ref_and_call_id() -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event({"call_id": "c9", "type": "agent.state", "data": {"state": "x"}, "ref": 42})
    assert (caught.value.ref, caught.value.call_id) == (42, "c9")
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event({"call_id": "bad id", "type": "agent.state", "data": {"state": "idle"}, "ref": "r"})
    assert (caught.value.ref, caught.value.call_id) == ("r", None)
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event({"type": "agent.state", "data": {"state": "listening"}, "ref": 1})
    assert "call_id" in caught.value.message


def test_an_event_carries_its_producers_id() -> None:
    event = p.parse_event({"call_id": "c1", "type": "agent.state", "data": {"state": "listening"}, "id": "ev-1.a:b_2"})
    assert event.id == "ev-1.a:b_2"
    assert p.parse_event({"type": "agent.state", "data": {"state": "listening"}}, "c1").id is None


@pytest.mark.parametrize("bad", ["", "x" * 129, "a b", "é", "a/b", 7, 1.5, True, ["a"], {"a": 1}])
def test_an_invalid_id_is_refused_with_its_ref(bad: object) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event({"call_id": "c1", "type": "agent.state", "data": {"state": "listening"}, "id": bad, "ref": 5})
    assert (caught.value.code, caught.value.ref, caught.value.call_id) == ("invalid_message", 5, "c1")
    assert caught.value.message.startswith("id must be 1-128 characters")
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event_batch([{"type": "agent.state", "data": {"state": "listening"}}, {"type": "agent.state", "data": {"state": "listening"}, "id": bad}], "c1")
    assert caught.value.index == 1


def test_batch_of_one_object_or_a_list() -> None:
    one = {"type": "agent.state", "data": {"state": "speaking"}}
    assert len(p.parse_event_batch(one, "c")) == 1
    events = p.parse_event_batch(
        [one, {"type": "transcript.final", "data": {"speaker": "user", "text": "x"}}], "c"
    )
    assert [e.type for e in events] == ["agent.state", "transcript.final"]


def test_batch_error_names_the_failing_index() -> None:
    good = {"type": "agent.state", "data": {"state": "speaking"}}
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event_batch([good, good, {"type": "agent.state", "data": {}}], "c")
    assert caught.value.index == 2  # type: ignore[attr-defined]
    assert caught.value.message.startswith("event 2:")
    assert str(caught.value) == caught.value.message


def test_empty_batch_is_refused() -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event_batch([], "c")
    assert caught.value.code == p.ErrorCode.INVALID_MESSAGE


# ---- message builders ------------------------------------------------------------------------------


def test_builders_produce_the_documented_shapes() -> None:
    assert orjson.loads(p.subscribed_message("c", "live", 7, 3)) == {
        "type": "subscribed",
        "call_id": "c",
        "data": {"call_id": "c", "status": "live", "seq": 7, "replayed": 3},
    }
    assert orjson.loads(p.unsubscribed_message("c")) == {
        "type": "unsubscribed",
        "call_id": "c",
        "data": {"call_id": "c"},
    }
    assert orjson.loads(p.PONG) == {"type": "pong"}
    assert orjson.loads(p.ack_message("r1", 12)) == {"type": "ack", "ref": "r1", "seq": 12}
    assert orjson.loads(p.server_message("x", None, {"a": 1})) == {
        "type": "x",
        "call_id": None,
        "data": {"a": 1},
    }


def test_error_message_shapes() -> None:
    assert orjson.loads(p.error_message(p.ErrorCode.RATE_LIMITED, "slow down")) == {
        "type": "error",
        "call_id": None,
        "data": {"code": "rate_limited", "message": "slow down"},
    }
    assert orjson.loads(p.error_message(p.ErrorCode.FORBIDDEN, "no", "c1", ref=0)) == {
        "type": "error",
        "call_id": "c1",
        "data": {"code": "forbidden", "message": "no", "call_id": "c1"},
        "ref": 0,
    }
    error = p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, "bad", "c2", "r")
    assert orjson.loads(p.error_from(error))["ref"] == "r"


def test_error_codes_cover_the_protocol() -> None:
    documented = {
        "invalid_message",
        "unknown_type",
        "forbidden",
        "too_many_subscriptions",
        "rate_limited",
        "message_too_large",
        "token_expired",
        "history_unavailable",
        "slow_consumer",
        "internal",
    }
    assert documented <= p.ERROR_CODES
    assert (p.CloseCode.AUTH, p.CloseCode.POLICY, p.CloseCode.TOO_LARGE, p.CloseCode.GOING_AWAY, p.CloseCode.TRY_AGAIN) == (
        4001,
        4008,
        1009,
        1001,
        1013,
    )


# ---- properties: nothing raises out of the parsers but ProtocolError ----------------------------------
# Frames are encoded with the standard library's json, which (unlike orjson) also writes integers
# beyond 64 bits: a client may send those too.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
call_ids = st.one_of(
    st.just("*"),
    st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=12),
    st.text(max_size=140),
    json_values,
)
client_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(p.CLIENT_TYPES)) | st.text(max_size=12) | json_values},
    optional={
        "call_id": call_ids,
        "since": st.integers() | json_values,
        "types": st.lists(st.sampled_from(sorted(PUBLISHABLE_TYPES)) | st.text(max_size=8), max_size=4)
        | json_values,
        "token": st.text(max_size=20) | json_values,
    },
)
event_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([*sorted(PUBLISHABLE_TYPES), "error", "subscribed"]) | json_values,
        "call_id": call_ids,
        "ref": json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "speaker": st.sampled_from(["user", "agent"]) | json_values,
                "text": st.text(max_size=10) | json_values,
                "is_final": json_values,
                "utterance_id": json_values,
                "state": st.sampled_from(["listening", "thinking", "speaking"]) | json_values,
                "name": st.text(max_size=5) | json_values,
                "args": json_values,
                "result": json_values,
                "tool_call_id": json_values,
                "status": st.sampled_from(["completed", "busy"]) | json_values,
                "duration_ms": st.integers() | json_values,
                "reason": json_values,
            },
        )
        | json_values,
    },
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_protocol_errors(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except p.ProtocolError as exc:
        error = exc
    assert error.code in p.ERROR_CODES
    assert isinstance(error.message, str)
    assert error.message
    return None


@PROPERTY
@given(st.text())
def test_any_text_frame_parses_or_is_refused(raw: str) -> None:
    only_protocol_errors(p.parse_client_message, raw)


@PROPERTY
@given(st.binary())
def test_any_binary_frame_parses_or_is_refused(raw: bytes) -> None:
    only_protocol_errors(p.parse_client_message, raw)


@PROPERTY
@given(json_values)
def test_any_json_value_parses_or_is_refused(value: Any) -> None:
    only_protocol_errors(p.parse_client_message, json.dumps(value))
    only_protocol_errors(p.parse_event_batch, value, None)
    only_protocol_errors(p.parse_event_batch, value, "c")


@PROPERTY
@given(client_messages)
def test_any_client_message_shape_parses_or_is_refused(message: dict[str, Any]) -> None:
    parsed = only_protocol_errors(p.parse_client_message, json.dumps(message))
    if isinstance(parsed, p.Subscribe):
        assert parsed.call_id == message["call_id"]
        assert parsed.since is None or (parsed.since >= 0 and parsed.call_id != "*")
        assert parsed.types is None or parsed.types <= PUBLISHABLE_TYPES


@PROPERTY
@given(st.lists(event_objects, max_size=4) | event_objects, st.none() | st.text(max_size=140))
def test_any_event_batch_parses_or_is_refused(batch: Any, url_call_id: Any) -> None:
    events = only_protocol_errors(p.parse_event_batch, batch, url_call_id)
    if events is not None:
        assert len(events) == (len(batch) if isinstance(batch, list) else 1)
        assert all(e.type in PUBLISHABLE_TYPES for e in events)


@pytest.mark.parametrize("ref", [[[[]]], {"a": 1}, "x" * 257, 2**63, True, 1.5])
def test_a_ref_that_cannot_be_echoed_safely_is_refused_and_not_echoed(ref: object) -> None:
    """A ref comes back in acks and errors: one nested past what the encoder takes (or any
    structure) would break the socket's acks, so only short strings and 64-bit integers pass."""
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event({"call_id": "c1", "type": "agent.state", "data": {"state": "thinking"}, "ref": ref})
    assert caught.value.code == "invalid_message"
    assert caught.value.ref is None
    assert "ref" in caught.value.message


def test_a_deeply_nested_ref_gets_an_error_that_can_be_sent() -> None:
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    raw = orjson.dumps({"call_id": "c1", "type": "agent.state", "data": {"state": "thinking"}, "ref": "r"})
    obj = orjson.loads(raw)
    obj["ref"] = deep
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_event(obj)
    assert orjson.loads(p.error_from(caught.value))["data"]["code"] == "invalid_message"
