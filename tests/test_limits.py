"""The abuse limiters, fed by hand with a fake clock."""

from __future__ import annotations

from callstream.limits import ConnectionLimiter, IngestLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_connections_per_key_and_per_account() -> None:
    limiter = ConnectionLimiter(per_key=2, per_account=3)
    assert limiter.acquire("acme", "k1") is None
    assert limiter.acquire("acme", "k1") is None
    refusal = limiter.acquire("acme", "k1")
    assert refusal is not None
    assert "per API key" in refusal.message
    assert refusal.retry_after_s > 0
    assert limiter.acquire("acme", "k2") is None
    refused = limiter.acquire("acme", "k3")
    assert refused is not None
    assert "per account" in refused.message
    assert limiter.acquire("globex", "k9") is None  # other tenants are not affected
    limiter.release("acme", "k1")
    assert limiter.acquire("acme", "k3") is None
    for key in ("k1", "k2", "k3"):
        limiter.release("acme", key)
    limiter.release("globex", "k9")
    assert not limiter.by_key
    assert not limiter.by_account  # nothing left behind


def test_zero_means_no_connection_limit() -> None:
    limiter = ConnectionLimiter(per_key=0, per_account=0)
    assert all(limiter.acquire("acme", "k") is None for _ in range(1000))


def test_bucket_admits_bursts_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert bucket.take(20) == 0
    wait = bucket.take(1)
    assert 0.09 < wait <= 0.1
    clock.now += 0.5
    assert bucket.take(5) == 0
    assert bucket.take(1) > 0


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert bucket.take(50) == 0  # full bucket: admitted, 45 in debt
    assert bucket.take(1) > 4.5
    clock.now += 4.0
    assert bucket.take(1) > 0  # 40 tokens back: still 5 in debt
    clock.now += 0.7
    assert bucket.take(1) == 0


def test_bucket_admits_single_messages_and_counts_refusals_in_a_row() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50, burst=100, clock=clock)
    assert sum(bucket.take() == 0 for _ in range(150)) == 100
    assert bucket.refused_in_a_row == 50
    clock.now += 1.0
    assert sum(bucket.take() == 0 for _ in range(100)) == 50
    assert 0 < bucket.take() <= 0.02


def test_ingest_limiter_is_per_key_and_zero_disables() -> None:
    clock = Clock()
    limiter = IngestLimiter(rate=1, burst=2, clock=clock)
    assert limiter.take("k1", 2) is None
    refusal = limiter.take("k1", 1)
    assert refusal is not None
    assert refusal.retry_after_s == 1.0
    assert limiter.take("k2", 2) is None
    assert IngestLimiter(rate=0, burst=1).take("k", 10**6) is None
