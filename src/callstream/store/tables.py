"""Tables, shared by SQLite and PostgreSQL. Every row that belongs to a tenant carries `account`."""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account", sa.String(128), nullable=False, index=True),
    sa.Column("name", sa.String(200)),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.String(100), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, index=True),
)

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("call_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("ended_at", sa.BigInteger),
    sa.Column("duration_ms", sa.BigInteger),
    sa.Column("end_status", sa.String(32)),
    sa.Column("reason", sa.Text),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("sentiment_sum", sa.Float, nullable=False, server_default="0"),
    sa.Column("sentiment_n", sa.Integer, nullable=False, server_default="0"),
    # Turns (turns.py, docs/quality.md): summed as events commit, in any order (rows.CALL_MERGE).
    sa.Column("last_ts", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("turns", sa.Integer, nullable=False, server_default="0"),
    sa.Column("latency_max", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("latencies", sa.Text, nullable=False, server_default=""),  # ms, space-separated
    sa.Column("interruptions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("agent_talk_ms", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("user_talk_ms", sa.BigInteger, nullable=False, server_default="0"),
    # Call metadata (metadata.py): the merged object as JSON text, and the seq of the event that
    # last changed it (rows.CALL_MERGE keeps the newer of two rows').
    sa.Column("metadata", sa.Text),
    sa.Column("metadata_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_calls_account_started", "account", "started_at", "call_id"),
    # /v1/stats: the account's live calls, and its calls that ended since a moment.
    sa.Index("ix_calls_account_status_ended", "account", "status", "ended_at"),
)

# Turns and interruptions per account and minute (`sums.call_sums`): what /v1/stats sums over a
# window without reading calls or events. `name`: `i` (interruptions) or `l<bucket>` (turns whose
# latency falls in that bucket, `quality.latency_bucket`).
quality_minutes = sa.Table(
    "quality_minutes",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("minute", sa.BigInteger, primary_key=True),  # ms since the epoch, a multiple of 60,000
    sa.Column("name", sa.String(8), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

# A call's events of one commit in one row: a JSON array of their wire frames (store/chunks.py).
event_chunks = sa.Table(
    "event_chunks",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("call_id", sa.String(128), primary_key=True),
    sa.Column("last_seq", sa.BigInteger, primary_key=True),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Text, nullable=False),
)

# Every final transcript line, one row each, for search (`callstream.search`, store/search_sql.py).
# Keyed by (account, call_id, seq): erasing a call is one DELETE here. The index over the text is
# the migration's alone (versions/0001_initial.py), kept up to date by the database as rows come and go:
# on SQLite the FTS5 table `transcript_fts` (triggers on this table), on PostgreSQL the column
# `tsv` (generated from `text`) and its GIN index. Neither is declared here, and the
# models-vs-migration test leaves them out (`INDEX_ONLY_IN_MIGRATION`).
transcript_finals = sa.Table(
    "transcript_finals",
    metadata,
    sa.Column("account", sa.String(128), primary_key=True),
    sa.Column("call_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("speaker", sa.String(16), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
)
INDEX_ONLY_IN_MIGRATION = frozenset({"transcript_fts", "tsv", "ix_transcript_finals_tsv"})

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

login_codes = sa.Table(
    "login_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("account", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger),
)


class PerCallTable(NamedTuple):
    """A table holding rows of single calls, named by `table`.

    Its rows of a call are those whose `account` and `call_id` columns name the call, or, with
    `through` = (column, parent), those whose `column` holds the `id` of such a row of `parent`.
    """

    table: str
    through: tuple[str, str] | None = None


#: Every table that holds rows of a call: erasing a call (`store.erasure`, the retention sweep)
#: deletes its rows from each, in one transaction and in this order. `calls` comes first: erasure
#: takes the calls it erases (those that ended) from there; a table reached `through` another
#: comes before that one. A table added for calls joins this tuple, by name (a full-text index
#: need not be a SQLAlchemy table), and is erased with the rest.
PER_CALL_TABLES: tuple[PerCallTable, ...] = (
    PerCallTable("calls"),
    PerCallTable("webhook_attempts", through=("message_id", "webhook_messages")),
    PerCallTable("webhook_messages"),
    PerCallTable("event_chunks"),
    PerCallTable("transcript_finals"),  # the full-text index (FTS5 triggers follow its deletes)
)
