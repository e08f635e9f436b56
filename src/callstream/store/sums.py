"""What a commit's events add to their calls' rows and to the account's minutes, on every write path.

The SQLAlchemy commit (`sql.py`), PostgreSQL's one statement (`pg_writer.py`) and the journal
(`journal.py`, folded in its own process) all take their calls rows from `call_sums` and their
`quality_minutes` rows from `minute_rows`, so a call's figures never depend on which path its
events took. The turn figures come from what the broker's tracker measured (`Event.marks`); an
event rebuilt from its frame has only what its data carries (latency and interruption).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from callstream.events import AGENT_STATE, FINAL, Event
from callstream.quality import INTERRUPTIONS, latency_name, minute_of
from callstream.store.chunks import CallEvents, sentiment_score
from callstream.store.rows import SUM_COLUMNS, merge_minute_rows
from callstream.turns import Marks

MinuteRow = tuple[str, int, str, int]  # rows.MINUTE_COLUMNS


def marks_of(event: Event) -> Marks | None:
    if event.marks is not None:
        return event.marks
    return Marks.of_data(event.type, event.data) if event.type == AGENT_STATE else None


def call_sums(held: Sequence[Event]) -> dict[str, Any]:
    """What one call's events of a commit add to its row: `rows.SUM_COLUMNS`, in that order."""
    score_sum, score_n = 0.0, 0
    turns = latency_max = interruptions = agent_ms = user_ms = 0
    last_ts = 0
    latencies: list[str] = []
    for event in held:
        last_ts = max(last_ts, event.ts)
        if event.type == FINAL and (score := sentiment_score(event)) is not None:
            score_sum += score
            score_n += 1
        marks = event.marks
        if marks is None and (event.type != AGENT_STATE or (marks := marks_of(event)) is None):
            continue
        if marks.latency_ms is not None:
            turns += 1
            latency_max = max(latency_max, marks.latency_ms)
            latencies.append(str(marks.latency_ms))
        interruptions += marks.interrupted
        agent_ms += marks.agent_ms
        user_ms += marks.user_ms
    values = (score_sum, score_n, last_ts, turns, latency_max, " ".join(latencies), interruptions, agent_ms, user_ms)
    return dict(zip(SUM_COLUMNS, values, strict=True))


def minute_rows(grouped: CallEvents) -> list[MinuteRow]:
    """The commit's turns (by latency bucket) and interruptions, per account and minute, one row
    per key."""
    merged: dict[tuple[str, int, str], int] = {}
    found: list[MinuteRow] = []
    for (account, _), held in grouped.items():
        for event in held:
            marks = marks_of(event)
            if marks is None:
                continue
            minute = minute_of(event.ts)
            if marks.latency_ms is not None:
                found.append((account, minute, latency_name(marks.latency_ms), 1))
            if marks.interrupted:
                found.append((account, minute, INTERRUPTIONS, 1))
    if not found:
        return []
    merge_minute_rows(merged, found)
    return [(account, minute, name, n) for (account, minute, name), n in merged.items()]
