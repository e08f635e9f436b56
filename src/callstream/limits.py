"""Abuse limits of one node, without I/O: open sockets per key and per account, events/s per key,
messages/s per socket.

Counting is per node. Behind a load balancer with N nodes a tenant may hold up to N times these
numbers; size them per node (docs/security.md). Every refusal carries a retry hint in seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConnectionLimiter", "IngestLimiter", "Limits", "Refusal", "TokenBucket"]

# A connection slot frees only when another socket of the tenant closes: a modest fixed hint.
CONNECTION_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a limit said no, and when trying again may succeed."""

    message: str
    retry_after_s: float


class ConnectionLimiter:
    """Open sockets per API key and per account. `acquire` reserves a slot, `release` frees it."""

    def __init__(self, per_key: int, per_account: int) -> None:
        self.per_key = per_key
        self.per_account = per_account
        self.by_key: Counter[str] = Counter()
        self.by_account: Counter[str] = Counter()

    def acquire(self, account: str, key_id: str) -> Refusal | None:
        if self.per_key and self.by_key[key_id] >= self.per_key:
            return Refusal(f"at most {self.per_key} open sockets per API key", CONNECTION_RETRY_S)
        if self.per_account and self.by_account[account] >= self.per_account:
            return Refusal(f"at most {self.per_account} open sockets per account", CONNECTION_RETRY_S)
        self.by_key[key_id] += 1
        self.by_account[account] += 1
        return None

    def release(self, account: str, key_id: str) -> None:
        for counter, name in ((self.by_key, key_id), (self.by_account, account)):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]


class TokenBucket:
    """A token bucket: `rate` tokens/s, at most `burst` saved up; one class for single messages
    (a socket's client messages) and for batches (a key's events).

    A batch of n is admitted when the bucket holds min(n, burst) tokens; it then takes all n and
    may leave the bucket in debt, so a batch larger than the burst still gets through (once the
    bucket is full) and the average rate holds. `refused_in_a_row` counts the refusals since the
    last admission, for a caller that gives up on a peer that keeps ignoring the retry hint.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate", "refused_in_a_row")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.refused_in_a_row = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, n: int = 1) -> float:
        """0.0 when the n tokens are admitted, else the seconds until they would be."""
        self._refill()
        need = min(float(n), self.burst)
        if self._tokens >= need:
            self._tokens -= n
            self.refused_in_a_row = 0
            return 0.0
        self.refused_in_a_row += 1
        return (need - self._tokens) / self.rate

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst


class IngestLimiter:
    """Events per second per API key, shared by REST publishing and every ingest socket (and,
    with `what="control requests"`, the control requests a key makes over REST)."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, what: str = "events"
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.what = what
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key_id: str, n: int) -> Refusal | None:
        if self.rate <= 0 or n <= 0:
            return None
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) > 50_000:  # forget idle keys: a full bucket is the default
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
            bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst, self._clock)
        wait = bucket.take(n)
        if wait <= 0:
            return None
        message = f"at most {self.rate:g} {self.what}/s per API key (burst {self.burst}); retry in {wait:.3f} s"
        return Refusal(message, round(wait, 3))


class Limits:
    """The node's limiters, built from Settings."""

    def __init__(
        self,
        *,
        per_key: int,
        per_account: int,
        ingest_rate: float,
        ingest_burst: int,
        control_rate: float = 5.0,
        control_burst: int = 10,
        audio_rate: float = 0.0,
        audio_burst: int = 1,
    ) -> None:
        self.connections = ConnectionLimiter(per_key, per_account)
        self.ingest = IngestLimiter(ingest_rate, ingest_burst)
        self.control = IngestLimiter(control_rate, control_burst, what="control requests")
        self.audio = IngestLimiter(audio_rate, audio_burst, what="audio frames")
