"""Webhook bodies carry the call's metadata as its row keeps it."""

from __future__ import annotations

import orjson

from callstream.webhooks.payloads import build_payload
from tests.webhooks.test_payloads import CALL, EVENTS


def test_call_ended_and_transcript_completed_carry_the_call_s_metadata() -> None:
    metadata = {"agent": "ada", "from": "+15550100", "campaign": "spring", "vip": True}
    call = {**CALL, "metadata": orjson.dumps(metadata).decode()}
    for kind in ("call.ended", "transcript.completed"):
        assert build_payload(kind, call, EVENTS, 0)["data"]["metadata"] == metadata


def test_a_call_without_metadata_carries_an_empty_object() -> None:
    assert build_payload("call.ended", {**CALL, "metadata": None}, EVENTS, 0)["data"]["metadata"] == {}
