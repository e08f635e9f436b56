"""Delivery end to end inside one process: real store (SQLite and PostgreSQL), real HTTP receivers.

What the contract promises (docs/protocol.md, Webhooks) and how each test pins it: signatures verify with
`standardwebhooks`; one `webhook-id` across retries, every attempt logged; the timeout; 410
disables; giving up; a crash mid-delivery is redelivered after the lease; rotation signs with
both secrets; several workers never deliver one message twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from callstream.store import SqlStore
from callstream.webhooks import tables as wt
from callstream.webhooks.repo import WebhookRepo
from callstream.webhooks.worker import WebhookWorker
from tests.webhooks.conftest import Receiver, Webhooks, fast_config, wait_until

MakeReceiver = Callable[..., Awaitable[Receiver]]
MakeWebhooks = Callable[..., Webhooks]


async def _deliveries(wh: Webhooks, account: str, endpoint_id: str) -> list[dict[str, Any]]:
    return await wh.repo.deliveries(account, endpoint_id, limit=100)


async def test_signed_call_ended_verifies(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(), webhooks()
    endpoint, secret = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    assert secret.startswith("whsec_")
    await wh.end_call("acme", "call_1", finals=("I need help", "Sure, happy to help"))
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "succeeded"))
    [request] = rx.requests
    body = Webhook(secret).verify(request.body, request.headers)
    assert body["type"] == "call.ended"
    assert body["data"]["call_id"] == "call_1"
    assert body["data"]["status"] == "completed"
    assert body["data"]["duration_ms"] == 1234
    assert [t["text"] for t in body["data"]["transcript"]] == ["I need help", "Sure, happy to help"]
    assert body["data"]["sentiment"]["label"] == "positive"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{rx.port}"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(request.body, request.headers)
    [delivery] = await _deliveries(wh, "acme", endpoint.id)
    assert delivery["status"] == "succeeded"
    assert delivery["message_id"] == request.headers["webhook-id"]


async def test_each_endpoint_gets_only_its_types(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    everything, transcripts, other = await receiver(), await receiver(), await receiver()
    wh = webhooks()
    await wh.repo.create_endpoint("acme", everything.url, ["call.ended", "transcript.completed"])
    await wh.repo.create_endpoint("acme", transcripts.url, ["transcript.completed"])
    await wh.repo.create_endpoint("globex", other.url, ["call.ended"])  # another tenant
    await wh.end_call("acme", "call_types")
    async with wh.running():
        await wait_until(lambda: len(everything.requests) == 2 and len(transcripts.requests) == 1)
        await asyncio.sleep(0.1)
    types = sorted(orjson.loads(r.body)["type"] for r in everything.requests)
    assert types == ["call.ended", "transcript.completed"]
    assert orjson.loads(transcripts.requests[0].body)["type"] == "transcript.completed"
    assert other.requests == []


async def test_fails_twice_then_succeeds_with_one_id(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(500, 503, 200), webhooks()
    endpoint, secret = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await wh.end_call("acme", "call_retry")
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "succeeded"))
        await asyncio.sleep(0.2)  # and no fourth
    assert len(rx.requests) == 3
    assert len({r.headers["webhook-id"] for r in rx.requests}) == 1
    assert len({r.body for r in rx.requests}) == 1  # the same bytes every time
    for r in rx.requests:
        Webhook(secret).verify(r.body, r.headers)
    [delivery] = await _deliveries(wh, "acme", endpoint.id)
    assert delivery["status"] == "succeeded"
    assert delivery["attempt_count"] == 3
    attempts = delivery["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 503, 200]
    assert [a["result"] for a in attempts] == ["retry", "retry", "succeeded"]
    assert [a["error"] for a in attempts] == ["HTTP 500", "HTTP 503", None]
    assert all(a["next_attempt_at"] is not None for a in attempts[:2])
    assert attempts[2]["next_attempt_at"] is None
    assert all(a["latency_ms"] >= 0 for a in attempts)


async def test_hanging_receiver_hits_the_timeout(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver("hang", 200), webhooks(timeout_s=0.5)
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await wh.end_call("acme", "call_hang")
    async with wh.running():
        await wait_until(lambda: len(rx.requests) == 2)
        await wait_until(
            lambda: _status(wh, "acme", endpoint.id, "succeeded"),
        )
    [delivery] = await _deliveries(wh, "acme", endpoint.id)
    first, second = delivery["attempts"]
    assert first["error"] == "timeout after 0.5 s"
    assert first["status_code"] is None
    assert first["result"] == "retry"
    assert 450 <= first["latency_ms"] < 2000
    assert second["result"] == "succeeded"


async def _status(wh: Webhooks, account: str, endpoint_id: str, status: str) -> bool:
    deliveries = await _deliveries(wh, account, endpoint_id)
    return bool(deliveries) and all(d["status"] == status for d in deliveries)


async def test_gone_disables_the_endpoint(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(410), webhooks()
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await wh.end_call("acme", "call_gone")
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "failed"))
        await wh.end_call("acme", "call_after")  # nothing is queued for a disabled endpoint
        await asyncio.sleep(0.2)
    assert len(rx.requests) == 1
    disabled = await wh.repo.get_endpoint("acme", endpoint.id)
    assert disabled is not None
    assert disabled.disabled_at is not None
    assert "410" in (disabled.disabled_reason or "")
    [delivery] = await _deliveries(wh, "acme", endpoint.id)
    assert delivery["attempts"][0]["result"] == "gone"


async def test_gives_up_after_the_deadline(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(default=500), webhooks(give_up=2.0)  # retries every 0.05 s: many before it gives up, even on a loaded machine
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await wh.end_call("acme", "call_fail")
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "failed"))
    [delivery] = await _deliveries(wh, "acme", endpoint.id)
    assert delivery["attempts"][-1]["result"] == "failed"
    assert delivery["attempts"][-1]["next_attempt_at"] is None
    assert all(a["result"] == "retry" for a in delivery["attempts"][:-1])
    assert len(rx.requests) == len(delivery["attempts"]) >= 2
    assert delivery["next_attempt_at"] is None


async def test_a_crash_mid_delivery_is_retried_after_the_lease(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    rx, wh = await receiver(), webhooks(lease_s=0.3)
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await wh.end_call("acme", "call_crash")
    [claimed] = await wh.repo.claim(10)  # a worker claims it… and dies before recording
    assert await wh.repo.claim(10) == []  # leased: nobody else takes it meanwhile
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "succeeded"))
    [request] = rx.requests
    assert request.headers["webhook-id"] == claimed.id


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    rx, wh = await receiver(), webhooks()
    endpoint, old = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    rotated = await wh.repo.rotate_secret("acme", endpoint.id)
    assert rotated is not None
    new = rotated[1]
    assert new != old
    await wh.end_call("acme", "call_rotate")
    async with wh.running():
        await wait_until(lambda: len(rx.requests) == 1)
    request = rx.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(request.body, request.headers)
    Webhook(new).verify(request.body, request.headers)
    assert await wh.repo.rotate_secret("globex", endpoint.id) is None  # not theirs


async def test_after_the_overlap_only_the_new_secret_signs(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    rx, wh = await receiver(), webhooks(secret_overlap_s=0.0)
    endpoint, old = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    rotated = await wh.repo.rotate_secret("acme", endpoint.id)
    assert rotated is not None
    await wh.end_call("acme", "call_rotate2")
    async with wh.running():
        await wait_until(lambda: len(rx.requests) == 1)
    request = rx.requests[0]
    Webhook(rotated[1]).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, request.headers)


async def test_replay_resends_with_the_same_id(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(500, default=200), webhooks(give_up=0.05)
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await wh.end_call("acme", "call_replay")
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "failed"))
        failed_at = len(rx.requests)
        [delivery] = await _deliveries(wh, "acme", endpoint.id)
        assert await wh.repo.replay("globex", delivery["message_id"]) is None
        replayed = await wh.repo.replay("acme", delivery["message_id"])
        assert replayed is not None
        assert replayed["status"] == "pending"
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "succeeded"))
    ids = {r.headers["webhook-id"] for r in rx.requests}
    assert ids == {delivery["message_id"]}
    assert len(rx.requests) > failed_at


async def test_replay_failed_since(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(default=500), webhooks(give_up=0.05)
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    for call in ("call_r1", "call_r2"):
        await wh.end_call("acme", call)
    async with wh.running():
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "failed"))
        rx.default = 200
        assert await wh.repo.replay_failed("globex", 0) == []
        assert len(await wh.repo.replay_failed("acme", 0)) == 2
        await wait_until(lambda: _status(wh, "acme", endpoint.id, "succeeded"))
    assert await wh.repo.replay_failed("acme", 0) == []


async def test_delete_removes_the_queue(receiver: MakeReceiver, webhooks: MakeWebhooks) -> None:
    rx, wh = await receiver(), webhooks()
    endpoint, _ = await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    assert not await wh.repo.delete_endpoint("globex", endpoint.id)
    await wh.end_call("acme", "call_deleted")
    assert await wh.repo.delete_endpoint("acme", endpoint.id)
    async with wh.running():
        await asyncio.sleep(0.2)
    assert rx.requests == []
    assert await wh.repo.list_endpoints("acme") == []


async def test_endpoint_limit(webhooks: MakeWebhooks) -> None:
    from callstream.webhooks.repo import EndpointLimitError

    wh = webhooks(max_endpoints=2)
    for _ in range(2):
        await wh.repo.create_endpoint("acme", "http://127.0.0.1:9/x", ["call.ended"])
    with pytest.raises(EndpointLimitError):
        await wh.repo.create_endpoint("acme", "http://127.0.0.1:9/x", ["call.ended"])
    await wh.repo.create_endpoint("globex", "http://127.0.0.1:9/x", ["call.ended"])


async def test_nothing_is_queued_without_endpoints(webhooks: MakeWebhooks) -> None:
    wh = webhooks()
    await wh.end_call("acme", "call_quiet")
    async with wh.store.engine.connect() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).select_from(wt.webhook_messages))
    assert count == 0


@pytest.mark.postgres
async def test_two_workers_never_deliver_a_message_twice(receiver: MakeReceiver, pg_database: str) -> None:
    """Two nodes' workers on one PostgreSQL database: SKIP LOCKED claims, no double delivery."""
    rx = await receiver(delay=0.01)
    stores = [SqlStore(pg_database), SqlStore(pg_database)]
    await stores[0].start()
    async with stores[0].engine.begin() as conn:
        for table in (wt.webhook_attempts, wt.webhook_messages, wt.webhook_endpoints):
            await conn.execute(table.delete())
    config = fast_config(concurrency=4, poll_s=0.005)
    repos = [WebhookRepo(s.engine, s.dialect, config) for s in stores]
    stores[0].ended_hooks.append(repos[0].enqueue_for_call)
    wh = Webhooks(stores[0], repos[0], WebhookWorker(repos[0], config))
    await repos[0].create_endpoint("acme", rx.url, ["call.ended", "transcript.completed"])
    tasks = [asyncio.create_task(WebhookWorker(r, config).run()) for r in repos]
    try:
        for i in range(30):
            await wh.end_call("acme", f"call_many_{i}")
        await wait_until(lambda: len(rx.requests) >= 60, within=20)
        await asyncio.sleep(0.3)
        async with stores[0].engine.connect() as conn:
            attempts = await conn.scalar(sa.select(sa.func.count()).select_from(wt.webhook_attempts))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stores[0].close()
        await stores[1].engine.dispose()
    ids = [r.headers["webhook-id"] for r in rx.requests]
    assert len(ids) == 60
    assert len(set(ids)) == 60
    assert attempts == 60
