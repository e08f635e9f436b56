"""The rules of live control's requests and results (callstream.control), without a server."""

from __future__ import annotations

from typing import Any

import pytest

from callstream.control import Holder, check_args, check_result, new_request_id, parse_actions
from callstream.events import EventInvalidError


@pytest.mark.parametrize(
    ("action", "args", "checked"),
    [
        ("say", {"text": "Hi"}, {"text": "Hi", "interrupt": False}),
        ("say", {"text": "x" * 2000, "interrupt": True}, {"text": "x" * 2000, "interrupt": True}),
        ("instruct", {"text": "Offer 10%"}, {"text": "Offer 10%"}),
        ("pause", None, {}),
        ("resume", {}, {}),
        ("transfer", {"to": "+14155550100"}, {"to": "+14155550100"}),
        ("transfer", {"to": "sip:billing@pbx.example.com", "reason": "billing"}, {"to": "sip:billing@pbx.example.com", "reason": "billing"}),
        ("end", {"reason": ""}, {"reason": ""}),
    ],
)
def test_valid_arguments_are_kept(action: str, args: Any, checked: dict[str, Any]) -> None:
    assert check_args(action, args) == checked


@pytest.mark.parametrize(
    ("action", "args", "says"),
    [
        ("say", {}, "needs args.text"),
        ("say", {"text": ""}, "1-2000 characters"),
        ("say", {"text": "x" * 2001}, "1-2000 characters"),
        ("say", {"text": "hi", "interrupt": "yes"}, "true or false"),
        ("say", {"text": "a\x00b"}, "args.text: text must not contain U\\+0000"),
        ("pause", {"for": 3}, "takes no arguments"),
        ("transfer", {"to": "14155550100"}, "E.164"),
        ("transfer", {"to": "sip:a b@c"}, "E.164"),
        ("transfer", {"to": "+1" + "5" * 20}, "E.164"),
        ("end", {"reason": 5}, "must be a string"),
        ("end", [], "JSON object"),
        ("dance", {}, "action must be one of"),
    ],
)
def test_invalid_arguments_say_what_is_wrong(action: str, args: Any, says: str) -> None:
    with pytest.raises(EventInvalidError, match=says):
        check_args(action, args)


def test_a_result_carries_a_request_id_ok_and_at_most_an_error() -> None:
    request_id = new_request_id()
    check_result({"request_id": request_id, "ok": False, "error": "timeout"})
    for bad in ({"request_id": "x", "ok": True}, {"request_id": request_id, "ok": 1},
                {"request_id": request_id, "ok": True, "by": {}}, {"request_id": request_id, "ok": False, "error": "e" * 2001}):
        with pytest.raises(EventInvalidError):
            check_result(bad)


def test_declared_actions_and_holders_round_trip() -> None:
    assert parse_actions("say, end") == parse_actions(["end", "say"]) == frozenset({"say", "end"})
    with pytest.raises(EventInvalidError, match="unknown controls"):
        parse_actions(["say", "fly"])
    holder = Holder("node1", "conn1", frozenset({"say", "end"}))
    assert Holder.decode(holder.encode()) == holder
    assert Holder.decode("node|conn|say,bogus").actions == frozenset({"say"})
