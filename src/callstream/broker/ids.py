"""Idempotent publish (docs/protocol.md, Producing): the events of a batch a call holds already.

A producer may give any event an `id`, unique within its call. An event whose id its call holds
is a resend (its ack was lost): it is not applied again, and its answer carries the seq the
first one got. A repeat inside one batch answers the seq of its first occurrence in the batch.
Sans-I/O: the broker hands in each call's remembered ids (id → seq) and sequences what is left;
the Redis broker runs the same rule inside its publish script.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from callstream.events import Event, NewEvent

__all__ = ["Repeats", "find_repeats", "first_seq"]

#: Batch index → the seq the event answers with: a seq (> 0) the call holds, or, for a repeat of
#: an earlier event of the same batch, `-(1 + that event's index)` (its seq is not known yet).
Repeats = dict[int, int]


def find_repeats(events: Sequence[NewEvent], ids_of: Callable[[str], dict[str, int] | None]) -> Repeats | None:
    """The repeats of `events` (None when there are none); `ids_of(call_id)`: the call's ids."""
    repeats: Repeats = {}
    first: dict[tuple[str, str], int] = {}
    for index, new in enumerate(events):
        event_id = new.id
        if event_id is None:
            continue
        ids = ids_of(new.call_id)
        seq = ids.get(event_id) if ids else None
        if seq is not None:
            repeats[index] = seq
            continue
        earlier = first.setdefault((new.call_id, event_id), index)
        if earlier != index:
            repeats[index] = -1 - earlier
    return repeats or None


def first_seq(answer: int, out: Sequence[Event]) -> int:
    """The seq a repeat answers with; `out`: the batch's events sequenced so far, in batch order."""
    return answer if answer > 0 else out[-1 - answer].seq
