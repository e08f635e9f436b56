"""SQLite's search index is merged as finals are stored (`rows.fts_merge`; the migration turns
FTS5's automerge off): after many small commits, on the journal's path and on the path of commits
that end calls, each level of the FTS5 index holds at most two segments (one, and a merge's output
in progress), where FTS5's own automerge lets a level fill to three or more before it merges; and
every call is still found, and an erased one no longer is."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from callstream.call_filters import CallFilter
from callstream.search import parse_query
from callstream.store import SqlStore
from tests.store.test_search import ended_at, said

COMMITS = 60


def _varint(blob: bytes, at: int) -> tuple[int, int]:
    """SQLite's varint at `at`: its value and where the next one starts."""
    value = 0
    for i in range(9):
        byte = blob[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at + i + 1
    raise AssertionError("unreachable")


def segments_per_level(structure: bytes) -> list[int]:
    """The segments on each level of an FTS5 index, from its structure record (the `_data` row
    with id 10: a 4-byte cookie, then varints: levels, segments, write counter, and per level its
    merge count, its segment count and each segment's id, first and last page)."""
    at = 4
    levels, at = _varint(structure, at)
    for _ in range(2):
        _, at = _varint(structure, at)
    counts = []
    for _ in range(levels):
        _, at = _varint(structure, at)
        count, at = _varint(structure, at)
        for _ in range(3 * count):
            _, at = _varint(structure, at)
        counts.append(count)
    return counts


async def test_the_index_keeps_about_a_segment_a_level_through_many_small_commits(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await store.start()
    query = CallFilter(q=parse_query("kumquat"))
    try:
        for n in range(COMMITS):
            line = said("acme", f"c{n:03}", 1, f"kumquat number {n}", at=1_000 * n)
            # Every third call ends in its commit (the SQLAlchemy path); a read folds the journal:
            # one commit each.
            await store.append([line, ended_at("acme", f"c{n:03}", 2, 1_000 * n + 1)] if n % 3 == 0 else [line])
            await store.list_calls("acme", filters=query, limit=1, cursor=None)
        async with store.engine.connect() as conn:
            structure = await conn.scalar(sa.text("SELECT block FROM transcript_fts_data WHERE id = 10"))
        assert structure is not None
        assert max(segments_per_level(structure)) <= 2, segments_per_level(structure)

        rows, _ = await store.list_calls("acme", filters=query, limit=COMMITS, cursor=None)
        assert [row.call_id for row in rows] == [f"c{n:03}" for n in reversed(range(COMMITS))]
        assert await store.erase_calls("acme", ["c000", "c003"]) == ["c000", "c003"]
        rows, _ = await store.list_calls("acme", filters=query, limit=COMMITS, cursor=None)
        assert {row.call_id for row in rows} == {f"c{n:03}" for n in range(COMMITS)} - {"c000", "c003"}
    finally:
        await store.close()
