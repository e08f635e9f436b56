"""callstream.sse, the sans-I/O part of Server-Sent Events: the query, the cursor, the bytes."""

from __future__ import annotations

import pytest

from callstream import protocol as p
from callstream import sse
from callstream.client_stream import StreamPlan


def test_a_cursor_round_trips_and_never_moves_back() -> None:
    cursor = sse.StreamCursor({"call_a": 3})
    cursor.advance("call_b", 1)
    cursor.advance("call_a", 2)  # older: ignored
    cursor.advance("call_a", 5)
    assert cursor.text() == "call_a=5,call_b=1"
    assert sse.parse_cursor(cursor.text(), 10) == {"call_a": 5, "call_b": 1}
    cursor.drop("call_a")
    assert cursor.text() == "call_b=1"
    assert len(cursor) == 1


@pytest.mark.parametrize(
    "text",
    ["garbage", "a=", "=3", "a=3,,b=4", "a=-1", "a=3.5", "a=0x10", "bad id!=3", "a=3,a=4", "a=99999999999999999999", "a=١"],
)
def test_anything_but_a_cursor_of_this_server_is_refused(text: str) -> None:
    with pytest.raises(sse.CursorError):
        sse.parse_cursor(text, 10)


def test_a_cursor_is_bounded_in_calls_and_length() -> None:
    with pytest.raises(sse.CursorError):
        sse.parse_cursor(",".join(f"c{i}=1" for i in range(11)), 10)
    with pytest.raises(sse.CursorError):
        sse.parse_cursor("a=1," * 20_000, 100_000)


def test_the_query_becomes_subscriptions_and_the_cursor_wins_over_since() -> None:
    request = sse.parse_stream_request(["c1", "c2", "c1"], ["transcript.final,call.ended"], [], "c1=4", 10)
    assert request.call_ids == ("c1", "c2")
    assert request.types == {"transcript.final", "call.ended"}
    assert request.subscriptions() == [
        p.Subscribe("c1", 4, request.types),
        p.Subscribe("c2", None, request.types),
    ]
    single = sse.parse_stream_request(["c1"], [], ["2"], "c1=7", 10)
    assert single.since == {"c1": 7}


def test_a_wildcard_resumes_the_calls_its_cursor_names_then_follows_all() -> None:
    request = sse.parse_stream_request(["*"], [], [], "c1=4,c9=2", 10)
    assert [(s.call_id, s.since) for s in request.subscriptions()] == [("c1", 4), ("c9", 2), ("*", None)]


@pytest.mark.parametrize(
    ("call_ids", "types", "since", "cursor"),
    [
        ([], [], [], None),
        (["bad id"], [], [], None),
        (["*", "c1"], [], [], None),
        (["*"], [], ["1"], None),
        (["c1", "c2"], [], ["1"], None),
        (["c1"], [], ["-1"], None),
        (["c1"], ["nope"], [], None),
        (["c1"], [","], [], None),
        ([f"c{i}" for i in range(11)], [], [], None),
    ],
)
def test_a_bad_query_is_a_protocol_error(call_ids: list[str], types: list[str], since: list[str], cursor: str | None) -> None:
    with pytest.raises(p.ProtocolError):
        sse.parse_stream_request(call_ids, types, since, cursor, 10)


def test_a_cursor_naming_a_call_the_stream_does_not_follow_is_refused() -> None:
    with pytest.raises(sse.CursorError):
        sse.parse_stream_request(["c1"], [], [], "c2=5", 10)


def test_messages_and_the_decoder_agree() -> None:
    decoder = sse.Decoder()
    text = (sse.retry_field(1000) + sse.comment("keepalive") + sse.message("subscribed", b'{"a":1}', "c1=0")).decode()
    got = [m for line in text.split("\n") if (m := decoder.feed(line)) is not None]
    assert got == [("subscribed", '{"a":1}', "c1=0")]
    assert sse.message("error", b"{}", None) == b"event: error\ndata: {}\n\n"


def test_the_client_plans_its_stream_from_what_it_has_yielded() -> None:
    plan = StreamPlan({"c1": (None, None), "c2": (["transcript.final"], 3)}, {"c1": 7, "c9": 1})
    assert plan.params() == (("call_id", "c1"), ("call_id", "c2"))
    assert plan.headers()["Last-Event-ID"] == "c1=7,c2=3"
    wildcard = StreamPlan({"*": (["call.ended"], None)}, {"c1": 7, "c9": 1})
    assert wildcard.params() == (("call_id", "*"), ("types", "call.ended"))
    assert wildcard.headers()["Last-Event-ID"] == "c1=7,c9=1"
    assert "Last-Event-ID" not in StreamPlan({"c1": (None, None)}, {}).headers()


def test_a_stream_of_one_call_shares_each_events_message() -> None:
    from callstream.events import Event

    event = Event("acct", "c1", 5, 1, "transcript.final", {"speaker": "user", "text": "hi"})
    message = sse.alone_message(event)
    assert message.startswith(b"id: c1=5\nevent: transcript.final\ndata: {")
    assert message.endswith(b"}\n\n")
    assert event.sse_alone is message
