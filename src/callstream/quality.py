"""The figures of live quality, from what the store sums (no I/O): a call's metrics and the fleet's.

A call's row keeps its turns' latencies, so its p50 and p90 are exact (nearest rank). The fleet's
percentiles come from `quality_minutes`, which counts turns per minute in latency buckets 5 %
wide (`latency_bucket`): summing a window's buckets costs the same however many turns it held,
and a percentile read from them is within 5 % of the exact one (100 ms below 100 ms). docs/quality.md says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

MINUTE_MS: Final = 60_000
INTERRUPTIONS: Final = "i"  # `quality_minutes.name` of the interruptions of a minute
_LATENCY: Final = "l"  # + the bucket: turns whose latency falls in it

# Latency buckets: [0, 100 ms), then each 5 % wider than the last, up to the last one (≈ 2.7 h).
_FIRST_MS: Final = 100.0
_GROWTH: Final = 1.05
_LAST_BUCKET: Final = 200

#: Fixed windows of GET /v1/stats, and the width of each point of its series.
WINDOWS: Final = {"15m": (15 * MINUTE_MS, MINUTE_MS), "1h": (3_600_000, MINUTE_MS), "24h": (86_400_000, 30 * MINUTE_MS)}


def minute_of(ts: int) -> int:
    return ts - ts % MINUTE_MS


def latency_bucket(ms: int) -> int:
    """The bucket a latency falls in: 0 below 100 ms, then one per 5 % of growth."""
    if ms < _FIRST_MS:
        return 0
    return min(_LAST_BUCKET, 1 + int(math.log(ms / _FIRST_MS) / math.log(_GROWTH)))


def bucket_bounds(bucket: int) -> tuple[float, float]:
    if bucket == 0:
        return 0.0, _FIRST_MS
    return _FIRST_MS * _GROWTH ** (bucket - 1), _FIRST_MS * _GROWTH**bucket


def latency_name(ms: int) -> str:
    return f"{_LATENCY}{latency_bucket(ms)}"


def nearest_rank(ordered: Sequence[int], q: float) -> int:
    """The q-quantile of sorted values by the nearest-rank method: always one of them."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def parse_latencies(text: str) -> list[int]:
    return sorted(int(value) for value in text.split())


def call_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """A call's `metrics` (GET /v1/calls/{id}, the `call.ended` webhook) from its calls row."""
    measured = parse_latencies(row.get("latencies") or "")
    latency = None
    if measured:
        latency = {
            "p50": nearest_rank(measured, 0.5),
            "p90": nearest_rank(measured, 0.9),
            "max": max(int(row.get("latency_max") or 0), measured[-1]),
        }
    return {
        "turns": int(row.get("turns") or 0),
        "latency_ms": latency,
        "interruptions": int(row.get("interruptions") or 0),
        "agent_talk_ms": int(row.get("agent_talk_ms") or 0),
        "user_talk_ms": int(row.get("user_talk_ms") or 0),
    }


def histogram(counts: Iterable[tuple[str, int]]) -> tuple[dict[int, int], int]:
    """`quality_minutes` names and counts → turns per latency bucket, and interruptions."""
    buckets: dict[int, int] = {}
    interruptions = 0
    for name, n in counts:
        if name == INTERRUPTIONS:
            interruptions += int(n)
        elif name.startswith(_LATENCY) and name[1:].isdigit():
            bucket = int(name[1:])
            buckets[bucket] = buckets.get(bucket, 0) + int(n)
    return buckets, interruptions


def bucket_quantile(buckets: Mapping[int, int], q: float) -> int | None:
    """The q-quantile of the turns counted in `buckets`: its rank's place within its bucket."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(buckets):
        n = buckets[bucket]
        if seen + n >= rank:
            low, high = bucket_bounds(bucket)
            return round(low + (high - low) * (rank - seen - 0.5) / n)
        seen += n
    raise AssertionError("unreachable: the ranks add up to the total")


def latency_summary(buckets: Mapping[int, int], quantiles: Sequence[tuple[str, float]]) -> dict[str, int] | None:
    if not buckets:
        return None
    return {name: value for name, q in quantiles if (value := bucket_quantile(buckets, q)) is not None}


def fleet_stats(
    window: str,
    now: int,
    minutes: Iterable[tuple[int, str, int]],
    calls: Iterable[tuple[str, str | None, str, int]],
) -> dict[str, Any]:
    """GET /v1/stats from what the store summed over the window (`SqlStore.quality_window`):
    `minutes` as (point, name, n), `calls` as (status, end_status, sentiment label, count) groups
    of the calls live now and of those that ended in the window."""
    step = WINDOWS[window][1]
    since = window_start(window, now)
    points: dict[int, list[tuple[str, int]]] = {at: [] for at in range(since - since % step, now + 1, step)}
    for at, name, n in minutes:
        points.setdefault(at, []).append((name, n))
    every: list[tuple[str, int]] = [pair for counts in points.values() for pair in counts]
    buckets, interruptions = histogram(every)
    series = []
    for at in sorted(points):
        point_buckets, point_interruptions = histogram(points[at])
        series.append({
            "at": at,
            "turns": sum(point_buckets.values()),
            "latency_ms": latency_summary(point_buckets, (("p50", 0.5), ("p90", 0.9))),
            "interruptions": point_interruptions,
        })
    live = in_window = 0
    sentiment = dict.fromkeys(("positive", "neutral", "negative", "unscored"), 0)
    ended: dict[str, int] = {}
    for status, end_status, label, count in calls:
        in_window += count
        if status == "live":
            live += count
        else:
            ended[end_status or "unknown"] = ended.get(end_status or "unknown", 0) + count
        sentiment[label] = sentiment.get(label, 0) + count
    return {
        "window": window,
        "since": since,
        "until": now,
        "live_calls": live,
        "calls": in_window,
        "turns": sum(buckets.values()),
        "latency_ms": latency_summary(buckets, (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))),
        "interruptions": interruptions,
        "interruptions_per_call": round(interruptions / in_window, 3) if in_window else 0.0,
        "sentiment": sentiment,
        "ended": dict(sorted(ended.items())),
        "series": series,
    }


def window_start(window: str, now: int) -> int:
    """The first minute a window holds: its last minutes, the current one included."""
    span, _ = WINDOWS[window]
    return minute_of(now) - span + MINUTE_MS
