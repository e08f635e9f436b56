"""docs/protocol.md, Privacy: redaction, through real server processes: with `--redact`, REST, the ingest
socket, live delivery, replay, REST history and the webhook payload carry only redacted text, and
the original is in no file the server wrote; without it nothing changes; a bad kind stops `serve`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from websockets.asyncio.client import connect

from tests.helpers import (
    ServerProcess,
    ended,
    final,
    free_port,
    history,
    key_of,
    open_events,
    partial,
    publish,
    recv,
    recv_until,
    send,
)
from tests.webhooks.conftest import Receiver

CARD, SPOKEN_CARD = "4111 1111 1111 1111", "four one one one, one one one one, one one one one, one one one one"
EMAIL, PHONE, SSN = "maria.lopez@example.org", "(415) 555-2671", "123-45-6789"
PARTIAL = "my card is four one one one, one one"  # seven digits so far: nothing to redact yet
SECRETS = [CARD, SPOKEN_CARD, EMAIL, PHONE, SSN, "4111111111111111", "maria.lopez", "555-2671", "45-6789"]


def script() -> list[dict[str, Any]]:
    """A call whose caller gives a card, an email, a phone number and an SSN, to REST and ingest alike."""
    return [
        partial(PARTIAL, utterance_id="u1"),
        final(f"my card is {SPOKEN_CARD}", utterance_id="u1"),
        {"type": "function.call", "data": {"name": "charge", "tool_call_id": "t1",
                                           "args": {"card": CARD, "contact": {"email": EMAIL}, "cents": 1200}}},
        {"type": "function.result", "data": {"name": "charge", "tool_call_id": "t1", "result": f"receipt sent to {EMAIL}"}},
        final(f"call me on {PHONE}, my social is {SSN}, order 48213977 at ten thirty"),
    ]  # fmt: skip


EXPECTED_TEXTS = [PARTIAL, "my card is [card]",
                  "call me on [phone], my social is [ssn], order 48213977 at ten thirty"]  # fmt: skip


@pytest.fixture(scope="module")
def redacting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("redacting"), "--redact", "all").start()
    yield server
    server.stop()


def assert_redacted(events: list[dict[str, Any]]) -> None:
    texts = [e["data"]["text"] for e in events if e["type"].startswith("transcript.")]
    assert [t for t in texts if t in EXPECTED_TEXTS] == texts
    calls = {e["type"]: e["data"] for e in events if e["type"].startswith("function.")}
    assert calls["function.call"]["args"] == {"card": "[card]", "contact": {"email": "[email]"}, "cents": 1200}
    assert calls["function.call"]["redacted"] == ["card", "email"]
    assert calls["function.result"] == {"name": "charge", "tool_call_id": "t1", "result": "receipt sent to [email]",
                                        "redacted": ["email"]}  # fmt: skip
    finals = [e["data"] for e in events if e["type"] == "transcript.final"]
    assert [f["redacted"] for f in finals] == [["card"], ["phone", "ssn"]]
    assert all(s not in orjson.dumps(events).decode() for s in SECRETS)


async def ingest(server: ServerProcess, key: str, call_id: str, events: list[dict[str, Any]]) -> None:
    async with connect(f"{server.ws_url}/v1/ingest", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        frame = [{"call_id": call_id, **e} for e in events]
        frame[-1]["ref"] = "last"
        await ws.send(orjson.dumps(frame).decode())
        assert (await recv(ws))["type"] == "ack"


async def test_every_way_out_carries_only_redacted_text(redacting: ServerProcess) -> None:
    key = key_of(redacting)
    receiver = await Receiver().start()
    try:
        hook = httpx.post(f"{redacting.url}/v1/webhooks", json={"url": receiver.url, "events": ["call.ended"]},
                          headers={"Authorization": f"Bearer {key}"}).json()  # fmt: skip
        by_rest, by_ingest = f"call_{uuid.uuid4().hex[:10]}", f"call_{uuid.uuid4().hex[:10]}"
        sub = await open_events(redacting, key)
        await send(sub, {"type": "subscribe", "call_id": by_rest})
        await recv_until(sub, "subscribed")
        response = publish(redacting, key, by_rest, [*script(), ended()])
        assert response.status_code == 202, response.text
        live = [await recv(sub) for _ in range(len(script()) + 1)]
        await sub.close()
        await ingest(redacting, key, by_ingest, script())

        assert_redacted(live)
        for call_id in (by_rest, by_ingest):
            assert_redacted(history(redacting, key, call_id))
            replay = await open_events(redacting, key)
            await send(replay, {"type": "subscribe", "call_id": call_id, "since": 0})
            assert_redacted([m for m in await recv_until(replay, "subscribed") if m["type"] != "subscribed"])
            await replay.close()

        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert time.monotonic() < deadline, "no webhook in time"
            await asyncio.sleep(0.05)
        body = Webhook(hook["secret"]).verify(receiver.requests[0].body, receiver.requests[0].headers)
    finally:
        await receiver.close()
    assert [line["text"] for line in body["data"]["transcript"]] == EXPECTED_TEXTS[1:]
    assert [line["redacted"] for line in body["data"]["transcript"]] == [["card"], ["phone", "ssn"]]
    assert all(s not in orjson.dumps(body).decode() for s in SECRETS)


def test_the_original_text_is_in_no_file_the_server_wrote(redacting: ServerProcess) -> None:
    key, call_id = key_of(redacting), f"call_{uuid.uuid4().hex[:10]}"
    assert publish(redacting, key, call_id, [*script(), ended()]).status_code == 202
    history(redacting, key, call_id)  # stored
    written = b"".join(p.read_bytes() for p in Path(redacting.data_dir).rglob("*") if p.is_file())
    assert b"[card]" in written  # the store is in these files
    assert [s for s in SECRETS if s.encode() in written] == []


def test_without_redaction_nothing_changes(server: ServerProcess) -> None:
    key, call_id = key_of(server), f"call_{uuid.uuid4().hex[:10]}"
    events = script()
    events[2]["data"]["redacted"] = ["a producer's own field"]
    assert publish(server, key, call_id, events).status_code == 202
    stored = history(server, key, call_id)
    finals = [e["data"]["text"] for e in stored if e["type"] == "transcript.final"]
    assert finals == [e["data"]["text"] for e in events if e["type"] == "transcript.final"]
    assert [e["data"] for e in stored if e["type"].startswith("function.")] == [e["data"] for e in events[2:4]]
    assert [e["type"] for e in stored if "redacted" in e["data"]] == ["function.call"]  # the producer's own


@pytest.mark.parametrize(("args", "env"), [(["--redact", "card,passport"], {}), ([], {"CALLSTREAM_REDACT": "pin"})])
def test_an_unknown_kind_stops_the_server_with_a_clear_error(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    command = [sys.executable, "-m", "callstream", "serve", "--port", str(free_port()), "--data-dir", str(tmp_path), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env={**os.environ, **env})
    assert done.returncode == 2
    assert "--redact / CALLSTREAM_REDACT" in done.stderr or "CALLSTREAM_REDACT" in done.stderr
    assert "unknown kind" in done.stderr
