"""Listing and searching an account's calls in SQL (SQLite FTS5, PostgreSQL full-text), for
`SqlStore.list_calls`.

Calls come newest first, by (started_at, call_id): a key a call keeps, so a cursor naming the last
call of a page neither repeats nor skips a call that was there at the first page, whatever is
inserted meanwhile (new calls start later than the cursor). Every filter is a condition on the
calls row, and `q` one more: a final of the call matches.

Why `q` is asked in two ways: the question is "the newest calls with a matching final", and which
way is fast depends on how many finals match. A common word matches many finals, and sorting all
their calls would read them all; instead `search` reads the account's calls newest first, a batch
at a time, and asks the index once a batch which of them have a match (`hits`, one query for the
batch: an index query costs most in opening the word's lists, so one a call would cost more than
the rest), stopping as soon as the page is full: the first batch fills it. A rare word (an order
number) would have the walk read every call; so `match_count` counts the matches in the index (up
to `CANDIDATES_MAX`; before the first batch on SQLite, after it on PostgreSQL: `_count_now`), and
when they are few, the rest come from the matches themselves, looked up by key and sorted
(`matching_any`): at once on PostgreSQL; on SQLite once reading them costs less than the walk
still would (`_read_now`: a word in a few % of the calls fills its page from a short walk, where
reading its thousands of matches would cost more). A walk that finds few matches among many
calls (a common word and filters that keep few calls) also gives way to `matching_any` after
`WALK_CALLS_MAX` calls: its cost then grows with the matches, never with a scan of the whole
account call by call.

The index per dialect (the migration's, versions/0001_initial.py): SQLite's FTS5 table
`transcript_fts` indexes each final's `text`, and in its `keys` column a token of its own for its
account (`account_token`), so a query keeps to one account inside the index; a batch of calls is
asked within the rowids its lines span. PostgreSQL's `transcript_finals.tsv` is the text's
`tsvector`, with a GIN index for a word's finals and the primary key for a call's.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callstream.call_filters import CallFilter
from callstream.search import Query
from callstream.store import tables as t

__all__ = [
    "CANDIDATES_MAX", "account_token", "before", "conditions", "hits", "match_count", "matching_any", "search",
]

# Up to this many matching finals, the calls they belong to are looked up and sorted; past it, the
# account's calls are walked newest first (see the module's docstring).
CANDIDATES_MAX: Final = 5000

def account_token(account: str) -> str:
    """The index token every final of `account` carries (hex: a word of letters and digits)."""
    return "a" + account.encode().hex()


def _fts_match(keys: str, query: Query) -> str:
    return f"keys : {keys} AND text : ({query.fts5()})"


def conditions(account: str, filters: CallFilter, call_ids: frozenset[str] | None) -> list[Any]:
    """The calls row's conditions of the account and the filters, `q` aside."""
    c = t.calls.c
    where: list[Any] = [c.account == account]
    if filters.status is not None:
        where.append(c.status == filters.status)
    if filters.started_after is not None:
        where.append(c.started_at > filters.started_after)
    if filters.started_before is not None:
        where.append(c.started_at < filters.started_before)
    if filters.sentiment_below is not None:
        where += [c.sentiment_n > 0, c.sentiment_sum < filters.sentiment_below * c.sentiment_n]
    if call_ids is not None:
        where.append(c.call_id.in_(sorted(call_ids)))
    return where


def _matching_finals(dialect: str, account: str, query: Query, *, few: bool) -> tuple[str, dict[str, Any]]:
    """SQL of the call ids of the account's finals that match (one row a final), and its parameters.

    On SQLite, `few` (every account's matches counted at most `CANDIDATES_MAX`, `match_count`)
    reads the word's matches alone and keeps the account's by their rows, which are read anyway
    for the call id: the account's token ANDed in would seek the token's list (every final of the
    account) once per match, in every segment, which costs more than the matches themselves. Past
    a walk (many matches, maybe of other accounts) the token keeps the matches to the account's
    inside the index. CROSS JOIN keeps SQLite's planner from reading the account's every final and
    asking the index about each."""
    if dialect == "sqlite":
        if few:
            sql = (
                "SELECT f.call_id FROM transcript_fts CROSS JOIN transcript_finals AS f ON f.rowid = transcript_fts.rowid"
                " WHERE transcript_fts MATCH :match AND f.account = :account"
            )
            return sql, {"match": f"text : ({query.fts5()})", "account": account}
        sql = (
            "SELECT f.call_id FROM transcript_fts CROSS JOIN transcript_finals AS f ON f.rowid = transcript_fts.rowid"
            " WHERE transcript_fts MATCH :match"
        )
        return sql, {"match": _fts_match(account_token(account), query)}
    sql = "SELECT call_id FROM transcript_finals WHERE account = :account AND tsv @@ to_tsquery('simple', :tsquery)"
    return sql, {"account": account, "tsquery": query.tsquery()}


async def match_count(conn: AsyncConnection, dialect: str, account: str, query: Query) -> int:
    """How many finals match, counted up to `CANDIDATES_MAX` + 1 (more is "many").

    SQLite counts in the FTS5 index alone, every account's matches: an upper bound of the
    account's, and the cheapest count there is (no row read, no seek in the account token's
    list). PostgreSQL counts the account's (its GIN index knows no account: each match's row is
    read)."""
    if dialect == "sqlite":
        sql, params = "SELECT rowid FROM transcript_fts WHERE transcript_fts MATCH :match", {"match": f"text : ({query.fts5()})"}
    else:
        sql, params = _matching_finals(dialect, account, query, few=True)
    counted = sa.text(f"SELECT count(*) FROM ({sql} LIMIT :n) AS matched")  # noqa: S608 - this module's own SQL
    return int(await conn.scalar(counted, {**params, "n": CANDIDATES_MAX + 1}) or 0)


def matching_any(dialect: str, account: str, query: Query, *, few: bool = False) -> Any:
    """A condition on a calls row: a final of it matches (every match read once, then each call
    looked up in them): how few matches are read (`few`), and what a walk falls back on once it
    has walked `WALK_CALLS_MAX` calls."""
    sql, params = _matching_finals(dialect, account, query, few=few)
    return t.calls.c.call_id.in_(sa.text(sql).bindparams(**params).columns(call_id=sa.String()))


def before(started_at: int, call_id: str) -> Any:
    """Calls after (started_at, call_id) in the list's order, newest first: a page's cursor."""
    c = t.calls.c
    return sa.or_(c.started_at < started_at, sa.and_(c.started_at == started_at, c.call_id < call_id))


# Which index of `calls` few matches are read by, named for SQLite: with no statistics its planner
# may take the index with the most equalities (account and status) and read every call of that
# status, where a few matches are a few look-ups by key.
BY_KEY: Final = "sqlite_autoindex_calls_1"  # the primary key's, as SQLite names it
# `search` reads calls in batches, newest first, and asks the index once a batch which of them
# match (`hits`): the first batch holds this many calls, each next one up to twice as many (as
# many as the page still seems to need), until `WALK_CALLS_MAX` calls are walked; what is left is
# then asked of every match at once.
WALK_FIRST: Final = 200
WALK_CALLS_MAX: Final = 1400
FEW_HITS: Final = 5

Hit = tuple[int, str, str]  # seq, speaker, text of a call's first matching final


async def search(
    conn: AsyncConnection, dialect: str, account: str, calls: sa.Select[Any], query: Query, n: int
) -> tuple[list[Any], dict[str, Hit]]:
    """The first `n` rows of `calls` (the account's calls, filtered and in the list's order) with
    a final that matches `query`, and each one's first matching final.

    Calls are walked in batches, newest first, each batch's matches asked of the index at once,
    until `n` match: a common word fills the page from the first batch. When few finals match
    (`match_count`, asked once: `_count_now`) the rest are read from every match at once, as
    soon as that reads fewer rows than the walk still would (`_read_now`); a walk past
    `WALK_CALLS_MAX` calls with many matches does the same (`matching_any`)."""
    kept: list[Any] = []
    found: dict[str, Hit] = {}
    walked, batch, rest = 0, WALK_FIRST, calls
    matches: int | None = None  # counted once, up to CANDIDATES_MAX + 1
    while len(kept) < n:
        if _count_now(dialect, walked, len(kept)):
            matches = await match_count(conn, dialect, account, query)
        few = matches is not None and matches <= CANDIDATES_MAX
        if (few and _read_now(dialect, matches or 0, walked, len(kept), n)) or (not few and walked >= WALK_CALLS_MAX):
            every = rest.where(matching_any(dialect, account, query, few=few)).limit(n - len(kept))
            rows = await _by_key(conn, every) if few and dialect == "sqlite" else list((await conn.execute(every)).all())
            found |= await hits(conn, dialect, account, [row.call_id for row in rows], query)
            kept += rows
            break
        rows = list((await conn.execute(rest.limit(batch))).all())
        matched = await hits(conn, dialect, account, [row.call_id for row in rows], query)
        kept += [row for row in rows if row.call_id in matched][: n - len(kept)]
        found |= matched
        if len(rows) < batch:
            break
        walked += len(rows)
        batch = max(WALK_FIRST, min(2 * batch, -(-5 * _still_to_walk(walked, len(kept), n) // 4)))
        rest = calls.where(before(rows[-1].started_at, rows[-1].call_id))
    return kept, {row.call_id: found[row.call_id] for row in kept}


def _still_to_walk(walked: int, kept: int, n: int) -> int:
    """The calls a walk seems to need still to fill the page, at the rate it found hits so far
    (at least one hit in what it walked)."""
    return (n - kept) * walked // max(kept, 1)


def _read_now(dialect: str, matches: int, walked: int, kept: int, n: int) -> bool:
    """Whether `search`, with few matches, reads them all now rather than walk on. PostgreSQL
    does as soon as it knows they are few. On SQLite a match read costs about what a call walked
    costs (a row looked up by key, against a calls row and its lines' span), so the matches are
    read once they are fewer than the calls still to walk: before the first batch, than the
    batch; then, than the walk's estimate, or than the calls walked already (a walk whose last
    hits are far apart never costs more than twice the read). A word in a few % of the calls thus
    fills its page from a short walk, and a rarer one from its few matches."""
    if dialect != "sqlite":
        return True
    if walked == 0:
        return matches <= WALK_FIRST
    return matches <= _still_to_walk(walked, kept, n) or walked >= matches


async def _by_key(conn: AsyncConnection, select: sa.Select[Any]) -> list[Any]:
    """`select` of `calls` on SQLite, read by the primary key's index (`BY_KEY`): SQLAlchemy's
    SQLite dialect renders no index hints, so the statement is compiled here and given one."""
    compiled = select.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    sql = str(compiled).replace("FROM calls", f"FROM calls INDEXED BY {BY_KEY}", 1)
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    return list((await conn.exec_driver_sql(sql, params)).all())


def _count_now(dialect: str, walked: int, kept: int) -> bool:
    """Whether `search` asks `match_count` before its next batch. SQLite counts in the FTS5 index
    alone, cheaply, so it asks before the first batch. PostgreSQL's count reads each match's row
    (GIN knows no account), which for a common word costs more than a batch: it asks after the
    first batch, and only if that batch found fewer than `FEW_HITS` (the word is rare lately)."""
    if dialect == "sqlite":
        return walked == 0
    return walked == WALK_FIRST and kept < FEW_HITS


async def hits(
    conn: AsyncConnection, dialect: str, account: str, call_ids: list[str], query: Query
) -> dict[str, tuple[int, str, str]]:
    """Each call's first matching final: (seq, speaker, text), for its snippet."""
    if not call_ids:
        return {}
    if dialect == "sqlite":
        # The FTS5 index is asked within the rowids the calls' lines span (their key holds the
        # rowid: no table row is read), one range for the batch; a list of calls to OR would open
        # each call's own postings in every segment of the index, the slowest part of a query.
        span = sa.text(
            "SELECT min(rowid), max(rowid) FROM transcript_finals WHERE account = :account AND call_id IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        low, high = (await conn.execute(span, {"account": account, "ids": call_ids})).one()
        sql = sa.text(
            "SELECT f.call_id, f.seq, f.speaker, f.text FROM transcript_fts"
            " JOIN transcript_finals AS f ON f.rowid = transcript_fts.rowid"
            " WHERE transcript_fts MATCH :match AND transcript_fts.rowid BETWEEN :low AND :high AND f.account = :account"
        )
        wanted = set(call_ids)
        params = {"match": f"text : ({query.fts5()})", "low": low or 0, "high": high or -1, "account": account}
        rows = [row for row in await conn.execute(sql, params) if row[0] in wanted]
    else:
        # The call's lines by key first, then the test: left to itself the planner ANDs the key with
        # the word's whole GIN list, which for a common word costs more than the batch's lines.
        sql = sa.text(
            "WITH lines AS MATERIALIZED (SELECT call_id, seq, speaker, text, tsv FROM transcript_finals"
            " WHERE account = :account AND call_id = ANY(:ids))"
            " SELECT call_id, seq, speaker, text FROM lines WHERE tsv @@ to_tsquery('simple', :tsquery)"
        )
        rows = list(await conn.execute(sql, {"account": account, "ids": call_ids, "tsquery": query.tsquery()}))
    first: dict[str, tuple[int, str, str]] = {}
    for call_id, seq, speaker, text in rows:
        held = first.get(call_id)
        if held is None or seq < held[0]:
            first[call_id] = (int(seq), str(speaker), str(text))
    return first
