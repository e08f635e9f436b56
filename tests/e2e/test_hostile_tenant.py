"""A hostile tenant never breaks another: docs/protocol.md, Values and isolation, as a property.

Hypothesis generates account A's worst (tests/hostile_strategies.py) and sends it as raw bytes over
REST and /v1/ingest to a real server on SQLite and on PostgreSQL; after every example account B's
canary call must still publish, replay gap-free and read back over REST, and the node answer
/healthz 200 (tests/hostile_tenant.py). A's every answer is a 202, an ack or a documented refusal,
and the server logs no traceback. bench/hostile.py runs the same property for minutes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import ServerProcess, final, publish
from tests.hostile_tenant import run_property, server_log_problems
from tests.rawws import TEXT, RawWebSocket, encode

# Short enough for CI (about 10 s a backend), derandomized so a failure reproduces.
CI_PROFILE = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


def new_key(store_node: ServerProcess) -> str:
    return store_node.create_key(f"acct_{uuid.uuid4().hex[:8]}")


def test_a_hostile_tenant_never_breaks_another(store_node: ServerProcess) -> None:
    counts = run_property(store_node, new_key(store_node), new_key(store_node), CI_PROFILE)
    assert counts.examples == CI_PROFILE.max_examples, counts.summary()
    assert server_log_problems(store_node) == []


@pytest.fixture(scope="module")
def accounts(store_node: ServerProcess) -> tuple[str, str]:
    """(hostile, canary) keys for the focused regressions below."""
    return new_key(store_node), new_key(store_node)


@pytest.mark.parametrize("unit", ["é bad but ", "\U0001f600 ", "x y z good "])
def test_a_long_final_is_scored_at_once_and_holds_no_one_up(
    store_node: ServerProcess, accounts: tuple[str, str], unit: str
) -> None:
    """Sentiment runs on the event loop: a 300 KB final once held every account up for minutes."""
    hostile, canary = accounts
    started = time.monotonic()
    answer = publish(store_node, hostile, f"long_{uuid.uuid4().hex[:8]}", final(unit * (300_000 // len(unit))))
    assert answer.status_code == 202, answer.text
    assert time.monotonic() - started < 5.0
    assert publish(store_node, canary, f"canary_{uuid.uuid4().hex[:8]}", final("still here")).status_code == 202


def ingest_answers(store_node: ServerProcess, key: str, path: str, payload: bytes) -> list[dict[str, Any]]:
    """Every message the socket answers to `payload`, up to the ack of a sentinel sent after it."""
    ws = RawWebSocket(store_node.port, f"{path}?token={key}")
    try:
        sentinel = {"call_id": f"s_{uuid.uuid4().hex[:8]}", "type": "agent.state", "data": {"state": "listening"}}
        assert ws.send(encode(TEXT, payload))
        assert ws.send(encode(TEXT, orjson.dumps({**sentinel, "ref": "sentinel"})))
        answers = []
        while (got := ws.read(20)) is not None and got.opcode == TEXT:
            answers.append(orjson.loads(got.payload))
            if answers[-1].get("ref") == "sentinel":
                return answers
        raise AssertionError(("no ack for the sentinel", len(answers), answers[-3:]))
    finally:
        ws.close()


def test_a_frame_of_half_a_million_non_events_gets_one_error_and_holds_no_one_up(
    store_node: ServerProcess, accounts: tuple[str, str]
) -> None:
    """One error per item was half a million socket writes: 15 s in which no account was served."""
    hostile, canary = accounts
    started = time.monotonic()
    answers = ingest_answers(store_node, hostile, "/v1/ingest", b"[" + b",".join([b"0"] * 520_000) + b"]")
    assert time.monotonic() - started < 5.0
    assert [a["type"] for a in answers] == ["error", "ack"]
    assert answers[0]["data"]["code"] == "invalid_message"
    assert "at most 1000 events" in answers[0]["data"]["message"]
    assert publish(store_node, canary, f"canary_{uuid.uuid4().hex[:8]}", final("still here")).status_code == 202


def test_an_ingest_frame_over_the_limit_in_bytes_is_refused_whatever_its_length_in_characters(
    store_node: ServerProcess, accounts: tuple[str, str]
) -> None:
    text = "\U0010ffff" * 300_000  # 300,000 characters, 1.2 MB in UTF-8: past the 1 MiB frame limit
    frame = orjson.dumps({"call_id": "c1", "type": "transcript.partial", "data": {"speaker": "user", "text": text}})
    answers = ingest_answers(store_node, accounts[0], "/v1/ingest", frame)
    assert [(a["type"], a.get("data", {}).get("code")) for a in answers] == [
        ("error", "message_too_large"),
        ("ack", None),
    ]


def test_an_events_socket_message_over_the_limit_in_bytes_closes_with_1009(
    store_node: ServerProcess, accounts: tuple[str, str]
) -> None:
    ws = RawWebSocket(store_node.port, f"/v1/events?token={accounts[0]}")
    try:
        message = {"type": "subscribe", "call_id": "c1", "pad": "\U0010ffff" * 20_000}  # 80 KB > 64 KiB
        assert ws.send(encode(TEXT, orjson.dumps(message)))
        frames = ws.frames_until_close(5)
    finally:
        ws.close()
    assert frames[-1].close_code == 1009, frames
