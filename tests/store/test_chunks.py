"""How events become stored rows and come back, without a database (store/chunks.py)."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from callstream.events import Event
from callstream.store.chunks import MAX_CHUNK_EVENTS, by_call, chunk_rows, events_in
from tests.store.test_store_contract import event


def test_a_commit_stores_one_row_per_call_and_no_partials() -> None:
    batch = [
        event("acme", "c1", 1),
        event("acme", "c2", 1, "transcript.final"),
        event("acme", "c1", 2, "transcript.partial"),
        event("acme", "c1", 3, "transcript.final"),
        event("other", "c1", 1),
    ]
    rows = chunk_rows(by_call(batch))
    assert [row[:4] for row in rows] == [("acme", "c1", 1, 3), ("acme", "c2", 1, 1), ("other", "c1", 1, 1)]
    assert orjson.loads(rows[0][4]) == [orjson.loads(batch[0].frame), orjson.loads(batch[3].frame)]


def test_a_call_with_more_events_than_a_chunk_holds_gets_several() -> None:
    rows = chunk_rows(by_call([event("acme", "c1", seq) for seq in range(1, MAX_CHUNK_EVENTS + 2)]))
    assert [row[2:4] for row in rows] == [(1, MAX_CHUNK_EVENTS), (MAX_CHUNK_EVENTS + 1, MAX_CHUNK_EVENTS + 1)]


def test_events_come_back_as_published_in_range_and_in_seq_order() -> None:
    one = chunk_rows(by_call([event("acme", "c1", s, "transcript.final", text=f"t{s}") for s in (1, 3, 5)]))[0][4]
    other = chunk_rows(by_call([event("acme", "c1", s) for s in (2, 4)]))[0][4]
    got = events_in([one, other])
    assert [(e.seq, e.ts, e.type) for e in got] == [
        (1, 1_000, "transcript.final"), (2, 2_000, "agent.state"), (3, 3_000, "transcript.final"),
        (4, 4_000, "agent.state"), (5, 5_000, "transcript.final"),
    ]
    assert got[2].data == {"speaker": "user", "text": "t3", "is_final": True}
    assert [e.seq for e in events_in([one, other], since=1, until=4)] == [2, 3, 4]
    assert [e.seq for e in events_in([one, other], types=["agent.state"])] == [2, 4]
    assert [e.seq for e in events_in([one, one])] == [1, 3, 5]  # a chunk read twice: each event once


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=12), _json_values, max_size=6), st.sampled_from(["c1", "c.2:x"]))
def test_stored_data_comes_back_exactly_as_published(data: dict[str, object], call_id: str) -> None:
    """Whatever JSON a producer puts in `data` (keys and strings that spell `]`, `,` or `"data":`
    included) reads back equal from the stored chunk."""
    data = {**data, "text": '"],[{"data":{"x":1}}'}
    published = Event("acme", call_id, 3, 1234, "transcript.final", data)
    (row,) = chunk_rows(by_call([published]))
    (stored,) = events_in([row[4]])
    assert (stored.seq, stored.ts, stored.type, stored.data) == (3, 1234, "transcript.final", data)
