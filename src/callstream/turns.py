"""Turns measured from a call's events as they are sequenced (no I/O, no clock).

The broker runs one `TurnTracker` per call over the events it sequences, with their server
`ts`, and writes what a step measured into the event before anyone sees it: `latency_ms` on the
`agent.state` `speaking` that answers a user final, `interrupted: true` on the `agent.state`
that leaves `speaking` after the user spoke over the agent. The figures are then part of the
event, the same live, on replay, over REST and in webhooks. The Redis broker runs the same
steps inside its sequencing script (broker/redis.py), on the same `role` letters; the broker
contract tests hold the two to the same scripted calls. docs/quality.md defines the edge cases.

A step also measures talk time, kept beside the event (`Marks`, not on the wire) for the call's
row: the agent's from `speaking` to the state that leaves it (or the call's end), the user's
from the first partial of an utterance to its final (or the call's end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from callstream.events import AGENT_STATE, ENDED, FINAL, PARTIAL

# What the tracker needs to know of an event, one letter each (the Redis script reads them too).
USER_PARTIAL: Final = "p"
USER_FINAL: Final = "f"
SPEAKING: Final = "s"
NOT_SPEAKING: Final = "l"  # listening or thinking
ENDS: Final = "e"
OTHER: Final = ""

#: Fields the server writes into events; a producer may not publish them (events.check_payload).
LATENCY: Final = "latency_ms"
INTERRUPTED: Final = "interrupted"


def role(event_type: str, data: dict[str, Any]) -> str:
    """The event's part in a turn: one of the letters above (`OTHER` for the rest)."""
    if event_type == AGENT_STATE:
        return SPEAKING if data.get("state") == "speaking" else NOT_SPEAKING
    if event_type in (PARTIAL, FINAL):
        if data.get("speaker") != "user":
            return OTHER
        return USER_PARTIAL if event_type == PARTIAL else USER_FINAL
    return ENDS if event_type == ENDED else OTHER


@dataclass(slots=True, frozen=True)
class Marks:
    """What one event measured: written into it (`latency_ms`, `interrupted`) or summed into its
    call's row (talk time)."""

    latency_ms: int | None = None
    interrupted: bool = False
    agent_ms: int = 0
    user_ms: int = 0

    def write_into(self, data: dict[str, Any]) -> None:
        """Put the event's own figures into its data (appended last: the Redis script appends
        the same text to the JSON it was given)."""
        if self.latency_ms is not None:
            data[LATENCY] = self.latency_ms
        if self.interrupted:
            data[INTERRUPTED] = True

    @classmethod
    def of_data(cls, event_type: str, data: dict[str, Any]) -> Marks | None:
        """The figures an event carries in its data (an event rebuilt from its frame)."""
        if event_type != AGENT_STATE or (LATENCY not in data and INTERRUPTED not in data):
            return None
        latency = data.get(LATENCY)
        if not (isinstance(latency, int) and not isinstance(latency, bool)):
            latency = None
        interrupted = data.get(INTERRUPTED) is True
        return None if latency is None and not interrupted else cls(latency, interrupted)


class TurnTracker:
    """One call's turn state; `step` takes its events in seq order, with their server ts.

    `speaking_since`: when the agent started speaking (None while it is not); `answer_from`: the
    ts of the latest user final the agent has not answered yet; `overlap`: the user spoke while
    the agent was speaking; `user_since`: the ts of the user's first partial of the utterance in
    progress.
    """

    __slots__ = ("answer_from", "overlap", "speaking_since", "user_since")

    def __init__(self) -> None:
        self.speaking_since: int | None = None
        self.answer_from: int | None = None
        self.overlap = False
        self.user_since: int | None = None

    def step(self, part: str, ts: int) -> Marks | None:
        """Advance over one event (`part`: its `role`); what it measured, or None."""
        if part == USER_PARTIAL:
            if self.user_since is None:
                self.user_since = ts
            if self.speaking_since is not None:
                self.overlap = True
            return None
        if part == USER_FINAL:
            since = ts if self.user_since is None else self.user_since
            self.user_since = None
            self.answer_from = ts
            if self.speaking_since is not None:
                self.overlap = True
            return Marks(user_ms=ts - since) if ts > since else None
        if part == SPEAKING:
            if self.speaking_since is not None:
                return None  # still speaking: not a new turn
            self.speaking_since, self.overlap = ts, False
            if self.answer_from is None:
                return None  # the agent spoke first: nothing to answer
            latency, self.answer_from = max(0, ts - self.answer_from), None
            return Marks(latency_ms=latency)
        if part in (NOT_SPEAKING, ENDS):
            agent_ms = user_ms = 0
            interrupted = False
            if self.speaking_since is not None:
                agent_ms = max(0, ts - self.speaking_since)
                interrupted = self.overlap and part == NOT_SPEAKING
                self.speaking_since, self.overlap = None, False
            if part == ENDS and self.user_since is not None:
                user_ms, self.user_since = max(0, ts - self.user_since), None
            if agent_ms or user_ms or interrupted:
                return Marks(None, interrupted, agent_ms, user_ms)
        return None
