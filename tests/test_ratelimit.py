from __future__ import annotations

from callstream.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50, burst=100, clock=clock)
    assert sum(bucket.allow() for _ in range(150)) == 100
    assert bucket.refused_in_a_row == 50
    clock.now += 1.0
    assert sum(bucket.allow() for _ in range(100)) == 50
    assert 0 < bucket.retry_after_s() <= 0.02
