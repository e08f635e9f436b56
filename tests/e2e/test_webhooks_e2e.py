"""Webhooks through a real server process (docs/protocol.md, Webhooks): REST, delivery, SIGKILL, the CLI.

The receivers are real HTTP servers on loopback (the server runs with
--webhooks-allow-private, as ServerProcess always starts it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from callstream.settings import Settings
from tests.helpers import ServerProcess, ended, final, free_port
from tests.webhooks.conftest import Receiver

# Fast retries when the server has the setting; otherwise the protocol's 5 s first retry.
FAST_ENV = (
    {"CALLSTREAM_WEBHOOK_RETRY_SCHEDULE": "1s,1s", "CALLSTREAM_WEBHOOK_RETRY_JITTER": "0"}
    if "webhook_retry_schedule" in Settings.model_fields
    else {}
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _publish(
    http: httpx.AsyncClient, server: ServerProcess, key: str, call_id: str, events: list[Any]
) -> None:
    response = await http.post(
        f"{server.url}/v1/calls/{call_id}/events", content=orjson.dumps(events),
        headers={**_auth(key), "content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 202, response.text


async def _add(
    http: httpx.AsyncClient, server: ServerProcess, key: str, url: str, **body: Any
) -> dict[str, Any]:
    response = await http.post(f"{server.url}/v1/webhooks", json={"url": url, **body}, headers=_auth(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def _wait(predicate: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _deliveries(
    http: httpx.AsyncClient, server: ServerProcess, key: str, webhook_id: str
) -> list[dict[str, Any]]:
    response = await http.get(f"{server.url}/v1/webhooks/{webhook_id}/deliveries", headers=_auth(key))
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


async def test_call_end_delivers_a_verified_call_ended(
    server: ServerProcess, api_key: str, other_key: str, call_id: str, http: httpx.AsyncClient
) -> None:
    rx = await Receiver().start()
    try:
        created = await _add(http, server, api_key, rx.url, events=["call.ended"])
        assert created["secret"].startswith("whsec_")
        assert created["events"] == ["call.ended"]
        calls = [
            final("Where is my parcel?"),
            {"type": "function.call",
             "data": {"name": "track", "args": {"id": 1}, "tool_call_id": "t1"}},
            {"type": "function.result",
             "data": {"name": "track", "result": {"eta": "today"}, "tool_call_id": "t1"}},
            final("It arrives today, great!", speaker="agent"),
            ended(duration_ms=4200),
        ]  # fmt: skip
        await _publish(http, server, api_key, call_id, calls)

        async def delivered() -> bool:
            return len(rx.requests) >= 1

        await _wait(delivered)
        request = rx.requests[0]
        body = Webhook(created["secret"]).verify(request.body, request.headers)
        data = body["data"]
        assert body["type"] == "call.ended"
        assert data["call_id"] == call_id
        assert data["status"] == "completed"
        assert data["duration_ms"] == 4200
        assert [t["text"] for t in data["transcript"]] == [
            "Where is my parcel?",
            "It arrives today, great!",
        ]
        assert data["function_calls"][0]["result"]["result"] == {"eta": "today"}
        assert data["sentiment"] is not None

        # the other tenant sees nothing of it
        listed = await http.get(f"{server.url}/v1/webhooks", headers=_auth(other_key))
        assert created["id"] not in {w["id"] for w in listed.json()["webhooks"]}
        missing = await http.get(
            f"{server.url}/v1/webhooks/{created['id']}/deliveries", headers=_auth(other_key)
        )
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        gone = await http.delete(f"{server.url}/v1/webhooks/{created['id']}", headers=_auth(other_key))
        assert gone.status_code == 404
        mine = await http.delete(f"{server.url}/v1/webhooks/{created['id']}", headers=_auth(api_key))
        assert mine.status_code == 204
    finally:
        await rx.close()


async def test_registration_validates(server: ServerProcess, api_key: str, http: httpx.AsyncClient) -> None:
    bad = [
        {"url": "ftp://example.com/x"},
        {"url": "http://127.0.0.1:9/x", "events": ["call.started"]},
        {"url": "https://no-such-host.invalid/x"},
        {},
    ]
    for body in bad:
        response = await http.post(f"{server.url}/v1/webhooks", json=body, headers=_auth(api_key))
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    anonymous = await http.get(f"{server.url}/v1/webhooks")
    assert anonymous.status_code == 401


async def test_sigkill_with_a_pending_delivery_delivers_after_restart(
    fresh_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    fresh_server.env.update(FAST_ENV)
    fresh_server.start()
    key = fresh_server.create_key("acme")
    port = free_port()
    rx = Receiver(port=port)  # not listening yet: the first attempts fail
    created = await _add(http, fresh_server, key, rx.url)

    await _publish(http, fresh_server, key, "call_killed", [final("hello"), ended()])

    async def attempted() -> bool:
        deliveries = await _deliveries(http, fresh_server, key, created["id"])
        return len(deliveries) == 2 and all(d["attempt_count"] >= 1 for d in deliveries)

    await _wait(attempted)
    pending = await _deliveries(http, fresh_server, key, created["id"])
    assert {d["status"] for d in pending} == {"pending"}
    assert all("ConnectError" in (d["last_error"] or "") for d in pending)

    fresh_server.kill()  # SIGKILL: nothing of the shutdown path runs
    await rx.start()
    try:
        fresh_server.start()

        async def received() -> bool:
            return len({r.headers["webhook-id"] for r in rx.requests}) == 2

        await _wait(received, within=30)
        ids = {r.headers["webhook-id"] for r in rx.requests}
        assert ids == {d["message_id"] for d in pending}
        types = sorted(orjson.loads(r.body)["type"] for r in rx.requests)
        assert types == ["call.ended", "transcript.completed"]
        for r in rx.requests:
            Webhook(created["secret"]).verify(r.body, r.headers)

        async def recorded() -> bool:
            deliveries = await _deliveries(http, fresh_server, key, created["id"])
            return all(d["status"] == "succeeded" for d in deliveries)

        await _wait(recorded)
    finally:
        await rx.close()


async def test_cli_lists_every_attempt(
    server: ServerProcess, api_key: str, call_id: str, http: httpx.AsyncClient
) -> None:
    rx = await Receiver([500], default=200).start()
    env = {"CALLSTREAM_URL": server.url, "CALLSTREAM_KEY": api_key, "COLUMNS": "250"}
    try:
        added = server.cli("webhooks", "add", rx.url, "--event", "call.ended", "--json", env=env)
        created = orjson.loads(added.stdout)
        await _publish(http, server, api_key, call_id, [final("hi"), ended()])

        async def succeeded() -> bool:
            deliveries = await _deliveries(http, server, api_key, created["id"])
            return bool(deliveries) and deliveries[0]["status"] == "succeeded"

        await _wait(succeeded, within=30)
        out = server.cli("webhooks", "deliveries", created["id"], env=env).stdout
        print(out)  # the delivery log as a user sees it
        [message_id] = {r.headers["webhook-id"] for r in rx.requests}
        assert message_id in out
        assert "500" in out
        assert "200" in out
        assert "retry" in out
        assert "succeeded" in out
        assert "HTTP 500" in out

        listed = server.cli("webhooks", "list", env=env).stdout
        assert created["id"] in listed
        replayed = server.cli("webhooks", "replay", message_id, env=env).stdout
        assert message_id in replayed
        missing = server.cli("webhooks", "rm", "wh_nope", env=env, check=False)
        assert missing.returncode == 1
        assert "not_found" in missing.stderr
        server.cli("webhooks", "rm", created["id"], env=env)
    finally:
        await rx.close()


async def test_a_tenant_with_hanging_endpoints_does_not_delay_another(
    fresh_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """acme's endpoint accepts and never answers, with a backlog far beyond the node's slots;
    globex's webhook still arrives within one poll plus one attempt's timeout."""
    fresh_server.env.update(
        {
            "CALLSTREAM_WEBHOOK_TIMEOUT_S": "1",
            "CALLSTREAM_WEBHOOK_CONCURRENCY": "4",
            "CALLSTREAM_WEBHOOK_CONCURRENCY_PER_ACCOUNT": "2",
        }
    )
    fresh_server.start()
    acme, globex = fresh_server.create_key("acme"), fresh_server.create_key("globex")
    hanging, good = await Receiver(default="hang").start(), await Receiver().start()
    try:
        await _add(http, fresh_server, acme, hanging.url, events=["call.ended"])
        await _add(http, fresh_server, globex, good.url, events=["call.ended"])
        for i in range(20):
            await _publish(http, fresh_server, acme, f"call_hang_{i}", [final("hi"), ended()])

        async def acme_in_flight() -> bool:
            return hanging.open >= 2

        await _wait(acme_in_flight)
        queued = time.monotonic()
        await _publish(http, fresh_server, globex, "call_good", [final("hi"), ended()])

        async def globex_delivered() -> bool:
            return bool(good.requests)

        await _wait(globex_delivered, within=1.0 + 1.0 + 0.5)
        latency = good.requests[0].at - queued
        print(f"globex's webhook arrived {latency:.3f} s after its call ended")
        assert hanging.peak == 2
        assert latency < 1.0 + 1.0 + 0.5
    finally:
        await hanging.close()
        await good.close()
