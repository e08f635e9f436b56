"""The figures of live quality from what the store sums: a call's metrics, the fleet's percentiles."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callstream.quality import (
    INTERRUPTIONS,
    MINUTE_MS,
    bucket_bounds,
    bucket_quantile,
    call_metrics,
    fleet_stats,
    histogram,
    latency_bucket,
    latency_name,
    nearest_rank,
    window_start,
)


def test_a_calls_metrics_are_exact_nearest_ranks_of_its_latencies() -> None:
    row = {"turns": 5, "latencies": "900 400 2500 700 1100", "latency_max": 2500, "interruptions": 2,
           "agent_talk_ms": 40_000, "user_talk_ms": 31_000}  # fmt: skip
    assert call_metrics(row) == {
        "turns": 5,
        "latency_ms": {"p50": 900, "p90": 2500, "max": 2500},
        "interruptions": 2,
        "agent_talk_ms": 40_000,
        "user_talk_ms": 31_000,
    }
    assert call_metrics({})["latency_ms"] is None


@given(st.integers(0, 10**9))
def test_every_latency_falls_in_its_buckets_bounds(ms: int) -> None:
    bucket = latency_bucket(ms)
    low, high = bucket_bounds(bucket)
    assert low <= ms * (1 + 1e-9)
    assert ms < high * (1 + 1e-9) or bucket == 200  # the last bucket holds everything past it


@given(st.lists(st.integers(0, 60_000), min_size=1, max_size=300), st.sampled_from([0.5, 0.9, 0.99]))
def test_a_percentile_from_buckets_is_within_five_percent_or_100_ms(latencies: list[int], q: float) -> None:
    counts = Counter(latency_name(ms) for ms in latencies)
    buckets, _ = histogram(counts.items())
    exact = nearest_rank(sorted(latencies), q)
    estimate = bucket_quantile(buckets, q)
    assert estimate is not None
    assert estimate == pytest.approx(exact, rel=0.05, abs=100)  # [0, 100 ms) is one bucket


def test_the_fleet_is_summed_per_point_and_over_the_window() -> None:
    now = 1_700_000_000_000 + 30_000
    first = window_start("15m", now)
    minutes = [
        (first, latency_name(800), 2),
        (first, INTERRUPTIONS, 1),
        (now - now % MINUTE_MS, latency_name(1_200), 1),
    ]
    calls = [("live", None, "positive", 2), ("ended", "completed", "negative", 1), ("ended", "failed", "unscored", 1)]
    stats = fleet_stats("15m", now, minutes, calls)
    assert (stats["since"], stats["until"]) == (first, now)
    assert (stats["live_calls"], stats["calls"], stats["turns"], stats["interruptions"]) == (2, 4, 3, 1)
    assert stats["interruptions_per_call"] == 0.25
    assert stats["ended"] == {"completed": 1, "failed": 1}
    assert stats["sentiment"] == {"positive": 2, "neutral": 0, "negative": 1, "unscored": 1}
    assert len(stats["series"]) == 15
    assert [p["turns"] for p in stats["series"]] == [2] + [0] * 13 + [1]
    assert stats["series"][1]["latency_ms"] is None
    assert stats["latency_ms"]["p50"] == pytest.approx(800, rel=0.05)
    assert stats["latency_ms"]["p99"] == pytest.approx(1_200, rel=0.05)
