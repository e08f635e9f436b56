"""The event model: validation and the wire frame every subscriber receives."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from callstream.events import MAX_DEPTH, Event, EventInvalidError, check_payload, text_frame
from callstream.server.transport import frame_payload


@given(st.text(max_size=70_000))
def test_text_frame_is_what_websockets_would_send(text: str) -> None:
    payload = text.encode()
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert frame_payload(text_frame(payload)) == text


def test_an_event_is_encoded_once_and_its_frame_carries_the_envelope() -> None:
    event = Event("acme", "c1", 7, 1234, "agent.state", {"state": "thinking"})
    assert event.wire is event.wire
    assert orjson.loads(frame_payload(event.wire)) == {
        "type": "agent.state",
        "call_id": "c1",
        "seq": 7,
        "ts": 1234,
        "data": {"state": "thinking"},
    }


@pytest.mark.parametrize(
    ("kind", "data", "problem"),
    [
        ("transcript.final", {"speaker": "bot", "text": "x"}, "speaker"),
        ("transcript.partial", {"speaker": "user", "text": "x", "is_final": True}, "is_final"),
        ("agent.state", {"state": "sleeping"}, "state"),
        ("function.call", {"name": "f"}, "args"),
        ("call.ended", {"status": "completed", "duration_ms": -1}, "duration_ms"),
        ("call.ended", {"status": "exploded", "duration_ms": 1}, "status"),
        ("error", {}, "cannot be published"),
    ],
)
def test_invalid_payloads_name_the_field(kind: str, data: dict[str, object], problem: str) -> None:
    with pytest.raises(EventInvalidError, match=problem):
        check_payload(kind, data)


def test_is_final_is_completed_and_extra_fields_pass_through() -> None:
    data: dict[str, object] = {"speaker": "user", "text": "hi", "confidence": 0.93}
    check_payload("transcript.final", data)
    assert data == {"speaker": "user", "text": "hi", "confidence": 0.93, "is_final": True}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"name": "f", "args": {"x": float("nan")}}, "finite"),
        ({"name": "f", "args": [float("inf")]}, "finite"),
        ({"name": "f", "args": {"x": 2**63}}, "64 bits"),
        ({"name": "f", "args": {"x": -(2**63) - 1}}, "64 bits"),
        ({"name": "f", "args": {"a\x00": 1}}, "U+0000"),
        ({"name": "f", "args": "a\x00b"}, "U+0000"),
        ({"name": "f", "args": {"x": b"bytes"}}, "JSON"),
    ],
)
def test_values_the_server_cannot_keep_are_refused(data: dict[str, object], problem: str) -> None:
    with pytest.raises(EventInvalidError, match=re.escape(problem)):
        check_payload("function.call", data)


def test_nesting_is_bounded_and_the_bound_itself_is_accepted() -> None:
    def nested(depth: int) -> object:
        value: object = 1
        for _ in range(depth):
            value = [value]
        return value

    check_payload("function.call", {"name": "f", "args": nested(MAX_DEPTH - 2)})
    with pytest.raises(EventInvalidError, match="deeper"):
        check_payload("function.call", {"name": "f", "args": nested(MAX_DEPTH)})


@pytest.mark.parametrize("score", [1.0001, -1.5, 1e308, "0.5", True, None])
def test_a_producers_sentiment_score_must_be_in_minus_one_to_one(score: object) -> None:
    data = {"speaker": "user", "text": "x", "sentiment": {"score": score, "label": "positive"}}
    with pytest.raises(EventInvalidError, match=r"sentiment\.score"):
        check_payload("transcript.final", data)


@given(st.floats(min_value=-1.0, max_value=1.0))
def test_any_score_in_range_is_kept(score: float) -> None:
    check_payload("transcript.final", {"speaker": "agent", "text": "x", "sentiment": {"score": score}})
