"""The delivery worker: claims due outbox rows, POSTs them signed, records every attempt.

Any number of workers (one per node) may run against one database: a message is claimed
under a lease before it is sent, so two workers never send it at the same time; a worker that
dies mid-delivery leaves a lease that simply runs out, and the message is sent again. That
makes delivery at-least-once: the receiver dedupes on `webhook-id`, which never changes
between attempts of one message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from datetime import UTC, datetime

import httpx
from prometheus_client import Counter, Histogram
from standardwebhooks.webhooks import Webhook

from callstream.outages import OutageLog
from callstream.store import StoreUnavailableError
from callstream.webhooks.config import WebhookConfig
from callstream.webhooks.repo import Attempt, ClaimedMessage, WebhookRepo, now_ms
from callstream.webhooks.ssrf import UnsafeURLError, check_url, pinned

__all__ = ["DELIVERIES", "USER_AGENT", "WebhookWorker", "sign"]

log = logging.getLogger("callstream.webhooks")

USER_AGENT = "callstream-webhooks/1"

DELIVERIES = Counter(
    "callstream_webhook_deliveries",
    "Webhook delivery attempts by result (succeeded, retry, failed = gave up, gone = 410)",
    ["result"],
)
DELIVERY_SECONDS = Histogram(
    "callstream_webhook_delivery_seconds",
    "Latency of webhook delivery attempts, until the response status or the error",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def sign(message_id: str, timestamp: datetime, body: str, secrets: list[str]) -> str:
    """The `webhook-signature` value: one `v1,<sig>` per secret, space-separated (rotation)."""
    return " ".join(Webhook(s).sign(message_id, timestamp, body) for s in secrets)


class WebhookWorker:
    """One node's deliverer: at most `concurrency` attempts in flight, and at most
    `concurrency_per_account` of them for one account, so an account whose endpoints hang
    holds only its own share of the node while the others' deliveries go on."""

    def __init__(
        self,
        repo: WebhookRepo,
        config: WebhookConfig,
        *,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.repo = repo
        self.config = config
        self._client = client
        self._own_client = client is None
        self._rng = rng or random.Random()
        self._wakeup = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()
        self._busy: collections.Counter[str] = collections.Counter()  # attempts in flight per account
        self._outage = OutageLog(log, "the webhook worker's store access")

    def wake_soon(self, delay_s: float = 0.05) -> None:
        """Look for work shortly (a call just ended) instead of at the next poll."""
        with contextlib.suppress(RuntimeError):  # no running loop: polling finds it anyway
            asyncio.get_running_loop().call_later(delay_s, self._wakeup.set)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False,  # no proxy from the environment: it would bypass the SSRF check
                follow_redirects=False,  # a redirect is a failed attempt, never a new target
                limits=httpx.Limits(max_connections=self.config.concurrency),
                headers={"user-agent": USER_AGENT},
            )
        return self._client

    async def run(self) -> None:
        """Claim and deliver until cancelled; a store outage only delays the next claim."""
        try:
            while True:
                self._wakeup.clear()  # before the claim: a wake-up during it is not lost
                free = self.config.concurrency - len(self.inflight)
                claimed = await self._claim(free) if free > 0 else []
                for message in claimed:
                    self._spawn(message)
                await self._wait(full=bool(claimed) and len(claimed) == free)
        finally:
            for task in list(self.inflight):
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client this worker created (not one it was given)."""
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _claim(self, limit: int) -> list[ClaimedMessage]:
        try:
            claimed = await self.repo.claim(limit, busy=self._busy)
        except StoreUnavailableError as exc:  # /healthz reports it; try again next poll
            self._outage.failed(exc)
            return []
        self._outage.recovered()
        return claimed

    def _spawn(self, message: ClaimedMessage) -> None:
        task = asyncio.create_task(self._deliver_logged(message), name=f"webhook-{message.id}")
        self.inflight.add(task)
        self._busy[message.account] += 1
        task.add_done_callback(self.inflight.discard)
        task.add_done_callback(lambda _: self._release(message.account))

    def _release(self, account: str) -> None:
        """An attempt ended: its account may take another turn, so look for due work now."""
        self._busy[account] -= 1
        if self._busy[account] <= 0:
            del self._busy[account]
        self._wakeup.set()

    async def _wait(self, *, full: bool) -> None:
        """Full: until a slot frees up. Otherwise: until the poll interval or a wake-up (a call
        ended, or an attempt did: an account held back by its cap may have more due)."""
        if full:
            await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.poll_s):
                await self._wakeup.wait()

    async def run_once(self) -> int:
        """Claim what is due and deliver it all (tests and the CLI's one-shot use)."""
        claimed = await self.repo.claim(self.config.concurrency)
        await asyncio.gather(*(self._deliver_logged(m) for m in claimed))
        return len(claimed)

    async def _deliver_logged(self, message: ClaimedMessage) -> None:
        try:
            await self.deliver(message)
        except StoreUnavailableError as exc:  # not recorded: the lease runs out, it is sent again
            self._outage.failed(exc)

    async def deliver(self, message: ClaimedMessage) -> Attempt | None:
        """One attempt of one claimed message, recorded before returning."""
        endpoint = await self.repo.get_endpoint(None, message.endpoint_id)
        if endpoint is None or endpoint.disabled_at is not None:
            await self.repo.abandon(message, "endpoint disabled or removed")
            return None
        attempted_at = now_ms()
        started = time.perf_counter()
        status, error = await self._post(message, endpoint.url, endpoint.signing_secrets(attempted_at))
        latency = time.perf_counter() - started
        attempt = self._outcome(message, attempted_at, status, error, int(latency * 1000))
        DELIVERIES.labels(attempt.result).inc()
        DELIVERY_SECONDS.observe(latency)
        log.info(
            "webhook %s attempt %d to endpoint %s: %s",
            message.id,
            message.attempts + 1,
            message.endpoint_id,
            attempt.result if error is None else f"{attempt.result} ({error})",
        )
        await self.repo.record(message, attempt)
        return attempt

    async def _post(
        self, message: ClaimedMessage, url: str, secrets: list[str]
    ) -> tuple[int | None, str | None]:
        """POST once; (status code, None) or (code or None, error text). Never raises."""
        timeout = self.config.timeout_s
        try:
            checked = await check_url(url, allow_private=self.config.allow_private)
            target, host_header, extensions = pinned(checked)
            moment = datetime.now(tz=UTC)
            headers = {
                **host_header,
                "content-type": "application/json",
                "webhook-id": message.id,
                "webhook-timestamp": str(int(moment.timestamp())),
                "webhook-signature": sign(message.id, moment, message.payload, secrets),
            }
            async with asyncio.timeout(timeout):
                request = self._http().build_request(
                    "POST",
                    target,
                    content=message.payload.encode(),
                    headers=headers,
                    extensions=extensions,
                    timeout=timeout,
                )
                response = await self._http().send(request, stream=True)
                await response.aclose()  # the status is all we need; do not read a large body
        except UnsafeURLError as exc:
            return None, f"refused: {exc}"
        except (TimeoutError, httpx.TimeoutException):
            return None, f"timeout after {timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        code = response.status_code
        return code, None if 200 <= code < 300 else f"HTTP {code}"

    def _outcome(
        self,
        message: ClaimedMessage,
        attempted_at: int,
        status: int | None,
        error: str | None,
        latency_ms: int,
    ) -> Attempt:
        if error is None:
            return Attempt(attempted_at, status, latency_ms, None, "succeeded", None)
        if status == 410:
            return Attempt(attempted_at, status, latency_ms, error, "gone", None)
        next_at = self.config.schedule.next_attempt_at(
            message.attempts + 1, now_ms(), message.give_up_at, self._rng
        )
        result = "failed" if next_at is None else "retry"
        return Attempt(attempted_at, status, latency_ms, error, result, next_at)
