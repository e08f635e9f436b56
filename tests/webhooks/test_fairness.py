"""One account's hanging endpoints never hold back another account's webhooks (issue 22).

A hanging endpoint accepts the connection and never answers, so each of its attempts holds a
slot of the node's concurrency for a whole timeout. The worker caps the attempts one account
has in flight, and claims round-robin across accounts, least busy first: another account's
delivery starts within one poll interval plus at most one attempt's timeout, while the hanging
account still gets every attempt its retry schedule asks for. Real store (SQLite and
PostgreSQL), real loopback receivers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

from tests.webhooks.conftest import Receiver, Webhooks, wait_until

MakeReceiver = Callable[..., Awaitable[Receiver]]
MakeWebhooks = Callable[..., Webhooks]

MARGIN_S = 0.75  # store round trips and scheduling on a busy test machine


async def _queue(wh: Webhooks, account: str, calls: int) -> None:
    for i in range(calls):
        await wh.end_call(account, f"{account}_call_{i}")


async def _latency_of_next_delivery(wh: Webhooks, account: str, rx: Receiver, within: float) -> float:
    """Queue one call's webhook for `account`; seconds until `rx` receives it (fails past `within`)."""
    queued = time.monotonic()
    await wh.end_call(account, f"{account}_call_now")
    try:
        await wait_until(lambda: bool(rx.requests), within=within)
    except AssertionError:
        raise AssertionError(
            f"{account}'s webhook had not arrived {within:.1f} s after it was queued"
        ) from None
    latency = rx.requests[0].at - queued
    print(f"{account}'s webhook arrived {latency:.3f} s after its call ended")
    return latency


async def test_an_account_with_hanging_endpoints_does_not_delay_another(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    hanging, good = await receiver(default="hang"), await receiver()
    wh = webhooks(timeout_s=1.0, poll_s=0.1, concurrency=8, concurrency_per_account=4)
    await wh.repo.create_endpoint("acme", hanging.url, ["call.ended"])
    await wh.repo.create_endpoint("globex", good.url, ["call.ended"])
    await _queue(wh, "acme", 50)
    async with wh.running():
        await wait_until(lambda: hanging.open >= 4)
        latency = await _latency_of_next_delivery(wh, "globex", good, within=1.1 + MARGIN_S)
        assert hanging.peak == 4  # the cap: acme never held more than its share of the node
    # A free slot was there for globex: it did not even wait for one of acme's timeouts.
    assert latency < 1.0, f"globex's delivery took {latency:.2f} s"


async def test_the_next_free_slot_goes_to_the_account_waiting_its_turn(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    """Two hanging accounts fill the node (no cap below the node's concurrency): a third account
    gets the first slot that frees up, ahead of their older backlogs."""
    acme, initech, good = await receiver(default="hang"), await receiver(default="hang"), await receiver()
    wh = webhooks(timeout_s=2.0, poll_s=0.1, concurrency=4, concurrency_per_account=4)
    await wh.repo.create_endpoint("acme", acme.url, ["call.ended"])
    await wh.repo.create_endpoint("initech", initech.url, ["call.ended"])
    await wh.repo.create_endpoint("globex", good.url, ["call.ended"])
    await _queue(wh, "acme", 30)
    await _queue(wh, "initech", 30)
    async with wh.running():
        await wait_until(lambda: acme.open + initech.open == 4)
        assert acme.open == initech.open == 2  # round-robin claims share the node out
        # The first slot frees within the 2 s timeout; a globex behind one more round of the
        # hanging backlogs would wait past 4.1 s: a margin under 2 s still tells them apart.
        bound = 0.1 + 2.0 + 1.75
        latency = await _latency_of_next_delivery(wh, "globex", good, within=bound)
    assert latency < bound, f"globex's delivery took {latency:.2f} s"


async def test_the_hanging_account_still_gets_every_attempt(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    """Fairness caps acme at its share; it does not starve it: each of its messages is tried and
    retried on schedule while a busy neighbour is served. The neighbour answers well within the
    timeout: an attempt that timed out frees its slot while the receiver still holds the request,
    which a loaded machine (a 0.2 s answer taking over 0.3 s) counted as a third at once."""
    hanging, slow = await receiver(default="hang"), await receiver(delay=0.05)
    wh = webhooks(timeout_s=0.3, poll_s=0.02, concurrency=8, concurrency_per_account=2)
    acme_endpoint, _ = await wh.repo.create_endpoint("acme", hanging.url, ["call.ended"])
    globex_endpoint, _ = await wh.repo.create_endpoint("globex", slow.url, ["call.ended"])
    await _queue(wh, "acme", 6)
    await _queue(wh, "globex", 20)

    async def acme_tried_twice() -> bool:
        deliveries = await wh.repo.deliveries("acme", acme_endpoint.id, limit=100)
        return len(deliveries) == 6 and all(d["attempt_count"] >= 2 for d in deliveries)

    async def globex_delivered() -> bool:
        deliveries = await wh.repo.deliveries("globex", globex_endpoint.id, limit=100)
        return [d["status"] for d in deliveries] == ["succeeded"] * 20

    async with wh.running():
        await wait_until(acme_tried_twice, within=10)
        await wait_until(globex_delivered, within=10)
    assert hanging.peak <= 2
    assert slow.peak <= 2
    attempts = [
        a for d in await wh.repo.deliveries("acme", acme_endpoint.id, limit=100) for a in d["attempts"]
    ]
    assert {a["error"] for a in attempts} == {"timeout after 0.3 s"}
    assert {a["result"] for a in attempts} == {"retry"}


async def test_claims_take_turns_across_accounts(webhooks: MakeWebhooks) -> None:
    """A claim gives each account its turn (oldest first within it), least busy account first,
    and never more than an account's free share of the per-account cap."""
    wh = webhooks(concurrency_per_account=3)
    for account, calls in (("acme", 10), ("globex", 2), ("initech", 1)):
        await wh.repo.create_endpoint(account, "http://127.0.0.1:9/x", ["call.ended"])
        await _queue(wh, account, calls)
    # acme already has 2 of its 3 in flight on this node: the accounts with none go first.
    first = await wh.repo.claim(3, busy={"acme": 2})
    assert Counter(m.account for m in first) == {"globex": 2, "initech": 1}
    # Only acme is left: it gets up to the cap, oldest first, and nothing more while at the cap.
    second = await wh.repo.claim(5)
    assert sorted(m.call_id for m in second) == ["acme_call_0", "acme_call_1", "acme_call_2"]
    assert await wh.repo.claim(5, busy={"acme": 3}) == []
    third = await wh.repo.claim(5, busy={"acme": 1})
    assert sorted(m.call_id for m in third) == ["acme_call_3", "acme_call_4"]


async def test_the_cap_does_not_throttle_an_account_to_one_claim_per_poll(
    receiver: MakeReceiver, webhooks: MakeWebhooks
) -> None:
    """An account at its cap with more due is claimed again as soon as one of its attempts ends,
    not at the next poll: alone on the node, a fast endpoint gets its backlog at full speed.
    Throttled to a claim per poll, its 20 would take ten polls (45 s or more); the bound leaves a
    loaded CI machine room and still tells the two apart."""
    rx = await receiver()
    wh = webhooks(poll_s=5.0, concurrency=8, concurrency_per_account=2)
    await wh.repo.create_endpoint("acme", rx.url, ["call.ended"])
    await _queue(wh, "acme", 20)
    started = time.monotonic()
    async with wh.running():
        await wait_until(lambda: len(rx.requests) == 20, within=20.0)
    elapsed = time.monotonic() - started
    assert rx.peak <= 2
    assert elapsed < 20.0, f"20 deliveries took {elapsed:.2f} s"
