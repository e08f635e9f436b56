"""Listing and searching calls in the store (store/search_sql.py), over SQLite and PostgreSQL
alike: filters combined, `q` with its hit, paging that holds under inserts, one account only,
and the index kept by every write path."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from callstream.call_filters import CallFilter
from callstream.events import Event
from callstream.search import parse_query
from callstream.store import SqlStore, search_sql
from callstream.store import tables as t
from tests.store.test_store_contract import event


def said(account: str, call_id: str, seq: int, text: str, *, at: int | None = None, **data: Any) -> Event:
    """A final of `call_id` at ts `at` (default seq × 1000)."""
    body = {"speaker": "user", "text": text, "is_final": True, **data}
    return Event(account, call_id, seq, 1_000 * seq if at is None else at, "transcript.final", body)


def ended_at(account: str, call_id: str, seq: int, at: int) -> Event:
    body = {"status": "completed", "duration_ms": 1_000}
    return Event(account, call_id, seq, at, "call.ended", body)


async def search(store: SqlStore, account: str, q: str | None = None, limit: int = 50, **given: Any) -> list[str]:
    rows, _ = await store.list_calls(
        account, filters=CallFilter(q=parse_query(q) if q else None, **given), limit=limit, cursor=None
    )
    return [row.call_id for row in rows]


async def start_calls(store: SqlStore, account: str, lines: dict[str, list[str]]) -> None:
    """Each call starts at its position × 10 s (the later in `lines`, the newer) and says its lines."""
    for n, (call_id, texts) in enumerate(lines.items(), start=1):
        await store.append([said(account, call_id, seq, text, at=n * 10_000 + seq) for seq, text in enumerate(texts, 1)])


@pytest.fixture(params=["few_matches", "walk", "walk_then_every_match"])
def plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every way to ask `q` (search_sql's docstring): after a first batch of one call, few
    matches are read at once; with none counted as few, every query walks the calls, as a common
    word does; with tiny batches and a short walk, it gives way to every match after two calls."""
    monkeypatch.setattr(search_sql, "WALK_FIRST", 1)
    monkeypatch.setattr(search_sql, "FEW_HITS", 2)
    if request.param != "few_matches":
        monkeypatch.setattr(search_sql, "CANDIDATES_MAX", 0)
    monkeypatch.setattr(search_sql, "WALK_CALLS_MAX", 2 if request.param == "walk_then_every_match" else 10**6)
    return str(request.param)


async def test_q_finds_the_calls_whose_finals_hold_every_word_newest_first(
    store: SqlStore, account: str, plan: str
) -> None:
    await start_calls(store, account, {
        "a": ["I want a refund for my order", "order RFC-1234"],
        "b": ["Where is my order?"],
        "c": ["The late fee was charged twice", "Please REFUND it"],
        "d": ["I paid the fee late", "refunds take days"],
    })
    await store.append([event(account, "e", 1, "transcript.partial", text="refund me")])  # partials are not searched

    assert await search(store, account, "refund") == ["c", "a"]
    assert await search(store, account, "order") == ["b", "a"]
    assert await search(store, account, '"late fee"') == ["c"]  # a phrase: the words in a row
    assert await search(store, account, "late fee") == ["d", "c"]  # words: anywhere in one final
    assert await search(store, account, "refund*") == ["d", "c", "a"]
    assert await search(store, account, "rfc-1234") == ["a"]
    assert await search(store, account, "refund order") == ["a"]  # both words in one final
    assert await search(store, account, "nothing") == []


async def test_a_hit_carries_the_snippet_of_its_first_matching_final(store: SqlStore, account: str, plan: str) -> None:
    await start_calls(store, account, {"a": ["Hello there", "I want a Refund now", "refund again"]})
    rows, _ = await store.list_calls(account, filters=CallFilter(q=parse_query("refund")), limit=10, cursor=None)
    (row,) = rows
    assert row.hit is not None
    assert (row.hit.seq, row.hit.speaker, row.hit.snippet.text) == (2, "user", "I want a Refund now")
    body = row.to_json()
    assert body["snippet"] == "I want a Refund now"
    assert body["match"] == {"seq": 2, "speaker": "user", "marks": ((9, 15),)}
    plain, _ = await store.list_calls(account, limit=10, cursor=None)
    assert "snippet" not in plain[0].to_json()  # a list without q has no hits


async def test_filters_combine_with_q(store: SqlStore, account: str, plan: str) -> None:
    await start_calls(store, account, {
        "a": ["refund please"],
        "b": ["refund please"],
        "c": ["refund please"],
        "d": ["no thanks"],
    })
    await store.append([ended_at(account, "b", 2, 20_500), ended_at(account, "d", 2, 40_500)])
    await store.append([said(account, "c", 2, "awful", at=30_002, sentiment={"score": -0.8})])
    await store.append([said(account, "a", 2, "great", at=10_002, sentiment={"score": 0.9})])

    assert await search(store, account, "refund", status="ended") == ["b"]
    assert await search(store, account, "refund", status="live") == ["c", "a"]
    assert await search(store, account, "refund", started_after=10_001) == ["c", "b"]
    assert await search(store, account, "refund", started_before=30_001) == ["b", "a"]
    assert await search(store, account, "refund", started_after=10_001, started_before=30_001) == ["b"]
    assert await search(store, account, "refund", sentiment_below=0.0) == ["c"]  # unscored calls are left out
    assert await search(store, account, None, sentiment_below=1.0) == ["c", "a"]
    assert await search(store, account, None, status="ended", started_after=30_000) == ["d"]


async def test_paging_a_search_neither_repeats_nor_skips_while_calls_come_and_speak(
    store: SqlStore, account: str, plan: str
) -> None:
    """Pages of 3 while, between pages, new calls start and old ones say the word again: every
    call that matched at the first page comes exactly once."""
    await start_calls(store, account, {f"c{n:02}": [f"refund number {n}"] for n in range(12)})
    matching_at_first = set(await search(store, account, "refund"))
    seen: list[str] = []
    cursor: str | None = None
    query = CallFilter(q=parse_query("refund"))
    for page_no in range(20):
        page, cursor = await store.list_calls(account, filters=query, limit=3, cursor=cursor)
        seen += [row.call_id for row in page]
        await store.append([said(account, f"new{page_no}", 1, "refund too", at=1_000_000 + page_no)])
        await store.append([said(account, f"c{page_no % 12:02}", 50 + page_no, "refund again", at=900_000 + page_no)])
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == matching_at_first


async def test_another_account_never_sees_a_hit_nor_counts_toward_the_candidates(
    store: SqlStore, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = account + "_other"
    await start_calls(store, other, {f"o{n}": ["secret refund"] for n in range(5)})
    await start_calls(store, account, {"mine": ["refund"]})
    monkeypatch.setattr(search_sql, "WALK_FIRST", 1)
    monkeypatch.setattr(search_sql, "CANDIDATES_MAX", 2)  # the other account's five would be too many
    assert await search(store, account, "refund") == ["mine"]
    assert await search(store, account, "secret") == []
    assert await search(store, other, "refund", limit=2) == ["o4", "o3"]


async def test_every_write_path_indexes_finals_and_one_delete_unindexes_a_call(store: SqlStore, account: str) -> None:
    """A live commit (the journal's fold on SQLite, one statement on PostgreSQL) and a commit that
    ends a call (the SQLAlchemy transaction) both index; erasing a call is one DELETE of its rows."""
    await store.append([said(account, "live", 1, "kumquat on the live path")])
    await store.append([said(account, "ending", 1, "kumquat as it ends"), ended_at(account, "ending", 2, 3_000)])
    assert sorted(await search(store, account, "kumquat")) == ["ending", "live"]
    f = t.transcript_finals.c
    async with store.engine.begin() as conn:
        await conn.execute(sa.delete(t.transcript_finals).where(f.account == account, f.call_id == "live"))
    assert await search(store, account, "kumquat") == ["ending"]
    assert await search(store, account, "path") == []


async def test_finals_stored_twice_are_indexed_once(store: SqlStore, account: str) -> None:
    """A fold run again after a crash files the same lines: the index holds them once."""
    line = said(account, "a", 1, "tangerine")
    await store.append([line])
    await store.append([line])
    rows, _ = await store.list_calls(account, filters=CallFilter(q=parse_query("tangerine")), limit=5, cursor=None)
    assert [row.call_id for row in rows] == ["a"]
    async with store.engine.connect() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).select_from(t.transcript_finals).where(
            t.transcript_finals.c.account == account))
    assert count == 1
