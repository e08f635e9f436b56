"""The retry schedule of docs/protocol.md, Webhooks, as pure arithmetic."""

from __future__ import annotations

import random

import pytest

from callstream.webhooks.schedule import RetrySchedule, parse_delays, parse_duration


def test_default_delays_follow_the_protocol() -> None:
    schedule = RetrySchedule()
    expected = [5, 30, 120, 600, 1800, 3600, 10800, 10800]
    assert [schedule.base_delay(n) for n in range(1, 9)] == expected


def test_jitter_stays_within_twenty_percent_and_varies() -> None:
    schedule, rng = RetrySchedule(), random.Random(7)
    delays = [schedule.delay(2, rng) for _ in range(500)]
    assert all(24.0 <= d <= 36.0 for d in delays)
    assert max(delays) - min(delays) > 8  # actually spread, not a constant


def test_retries_stop_after_twenty_four_hours() -> None:
    planned = RetrySchedule().planned()
    assert planned[:3] == [5, 35, 155]
    assert planned[-1] <= 86400 < planned[-1] + 10800
    # 6 fixed delays (~1 h 43 min) then every 3 h until 24 h: 7 more
    assert len(planned) == 13


def test_next_attempt_is_none_past_the_give_up_time() -> None:
    schedule = RetrySchedule(jitter=0)
    created = 1_000_000
    give_up = schedule.give_up_at(created)
    assert give_up == created + 86_400_000
    assert schedule.next_attempt_at(1, created, give_up) == created + 5000
    assert schedule.next_attempt_at(9, give_up - 60_000, give_up) is None


def test_configurable_schedule() -> None:
    schedule = RetrySchedule(delays=parse_delays("100ms, 1s,2m"), repeat=1.0, give_up_after=2.0)
    assert schedule.delays == (0.1, 1.0, 120.0)
    assert schedule.planned() == [0.1, 1.1]


@pytest.mark.parametrize(
    ("text", "seconds"), [("5", 5.0), ("5s", 5.0), ("2m", 120.0), ("1.5h", 5400.0), ("1d", 86400.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5s", "5 weeks"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_invalid_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetrySchedule(jitter=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        RetrySchedule(delays=())
    with pytest.raises(ValueError, match="at least one"):
        parse_delays(" , ")
