"""What a commit's events add to their calls' rows and to the account's minutes, on every write path.

The SQLAlchemy commit (`sql.py`), PostgreSQL's one statement (`pg_writer.py`) and the journal
(`journal.py`, folded in its own process) all take their calls rows' sums and their
`quality_minutes` rows from `call_sums`, so a call's figures never depend on which path its
events took. The turn figures come from what the broker's tracker measured (`Event.marks`); an
event rebuilt from its frame has only what its data carries (latency and interruption).

One pass over a call's events of the commit, on the path of every commit: most events carry no
mark, and cost a type compare and an attribute read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from callstream.events import AGENT_STATE, FINAL, Event, sentiment_score
from callstream.quality import INTERRUPTIONS, latency_name, minute_of
from callstream.store.rows import merge_minute_rows
from callstream.turns import Marks

MinuteRow = tuple[str, int, str, int]  # rows.MINUTE_COLUMNS


def call_sums(held: Sequence[Event], minutes: list[MinuteRow]) -> tuple[Any, ...]:
    """What one call's events of a commit (in seq order) add to its row: the values of
    `rows.SUM_COLUMNS`, in that order. Its turns and interruptions go into `minutes`."""
    score_sum, score_n = 0.0, 0
    turns = latency_max = interruptions = agent_ms = user_ms = 0
    latencies: list[str] = []
    changed: Event | None = None  # the last event that changed the call's metadata
    for event in held:
        kind = event.type
        if event.meta is not None and "metadata" in event.data:
            changed = event
        if kind == FINAL and (score := sentiment_score(event.data)) is not None:
            score_sum += score
            score_n += 1
        marks = event.marks  # None: nothing measured, or an event rebuilt from its frame (its data says)
        if marks is None and (kind != AGENT_STATE or (marks := Marks.of_data(kind, event.data)) is None):
            continue
        if marks.latency_ms is not None:
            turns += 1
            latency_max = max(latency_max, marks.latency_ms)
            latencies.append(str(marks.latency_ms))
            minutes.append((event.account, minute_of(event.ts), latency_name(marks.latency_ms), 1))
        if marks.interrupted:
            interruptions += 1
            minutes.append((event.account, minute_of(event.ts), INTERRUPTIONS, 1))
        agent_ms += marks.agent_ms
        user_ms += marks.user_ms
    last_ts = held[-1].ts
    metadata, metadata_seq = (None, 0) if changed is None else (orjson.dumps(changed.meta).decode(), changed.seq)
    return (
        score_sum, score_n, last_ts, turns, latency_max, " ".join(latencies), interruptions, agent_ms, user_ms,
        metadata, metadata_seq,
    )


def merged_minutes(minutes: list[MinuteRow]) -> list[MinuteRow]:
    """One row per account, minute and name, as a PostgreSQL upsert needs (it may not touch a
    row twice in one statement)."""
    if not minutes:
        return []
    merged: dict[tuple[str, int, str], int] = {}
    merge_minute_rows(merged, minutes)
    return [(account, minute, name, n) for (account, minute, name), n in merged.items()]
