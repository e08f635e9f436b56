"""The store contract, run over SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
import sqlalchemy as sa

from callstream.events import Event
from callstream.store import SqlStore, sql
from callstream.store.chunks import MAX_CHUNK_EVENTS
from callstream.store.sql import PAGE_MAX_BYTES, decode_cursor, login_code_scopes
from callstream.turns import Marks

FULL = frozenset({"publish", "subscribe", "admin"})


def event(
    account: str, call_id: str, seq: int, event_type: str = "agent.state", marks: Marks | None = None, **data: Any
) -> Event:
    defaults: dict[str, dict[str, Any]] = {
        "agent.state": {"state": "thinking"},
        "transcript.partial": {"speaker": "user", "text": "hel", "is_final": False},
        "transcript.final": {"speaker": "user", "text": "hello", "is_final": True},
        "call.ended": {"status": "completed", "duration_ms": 4200, "reason": "hung up"},
    }
    return Event(account, call_id, seq, 1_000 * seq, event_type, {**defaults[event_type], **data}, marks=marks)


# ---- keys and login codes --------------------------------------------------------------


async def test_keys_create_lookup_revoke(store: SqlStore, account: str) -> None:
    record, secret = await store.create_key(account, frozenset({"subscribe"}), name="dash")
    assert secret not in repr(record)
    found = await store.key_by_secret(secret)
    assert found is not None
    assert (found.id, found.account, found.scopes, found.name) == (record.id, account, {"subscribe"}, "dash")
    assert await store.key_by_secret(secret + "x") is None
    assert (await store.key_by_id(record.id)) == found
    assert [k.id for k in await store.list_keys(account)] == [record.id]
    assert await store.revoke_key(record.id) is True
    assert await store.revoke_key(record.id) is False  # once
    revoked = await store.key_by_secret(secret)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert record.id in await store.revoked_since(revoked.revoked_at)


async def test_login_codes_are_single_use(store: SqlStore, account: str) -> None:
    code = await store.create_login_code(account)
    assert await store.use_login_code(code) == account
    assert await store.use_login_code(code) is None
    assert await store.use_login_code("never-issued") is None
    expired = await store.create_login_code(account, ttl_s=-1)
    assert await store.use_login_code(expired) is None


async def test_a_code_s_random_part_never_reads_as_a_prefix_granting_more(
    store: SqlStore, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random part drawn as `lsn-…` or `ctl-…` is drawn again: a plain link never opens a
    session that may listen or control, nor a control link one that may also listen."""
    for flags, scopes in (({}, {"subscribe"}), ({"control": True}, {"subscribe", "control"})):
        draws = iter(["lsn-" + "a" * 28, "ctl-" + "b" * 28, "c" * 32])
        monkeypatch.setattr(sql.secrets, "token_urlsafe", lambda _n, draws=draws: next(draws))
        code = await store.create_login_code(account, **flags)
        assert login_code_scopes(code) == scopes
        assert await store.use_login_code(code) == account


async def test_meta_value_is_created_once(store: SqlStore) -> None:
    first = await store.meta_value("contract_test_value", lambda: "one")
    assert await store.meta_value("contract_test_value", lambda: "two") == first == "one"


# ---- calls and events ------------------------------------------------------------------


async def test_append_is_durable_when_the_future_resolves(store: SqlStore, account: str) -> None:
    batch = [
        event(account, "c1", 1, "transcript.partial"),
        event(account, "c1", 2, "transcript.final", sentiment={"score": 0.5}),
        event(account, "c1", 3),
    ]
    await store.append(batch)
    call = await store.get_call(account, "c1")
    assert call is not None
    assert (call.status, call.started_at, call.last_seq, call.ended_at, call.sentiment) == (
        "live",
        1000,
        3,
        None,
        0.5,
    )
    stored = await store.events(account, "c1")
    assert [(e.seq, e.type) for e in stored] == [(2, "transcript.final"), (3, "agent.state")]  # no partials
    assert stored[0].data["text"] == "hello"
    state = await store.call_state(account, "c1")
    assert state is not None
    assert (state.status, state.last_seq, state.started_at) == ("live", 3, 1000)


async def test_appends_of_one_commit_settle_in_append_order_in_one_loop_iteration(
    store: SqlStore, account: str
) -> None:
    """Appends made before the writer runs share a commit, and their futures settle one after the
    other before the loop runs anything else: what the node's fan-out relies on to send a
    subscriber's events of several frames in one write (`Runtime._stored`)."""
    loop = asyncio.get_running_loop()
    settled: list[tuple[int, int]] = []
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if len(settled) < 3:
            loop.call_soon(tick)

    batches = [[event(account, "c1", 1), event(account, "c2", 1)], [event(account, "c1", 2)], [event(account, "c2", 2)]]
    futures = [store.append(batch) for batch in batches]
    for index, future in enumerate(futures):
        future.add_done_callback(lambda _, index=index: settled.append((index, ticks)))
    loop.call_soon(tick)
    await asyncio.gather(*futures)
    assert [index for index, _ in settled] == [0, 1, 2]
    assert len({at for _, at in settled}) == 1  # no loop iteration between them
    stored = await store.events(account, "c1")
    assert [e.seq for e in stored] == [1, 2]


async def test_event_data_comes_back_exactly_as_published(store: SqlStore, account: str) -> None:
    awkward = {
        "text": 'she said "hi" \\ then \u00e9\u2028 and 😀',
        "big": 2**53 + 1,
        "small": -(2**62),
        "ratio": 0.1,
        "nested": {"list": [1, None, True, "x"], "empty": {}},
        "key with spaces": "",
    }
    await store.append([event(account, "odd", 1, "agent.state", **awkward)])
    await store.append([event(account, "odd", 2, "transcript.final", reason="ü", sentiment={"score": -0.25})])
    stored = await store.events(account, "odd")
    assert [e.seq for e in stored] == [1, 2]
    assert stored[0].data == {"state": "thinking", **awkward}
    call = await store.get_call(account, "odd")
    assert call is not None
    assert (call.last_seq, call.sentiment) == (2, -0.25)


async def test_concurrent_call_look_ups_share_one_query(store: SqlStore, account: str) -> None:
    """A campaign's first events ask for hundreds of new calls' states at once: each gets its own
    answer (a known call's state, None for an unknown one, per account), from one query per account."""
    other = f"{account}_other"
    await store.append([event(account, f"known{n}", 1) for n in range(3)] + [event(other, "known0", 1)])
    await store.append([event(account, "known1", 2, "call.ended")])
    selects: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM calls" in statement:
            selects.append(statement)

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        wanted = [(account, f"known{n}") for n in range(3)] + [(account, f"new{n}") for n in range(600)]
        wanted += [(other, "known0"), (other, "known1")]
        states = await asyncio.gather(*(store.call_state(a, c) for a, c in wanted))
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    got = {key: None if s is None else (s.status, s.last_seq) for key, s in zip(wanted, states, strict=True)}
    assert got[(account, "known0")] == ("live", 1)
    assert got[(account, "known1")] == ("ended", 2)
    assert got[(account, "known2")] == ("live", 1)
    assert got[(other, "known0")] == ("live", 1)
    assert got[(other, "known1")] is None  # another account's call of that name is not this one
    assert all(got[(account, f"new{n}")] is None for n in range(600))
    # 603 call ids of one account (500 a query) and 2 of another, in one loop iteration
    assert len(selects) == 3, selects


async def test_call_upsert_across_batches_and_end(store: SqlStore, account: str) -> None:
    futures = [
        store.append([event(account, "c1", 1, "transcript.final", sentiment={"score": 1.0})]),
        store.append([event(account, "c1", 2, "transcript.final", sentiment={"score": 0.0})]),
    ]
    await asyncio.gather(*futures)
    await store.append([event(account, "c1", 3, "call.ended")])
    call = await store.get_call(account, "c1")
    assert call is not None
    assert call.to_json() == {
        "call_id": "c1",
        "status": "ended",
        "started_at": 1000,
        "ended_at": 3000,
        "duration_ms": 4200,
        "end_status": "completed",
        "reason": "hung up",
        "last_seq": 3,
        "sentiment": {"score": 0.5, "label": "positive", "n": 2},
        "metrics": {"turns": 0, "latency_ms": None, "interruptions": 0, "agent_talk_ms": 0, "user_talk_ms": 0},
        "metadata": {},
    }
    # A late duplicate of an earlier batch (a retried write) never rewinds the call.
    await store.append([event(account, "c1", 2)])
    again = await store.get_call(account, "c1")
    assert again is not None
    assert (again.status, again.last_seq) == ("ended", 3)


async def test_a_calls_turns_add_up_across_batches_and_its_end(store: SqlStore, account: str) -> None:
    """The tracker's figures (`Event.marks`) summed into the call's row on every write path: the
    live commits (journal or one statement) and the one that ends the call."""
    turn = functools.partial(event, account, "c1")
    await store.append([turn(1, "transcript.final", marks=Marks(user_ms=1_500))])
    await asyncio.gather(
        store.append([turn(2, marks=Marks(900), state="speaking", latency_ms=900)]),
        store.append([turn(3, marks=Marks(None, True, 2_000), state="listening", interrupted=True)]),
        store.append([turn(4, marks=Marks(1_300), state="speaking", latency_ms=1_300)]),
        store.append([turn(5, marks=Marks(400), state="speaking", latency_ms=400), turn(6, "transcript.partial")]),
    )
    live = await store.get_call(account, "c1")
    assert live is not None
    assert live.metrics == {
        "turns": 3,
        "latency_ms": {"p50": 900, "p90": 1_300, "max": 1_300},
        "interruptions": 1,
        "agent_talk_ms": 2_000,
        "user_talk_ms": 1_500,
    }
    await store.append([turn(7, "call.ended", marks=Marks(None, False, 3_000, 200))])
    ended = await store.get_call(account, "c1")
    assert ended is not None
    assert ended.metrics is not None
    assert (ended.metrics["turns"], ended.metrics["agent_talk_ms"], ended.metrics["user_talk_ms"]) == (3, 5_000, 1_700)
    other = await store.get_call(account, "quiet")
    assert other is None
    await store.append([event(account, "quiet", 1)])
    quiet = await store.get_call(account, "quiet")
    assert quiet is not None
    assert quiet.metrics == {
        "turns": 0, "latency_ms": None, "interruptions": 0, "agent_talk_ms": 0, "user_talk_ms": 0,
    }


async def test_events_since_until_and_types(store: SqlStore, account: str) -> None:
    await store.append([event(account, "c1", seq) for seq in range(1, 11)])
    await store.append([event(account, "c1", 11, "transcript.final")])
    assert [e.seq for e in await store.events(account, "c1", since=7)] == [8, 9, 10, 11]
    assert [e.seq for e in await store.events(account, "c1", since=2, until=5)] == [3, 4, 5]
    assert [e.seq for e in await store.events(account, "c1", types=["transcript.final"])] == [11]
    assert await store.events(account, "nope") == []


async def test_a_call_fed_through_two_nodes_reads_back_in_seq_order(store: SqlStore, account: str) -> None:
    """Producers of one call on two nodes: each node's commits hold alternate seqs of the call
    (the broker sequences them), yet a read returns one run in `seq` order, cut to the range."""
    await store.append([event(account, "c1", seq) for seq in (1, 3, 5, 7)])  # node A's commit
    await store.append([event(account, "c1", seq) for seq in (2, 4, 6)])  # node B's
    assert [e.seq for e in await store.events(account, "c1")] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.seq for e in await store.events(account, "c1", since=2, until=5)] == [3, 4, 5]
    # Two publishes racing on one node (the Redis broker sequences, then each appends) may
    # append their events out of seq order; the read does not care.
    await asyncio.gather(store.append([event(account, "c2", 2)]), store.append([event(account, "c2", 1)]))
    assert [e.seq for e in await store.events(account, "c2", since=1)] == [2]
    assert [e.seq for e in await store.events(account, "c2", until=1)] == [1]
    call = await store.get_call(account, "c2")
    assert call is not None
    assert call.last_seq == 2


async def test_a_long_commit_of_one_call_reads_back_whole_and_by_range(store: SqlStore, account: str) -> None:
    """More events of one call than one stored chunk holds (`chunks.MAX_CHUNK_EVENTS`)."""
    count = 2 * MAX_CHUNK_EVENTS + 10
    await store.append([event(account, "c1", seq, text=f"s{seq}") for seq in range(1, count + 1)])
    stored = await store.events(account, "c1")
    assert [(e.seq, e.data["text"]) for e in stored] == [(s, f"s{s}") for s in range(1, count + 1)]
    middle = await store.events(account, "c1", since=MAX_CHUNK_EVENTS - 2, until=MAX_CHUNK_EVENTS + 2)
    assert [e.seq for e in middle] == list(range(MAX_CHUNK_EVENTS - 1, MAX_CHUNK_EVENTS + 3))


async def pages_of(store: SqlStore, account: str, call_id: str, limit: int, until: int | None = None) -> list[list[int]]:
    """Every page of a call from the start, each asked for after the last seq of the one before."""
    pages: list[list[int]] = []
    since, more = 0, True
    while more:
        page, more = await store.events_page(account, call_id, since, limit, until)
        pages.append([e.seq for e in page])
        assert len(pages) < 1000
        if page:
            since = page[-1].seq
    return pages


async def test_events_come_in_pages_of_at_most_limit(store: SqlStore, account: str) -> None:
    """Pages cut across stored chunks (commits of 7 events, one chunk of 600), partials are not
    stored, and the last page says nothing more follows."""
    seq = 0
    for _ in range(10):
        await store.append([event(account, "c1", s) for s in range(seq + 1, seq + 8)])
        seq += 7
    await store.append([event(account, "c1", seq + 1, "transcript.partial")])
    await store.append([event(account, "c1", s, text=f"s{s}") for s in range(seq + 2, seq + 602)])
    stored = [s for s in range(1, seq + 602) if s != seq + 1]
    pages = await pages_of(store, account, "c1", 100)
    assert [s for page in pages for s in page] == stored
    assert [len(page) for page in pages] == [100] * 6 + [70]
    page, more = await store.events_page(account, "c1", 0, 1000)
    assert ([e.seq for e in page], more) == (stored, False)
    page, more = await store.events_page(account, "c1", seq, 3)
    assert ([(e.seq, e.data["text"]) for e in page], more) == ([(s, f"s{s}") for s in range(seq + 2, seq + 5)], True)
    exact, more = await store.events_page(account, "c1", stored[-3], 2)
    assert ([e.seq for e in exact], more) == (stored[-2:], False)
    assert await store.events_page(account, "c1", stored[-1], 10) == ([], False)
    assert await store.events_page(account, "nope", 0, 10) == ([], False)
    assert await store.events_page(account + "_other", "c1", 0, 10) == ([], False)
    assert [s for page in await pages_of(store, account, "c1", 16, until=50) for s in page] == list(range(1, 51))


async def test_a_page_of_large_events_stops_at_its_byte_budget(store: SqlStore, account: str) -> None:
    """`limit` counts events; a page also stops once its chunks pass `PAGE_MAX_BYTES`, so one
    account's megabyte events cannot make a page (and the node's memory) as large as it asks."""
    big = "x" * (PAGE_MAX_BYTES // 3)
    for s in range(1, 6):
        await store.append([event(account, "c1", s, "transcript.final", text=big)])
    page, more = await store.events_page(account, "c1", 0, 1000)
    assert more
    assert 1 <= len(page) <= 4
    assert [e.seq for e in page] == list(range(1, len(page) + 1))
    assert [s for p in await pages_of(store, account, "c1", 1000) for s in p] == [1, 2, 3, 4, 5]


async def test_pages_of_a_call_fed_through_two_nodes_miss_nothing(store: SqlStore, account: str) -> None:
    """Interleaved chunks: node A's big commits end late but hold early seqs, so a page that ends
    before such a chunk's last seq must still take its events below the page's end. Node B
    commits one event at a time, read after each (so SQLite files each as a chunk of its own):
    more chunks than a page read takes at once end before A's first."""
    await store.append([event(account, "c1", seq) for seq in range(1, 600, 2)])  # node A: 1, 3, … 599
    for seq in range(2, 81, 2):  # node B: 2, 4, … 80
        await store.append([event(account, "c1", seq)])
        await store.events_page(account, "c1", 0, 1)
    await store.append([event(account, "c1", seq) for seq in range(82, 601, 2)])  # node B: 82, … 600
    for limit in (1, 7, 30, 299, 300, 1000):
        pages = await pages_of(store, account, "c1", limit)
        assert [s for page in pages for s in page] == list(range(1, 601)), limit
        assert all(len(page) <= limit for page in pages)


async def test_list_calls_pages_newest_first(store: SqlStore, account: str) -> None:
    # Two calls share a start time: the cursor must still neither skip nor repeat one.
    starts = {"a": 1, "b": 2, "c": 2, "d": 3, "e": 4}
    for call_id, seq in starts.items():
        await store.append([Event(account, call_id, 1, seq * 1000, "agent.state", {"state": "thinking"})])
    await store.append([event(account, "d", 2, "call.ended")])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.list_calls(account, status=None, limit=2, cursor=cursor)
        seen += [c.call_id for c in page]
        if cursor is None:
            break
        decode_cursor(cursor)
    assert seen == ["e", "d", "c", "b", "a"]
    live, _ = await store.list_calls(account, status="live", limit=10, cursor=None)
    assert [c.call_id for c in live] == ["e", "c", "b", "a"]
    ended, _ = await store.list_calls(account, status="ended", limit=10, cursor=None)
    assert [c.call_id for c in ended] == ["d"]
    some, _ = await store.list_calls(
        account, status=None, limit=10, cursor=None, call_ids=frozenset({"a", "e"})
    )
    assert [c.call_id for c in some] == ["e", "a"]
    with pytest.raises(ValueError, match="cursor"):
        await store.list_calls(account, status=None, limit=2, cursor="garbage!")


async def test_another_account_never_sees_a_call(store: SqlStore, account: str) -> None:
    other = account + "_other"
    await store.append([event(account, "shared", 1), event(account, "shared", 2)])
    assert await store.get_call(other, "shared") is None
    assert await store.call_state(other, "shared") is None
    assert await store.events(other, "shared") == []
    assert (await store.list_calls(other, status=None, limit=10, cursor=None))[0] == []
    # The same call id in the other account is a different call.
    await store.append([event(other, "shared", 1, "call.ended")])
    mine = await store.get_call(account, "shared")
    assert mine is not None
    assert (mine.status, mine.last_seq) == ("live", 2)
    _, secret = await store.create_key(other, FULL)
    key = await store.key_by_secret(secret)
    assert key is not None
    assert key.account == other
    assert all(k.account == account for k in await store.list_keys(account))
