"""Listing and searching an account's calls in SQL (SQLite FTS5, PostgreSQL full-text), for
`SqlStore.list_calls`.

Calls come newest first, by (started_at, call_id): a key a call keeps, so a cursor naming the last
call of a page neither repeats nor skips a call that was there at the first page, whatever is
inserted meanwhile (new calls start later than the cursor). Every filter is a condition on the
calls row, and `q` one more: a final of the call matches.

Why two ways to ask `q`: the question is "the newest calls with a matching final", and which way
is fast depends on how many finals match. A rare word (an order number) matches a few finals:
the index hands them over and the calls are sorted (`candidates`). A common word matches many
finals, and sorting all their calls would read them all; instead the account's calls are read
newest first and each one asked whether a final of its own matches (`matches_in_call`), which
stops as soon as the page is full. `candidates` counts up to `CANDIDATES_MAX` matches and says
which case it is, so each query takes the way that reads least.

The index per dialect (migration 0005): SQLite's FTS5 table `transcript_fts` indexes each final's
`text`, and in its `keys` column two tokens of its own, one for its account (`account_token`) and
one for its call (`call_token`), so a query can keep to one account or one call inside the index.
PostgreSQL's `transcript_finals.tsv` is the text's `tsvector`, with a GIN index for a word's
finals and the primary key for a call's.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callstream.call_filters import CallFilter
from callstream.search import Query
from callstream.store import tables as t

__all__ = [
    "CANDIDATES_MAX", "account_token", "call_token", "candidates", "conditions", "hits", "matches_in_call", "matching",
]

# Up to this many matching finals, the calls they belong to are fetched and sorted; past it, the
# account's calls are read newest first and each checked (see the module's docstring).
CANDIDATES_MAX: Final = 2000

# `call_token` in SQL, as the triggers of migration 0005 index it (FTS5 folds case, so hex's
# capitals are the same token).
CALL_TOKEN_SQL: Final = "'c' || hex({row}.account) || 'x' || hex({row}.call_id)"  # noqa: S105 - not a secret


def account_token(account: str) -> str:
    """The index token every final of `account` carries (hex: a word of letters and digits)."""
    return "a" + account.encode().hex()


def call_token(account: str, call_id: str) -> str:
    """The token every final of one call carries; `x` is no hex digit, so none is another's."""
    return "c" + account.encode().hex() + "x" + call_id.encode().hex()


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


async def candidates(conn: AsyncConnection, dialect: str, account: str, query: Query) -> set[str] | None:
    """The calls of the account with a matching final, when at most `CANDIDATES_MAX` finals
    match; None when more do (then `matches_in_call` is the faster way)."""
    if dialect == "sqlite":
        sql = sa.text(
            "SELECT f.call_id FROM transcript_fts JOIN transcript_finals AS f ON f.rowid = transcript_fts.rowid"
            " WHERE transcript_fts MATCH :match LIMIT :n"
        )
        params: dict[str, Any] = {"match": _fts_match(account_token(account), query), "n": CANDIDATES_MAX + 1}
    else:
        sql = sa.text(
            "SELECT call_id FROM transcript_finals WHERE account = :account"
            " AND tsv @@ to_tsquery('simple', :tsquery) LIMIT :n"
        )
        params = {"account": account, "tsquery": query.tsquery(), "n": CANDIDATES_MAX + 1}
    found = [row[0] for row in await conn.execute(sql, params)]
    return None if len(found) > CANDIDATES_MAX else set(found)


# Which index of `calls` each way reads, named for SQLite: with no statistics its planner takes the
# index with the most equalities (account and status), then sorts every call it found, asking `q`
# of each. The candidates are looked up by key; the call-by-call way reads calls newest first.
BY_KEY: Final = "sqlite_autoindex_calls_1"  # the primary key's, as SQLite names it
NEWEST_FIRST: Final = "ix_calls_account_started"


async def matching(conn: AsyncConnection, dialect: str, account: str, query: Query) -> tuple[Any, str]:
    """The condition on a calls row that `q` adds: among the `candidates`, or, when too many
    finals match for that, `matches_in_call`; and the calls index to read them by."""
    found = await candidates(conn, dialect, account, query)
    if found is None:
        return matches_in_call(dialect, query), NEWEST_FIRST
    return t.calls.c.call_id.in_(sorted(found)), BY_KEY


def matches_in_call(dialect: str, query: Query) -> Any:
    """A condition on a calls row: one of its finals matches `query`."""
    if dialect == "sqlite":
        call = CALL_TOKEN_SQL.format(row="calls")
        exists = sa.text(
            f"EXISTS (SELECT 1 FROM transcript_fts WHERE transcript_fts MATCH"  # noqa: S608 - this module's own SQL
            f" ('keys : ' || {call} || ' AND text : (' || :fts || ')'))"
        )
        return exists.bindparams(fts=query.fts5())
    sql = sa.text(
        "EXISTS (SELECT 1 FROM transcript_finals AS f WHERE f.account = calls.account"
        " AND f.call_id = calls.call_id AND f.tsv @@ to_tsquery('simple', :tsquery))"
    )
    return sql.bindparams(tsquery=query.tsquery())


async def hits(
    conn: AsyncConnection, dialect: str, account: str, call_ids: list[str], query: Query
) -> dict[str, tuple[int, str, str]]:
    """Each call's first matching final: (seq, speaker, text), for its snippet."""
    if not call_ids:
        return {}
    f = t.transcript_finals.c
    if dialect == "sqlite":
        keys = " OR ".join(call_token(account, call_id) for call_id in call_ids)
        sql = sa.text(
            "SELECT f.call_id, f.seq, f.speaker, f.text FROM transcript_fts"
            " JOIN transcript_finals AS f ON f.rowid = transcript_fts.rowid WHERE transcript_fts MATCH :match"
        ).bindparams(match=_fts_match(f"({keys})", query))
        rows = await conn.execute(sql)
    else:
        select = sa.select(f.call_id, f.seq, f.speaker, f.text).where(
            f.account == account,
            f.call_id.in_(call_ids),
            sa.text("tsv @@ to_tsquery('simple', :tsquery)").bindparams(tsquery=query.tsquery()),
        )
        rows = await conn.execute(select)
    first: dict[str, tuple[int, str, str]] = {}
    for call_id, seq, speaker, text in rows:
        held = first.get(call_id)
        if held is None or seq < held[0]:
            first[call_id] = (int(seq), str(speaker), str(text))
    return first
