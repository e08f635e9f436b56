"""Webhook bodies carry the call's metadata as its row keeps it."""

from __future__ import annotations

import orjson

from callstream.webhooks.payloads import build_payload
from tests.webhooks.test_payloads import CALL, EVENTS


def test_call_ended_carries_the_call_s_metadata() -> None:
    metadata = {"agent": "ada", "from": "+15550100", "campaign": "spring", "vip": True}
    call = {**CALL, "metadata": orjson.dumps(metadata).decode()}
    assert build_payload("call.ended", call, EVENTS, 0)["data"]["metadata"] == metadata
    assert "metadata" not in build_payload("transcript.completed", call, EVENTS, 0)["data"]  # the transcript alone


def test_a_call_without_metadata_carries_an_empty_object() -> None:
    assert build_payload("call.ended", {**CALL, "metadata": None}, EVENTS, 0)["data"]["metadata"] == {}
