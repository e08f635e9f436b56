"""How stored events lie in the database: a call's events of one commit, together in one row.

A row per event would make each event pay the database's per-row work (an insert into the table
and its key, the statement's binding). A chunk is one row per call per commit: the call's events
of that batch as a JSON array of their wire frames (already encoded once for the subscribers, so
storing them is a join), keyed by the last `seq` it holds.

Reads get whole chunks and cut them to the range asked for. Chunks of one call do not overlap
when one node sequences it; when producers on two nodes feed one call, each node's chunks hold
alternate seqs, so a read merges them back into `seq` order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import orjson

from callstream.events import FINAL, PARTIAL, Event
from callstream.store.rows import CHUNK_COLUMNS, MAX_CHUNK_BYTES, MAX_CHUNK_EVENTS

__all__ = [
    "CHUNK_COLUMNS", "MAX_CHUNK_BYTES", "MAX_CHUNK_EVENTS", "CallEvents", "ChunkRow", "FinalRow", "StoredEvent",
    "by_call", "chunk_rows", "events_in", "final_rows", "finals_of", "ids_in",
]

ChunkRow = tuple[str, str, int, int, str]  # CHUNK_COLUMNS
FinalRow = tuple[str, str, int, str, str]  # rows.FINAL_COLUMNS


@dataclass(slots=True)
class StoredEvent:
    seq: int
    ts: int
    type: str
    data: dict[str, Any]
    id: str | None = None  # the producer's (idempotent publish)


_seq = attrgetter("seq")


CallEvents = dict[tuple[str, str], list[Event]]


def by_call(events: Iterable[Event]) -> CallEvents:
    """A batch's events per (account, call), each call's in `seq` order: grouped once, for both
    the chunks and the calls rows (`SqlStore._call_rows`)."""
    calls: CallEvents = {}
    held_for = calls.get  # not setdefault: that builds a list per event to throw away
    for event in events:
        key = (event.account, event.call_id)
        held = held_for(key)
        if held is None:
            calls[key] = [event]
        else:
            held.append(event)
    for held in calls.values():
        # Already in seq order from one publish; two publishes racing on one node (the Redis
        # broker sequences before the store appends) may not be. A sorted run costs one pass.
        if len(held) > 1:
            held.sort(key=_seq)
    return calls


def chunk_rows(calls: CallEvents) -> list[ChunkRow]:
    """The rows that store a batch (`by_call`); partials are not stored. A call's chunk closes
    at `MAX_CHUNK_EVENTS` events or `MAX_CHUNK_BYTES` of frames, whichever comes first."""
    rows: list[ChunkRow] = []
    for (account, call_id), held in calls.items():
        stored = [e for e in held if e.type != PARTIAL]
        if not stored:
            continue
        if len(stored) <= MAX_CHUNK_EVENTS and sum(len(e.frame) for e in stored) <= MAX_CHUNK_BYTES:
            rows.append(_chunk_row(account, call_id, stored))  # the common case: one chunk
            continue
        part: list[Event] = []
        size = 0
        for event in stored:
            if part and (len(part) >= MAX_CHUNK_EVENTS or size + len(event.frame) > MAX_CHUNK_BYTES):
                rows.append(_chunk_row(account, call_id, part))
                part, size = [], 0
            part.append(event)
            size += len(event.frame)
        rows.append(_chunk_row(account, call_id, part))
    return rows


def finals_of(held: Iterable[Event]) -> list[tuple[int, str, str]]:
    """(seq, speaker, text) of each final among a call's events: the lines search indexes."""
    return [(e.seq, str(e.data.get("speaker", "")), str(e.data.get("text", ""))) for e in held if e.type == FINAL]


def final_rows(calls: CallEvents) -> list[FinalRow]:
    """The `transcript_finals` rows of a batch (`by_call`)."""
    return [
        (account, call_id, seq, speaker, text)
        for (account, call_id), held in calls.items()
        for seq, speaker, text in finals_of(held)
    ]


def _chunk_row(account: str, call_id: str, part: list[Event]) -> ChunkRow:
    return (account, call_id, part[0].seq, part[-1].seq, "[" + ",".join([e.frame for e in part]) + "]")


def events_in(
    chunks: Iterable[str],
    since: int = 0,
    until: int | None = None,
    types: Sequence[str] | None = None,
) -> list[StoredEvent]:
    """The events of `chunks` with since < seq ≤ until (and of `types`), in `seq` order, once each."""
    wanted = None if types is None else frozenset(types)
    found: dict[int, StoredEvent] = {}
    for chunk in chunks:
        for frame in orjson.loads(chunk):
            seq = frame["seq"]
            if seq <= since or (until is not None and seq > until):
                continue
            if wanted is not None and frame["type"] not in wanted:
                continue
            found.setdefault(seq, StoredEvent(seq, frame["ts"], frame["type"], frame["data"], frame.get("id")))
    return [found[seq] for seq in sorted(found)]


def ids_in(chunks: Iterable[str]) -> dict[str, int]:
    """The producers' ids of the events in `chunks` (id → seq): what a call remembers of its
    ids once a node loads it again. A chunk none of whose frames has one is not decoded."""
    ids: dict[str, int] = {}
    for chunk in chunks:
        if '"id":' not in chunk:
            continue
        for frame in orjson.loads(chunk):
            event_id = frame.get("id")
            if event_id is not None:
                ids.setdefault(event_id, frame["seq"])
    return ids
