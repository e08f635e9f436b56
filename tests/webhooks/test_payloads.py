"""Webhook bodies built from stored events: transcript, paired function calls, sentiment, metrics."""

from __future__ import annotations

from typing import Any

import pytest

from callstream.store.chunks import StoredEvent
from callstream.webhooks.payloads import build_payload, function_calls, iso_ms

CALL = {
    "call_id": "call_a",
    "status": "ended",
    "started_at": 1_700_000_000_000,
    "ended_at": 1_700_000_042_500,
    "duration_ms": 42_500,
    "end_status": "completed",
    "reason": "caller hung up",
    # the turns its row summed (store/sums.py)
    "turns": 3,
    "latencies": "1200 800 950",
    "latency_max": 1200,
    "interruptions": 1,
    "agent_talk_ms": 18_000,
    "user_talk_ms": 9_500,
}


def ev(seq: int, type_: str, **data: Any) -> StoredEvent:
    return StoredEvent(seq, 1_700_000_000_000 + seq * 100, type_, data)


EVENTS = [
    ev(1, "agent.state", state="listening"),
    ev(2, "transcript.final", speaker="user", text="Hi, my order is late.", is_final=True,
       sentiment={"score": -0.4, "label": "negative"}, utterance_id="u1"),
    ev(3, "function.call", name="lookup_order", args={"id": 7}, tool_call_id="t1"),
    ev(4, "function.call", name="check_stock", args={"sku": "x"}, tool_call_id="t2"),
    ev(5, "function.result", name="check_stock", result={"n": 3}, tool_call_id="t2"),
    ev(6, "function.result", name="lookup_order", result={"eta": "tomorrow"}, tool_call_id="t1"),
    ev(7, "transcript.final", speaker="agent", text="It arrives tomorrow, great news!",
       is_final=True, sentiment={"score": 0.8, "label": "positive"}),
    ev(8, "call.ended", status="completed", duration_ms=42_500, reason="caller hung up"),
]  # fmt: skip


def test_call_ended_carries_everything_after_the_call() -> None:
    body = build_payload("call.ended", CALL, EVENTS, 1_700_000_042_500)
    assert body["type"] == "call.ended"
    assert body["timestamp"] == "2023-11-14T22:14:02.500Z"
    data = body["data"]
    assert data["call_id"] == "call_a"
    assert data["status"] == data["end_status"] == "completed"
    assert data["duration_ms"] == 42_500
    assert data["reason"] == "caller hung up"
    assert (data["started_at"], data["ended_at"]) == (CALL["started_at"], CALL["ended_at"])
    assert [line["seq"] for line in data["transcript"]] == [2, 7]
    assert data["transcript"][0] == {
        "seq": 2,
        "ts": 1_700_000_000_200,
        "speaker": "user",
        "text": "Hi, my order is late.",
        "utterance_id": "u1",
        "sentiment": {"score": -0.4, "label": "negative"},
    }
    pairs = {c["name"]: c["result"]["result"] for c in data["function_calls"]}
    assert pairs == {"lookup_order": {"eta": "tomorrow"}, "check_stock": {"n": 3}}
    assert data["sentiment"]["score"] == 0.2
    assert data["sentiment"]["label"] == "positive"
    assert data["sentiment"]["by_speaker"]["user"] == {"score": -0.4, "label": "negative", "n": 1}
    assert data["metrics"] == {
        "turns": 3,
        "latency_ms": {"p50": 950, "p90": 1200, "max": 1200},
        "interruptions": 1,
        "agent_talk_ms": 18_000,
        "user_talk_ms": 9_500,
    }


def test_transcript_completed_is_the_transcript_alone() -> None:
    body = build_payload("transcript.completed", CALL, EVENTS, 1_700_000_042_500)
    assert set(body["data"]) == {"call_id", "started_at", "ended_at", "transcript"}
    assert [line["text"] for line in body["data"]["transcript"]] == [
        "Hi, my order is late.",
        "It arrives tomorrow, great news!",
    ]


def test_without_tool_call_ids_results_pair_by_order_and_name() -> None:
    events = [
        ev(1, "function.call", name="search", args={"q": "a"}),
        ev(2, "function.call", name="book", args={}),
        ev(3, "function.call", name="search", args={"q": "b"}),
        ev(4, "function.result", name="search", result="A"),
        ev(5, "function.result", name="search", result="B"),
    ]
    calls = function_calls(events)
    assert [(c["args"], c["result"] and c["result"]["result"]) for c in calls] == [
        ({"q": "a"}, "A"),
        ({}, None),  # never answered
        ({"q": "b"}, "B"),
    ]


def test_a_result_without_its_call_is_still_listed() -> None:
    calls = function_calls([ev(1, "function.result", name="x", result=1, tool_call_id="zz")])
    assert calls == [
        {
            "seq": None,
            "ts": None,
            "name": "x",
            "tool_call_id": "zz",
            "args": None,
            "result": {"seq": 1, "ts": 1_700_000_000_100, "result": 1},
        }
    ]


def test_no_sentiment_when_nothing_was_scored() -> None:
    events = [ev(1, "transcript.final", speaker="user", text="hi", is_final=True)]
    data = build_payload("call.ended", CALL, events, 0)["data"]
    assert data["sentiment"] is None
    assert data["function_calls"] == []
    bare = {"call_id": "c", "ended_at": 1}  # what the outbox uses should the calls row be missing
    assert build_payload("call.ended", bare, events, 0)["data"]["metrics"] == {
        "turns": 0, "latency_ms": None, "interruptions": 0, "agent_talk_ms": 0, "user_talk_ms": 0,
    }


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_payload("call.started", CALL, EVENTS, 0)


def test_iso_ms_keeps_milliseconds() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_007) == "1970-01-01T00:00:01.007Z"
