"""The retry schedule, as pure functions of the attempt number and a random source.

docs/webhooks.md, Delivery: after a failed attempt the next comes 5 s, 30 s, 2 min, 10 min, 30 min, 1 h
later, then every 3 h, until 24 h have passed since the message was queued; then it is failed.
Each delay is jittered by ±20 % so that endpoints that failed together (an outage) are not
hit again by a synchronized wave of retries the moment they come back.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_DELAYS", "RetrySchedule", "parse_delays", "parse_duration"]

DEFAULT_DELAYS: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")


def parse_duration(text: str) -> float:
    """`"90"`, `"90s"`, `"2m"`, `"1.5h"` → seconds; a ValueError names what was wrong."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 5s, 2m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_delays(text: str) -> tuple[float, ...]:
    """A comma-separated list of durations, e.g. `"5s,30s,2m,10m,30m,1h"`."""
    delays = tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if not delays:
        raise ValueError("the retry schedule needs at least one delay")
    return delays


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When to try a message again, and when to stop.

    `delays[i]` is the wait after the (i+1)-th failed attempt; past the list, `repeat` is used
    for every further retry. A retry that would start after `give_up_after` seconds from the
    message's creation is not scheduled: the message is failed instead.
    """

    delays: tuple[float, ...] = DEFAULT_DELAYS
    repeat: float = 3 * 3600.0
    give_up_after: float = 24 * 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.delays or any(d < 0 for d in self.delays) or self.repeat <= 0:
            raise ValueError("retry delays must be non-negative and repeat positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def base_delay(self, failed_attempts: int) -> float:
        """The un-jittered wait after `failed_attempts` (≥ 1) attempts have failed."""
        if failed_attempts < 1:
            raise ValueError("failed_attempts starts at 1")
        index = failed_attempts - 1
        return self.delays[index] if index < len(self.delays) else self.repeat

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """The jittered wait: base × uniform(1 - jitter, 1 + jitter)."""
        factor = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return self.base_delay(failed_attempts) * factor

    def give_up_at(self, created_at_ms: int) -> int:
        return created_at_ms + int(self.give_up_after * 1000)

    def next_attempt_at(
        self,
        failed_attempts: int,
        now_ms: int,
        give_up_at_ms: int,
        rng: random.Random | None = None,
    ) -> int | None:
        """The time (ms) of the next attempt, or None when the message should be failed."""
        at = now_ms + int(self.delay(failed_attempts, rng) * 1000)
        return None if at > give_up_at_ms else at

    def planned(self) -> list[float]:
        """The un-jittered retry times (s after creation), for docs and `--help` output."""
        times: list[float] = []
        elapsed, n = 0.0, 1
        while True:
            elapsed += self.base_delay(n)
            if elapsed > self.give_up_after:
                return times
            times.append(elapsed)
            n += 1
