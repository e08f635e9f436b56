"""The schema: accounts, API keys, calls, their events in chunks, live quality's minutes, the
final transcript lines and their search index, meta, login codes, webhooks.

One initial revision: the project has not been released, so its history of schema changes lives
in git, not here. Its id, `0001_initial`, is one no development build's database carries, so such
a database is refused with a one-line error (`migrate.upgrade`), not taken as current.
`if_not_exists` everywhere: a database created by `create_all` already holds the tables, and
adopting it must not fail.

The search index over `transcript_finals` is declared here alone (`tables.INDEX_ONLY_IN_MIGRATION`).
SQLite: an FTS5 table `transcript_fts` (contentless: the text stays in `transcript_finals` alone)
over each line's `text` and its `keys` (its account's token, `store.search_sql`), filled and
emptied by triggers on `transcript_finals`, so every write path and an erasure (one DELETE of a
call's rows) keep it right without knowing of it. FTS5's own automerge is off and `usermerge` 2:
the store merges the index by a bounded step after each commit that stores finals
(`rows.fts_merge`), where automerge merges in lumps of megabytes and lets a level fill to three
segments. PostgreSQL: a generated `tsvector` column `tsv` with a GIN index. Words are runs of
letters and digits on both (`callstream.search`): PostgreSQL reads the text with its punctuation
made spaces.

Revision ID: 0001_initial
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

_KEYS = "'a' || hex({row}.account)"  # search_sql.account_token (FTS5 folds hex's capitals)
_FTS_CONFIG = "INSERT INTO transcript_fts (transcript_fts, rank) VALUES ('{name}', {value})"
_SQLITE_SEARCH = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS transcript_fts USING fts5("
    "keys, text, content='', columnsize=0, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS transcript_finals_indexed AFTER INSERT ON transcript_finals BEGIN"  # noqa: S608
    f" INSERT INTO transcript_fts (rowid, keys, text) VALUES (new.rowid, {_KEYS.format(row='new')}, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS transcript_finals_unindexed AFTER DELETE ON transcript_finals BEGIN"  # noqa: S608
    " INSERT INTO transcript_fts (transcript_fts, rowid, keys, text)"
    f" VALUES ('delete', old.rowid, {_KEYS.format(row='old')}, old.text); END",
    _FTS_CONFIG.format(name="automerge", value=0),
    _FTS_CONFIG.format(name="usermerge", value=2),
)
# ASCII punctuation, and the typographic marks transcripts carry, become spaces: PostgreSQL's own
# parser would keep `3.5`, `e-mail` or `+1555…` whole, where a word is letters and digits only.
_TSV = (
    "to_tsvector('simple'::regconfig, regexp_replace(text, '[[:punct:][:space:]\u2018\u2019\u201c\u201d\u2026\u2013\u2014]+', ' ', 'g'))"
)
_POSTGRESQL_SEARCH = (
    f"ALTER TABLE transcript_finals ADD COLUMN IF NOT EXISTS tsv tsvector GENERATED ALWAYS AS ({_TSV}) STORED",
    "CREATE INDEX IF NOT EXISTS ix_transcript_finals_tsv ON transcript_finals USING gin (tsv)",
)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
        if_not_exists=True,
    )
    op.create_index("ix_api_keys_account", "api_keys", ["account"], unique=False, if_not_exists=True)
    op.create_index("ix_api_keys_revoked_at", "api_keys", ["revoked_at"], unique=False, if_not_exists=True)
    op.create_table(
        "calls",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("end_status", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("sentiment_sum", sa.Float(), server_default="0", nullable=False),
        sa.Column("sentiment_n", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_ts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("turns", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latency_max", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("latencies", sa.Text(), server_default="", nullable=False),
        sa.Column("interruptions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("agent_talk_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("user_talk_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("metadata_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("account", "call_id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_calls_account_started",
        "calls",
        ["account", "started_at", "call_id"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_calls_account_status_ended",
        "calls",
        ["account", "status", "ended_at"],
        unique=False,
        if_not_exists=True,
    )
    op.create_table(
        "quality_minutes",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=8), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "minute", "name"),
        if_not_exists=True,
    )
    op.create_table(
        "event_chunks",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("account", "call_id", "last_seq"),
        if_not_exists=True,
    )
    op.create_table(
        "transcript_finals",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("speaker", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("account", "call_id", "seq"),
        if_not_exists=True,
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in _SQLITE_SEARCH if sqlite else _POSTGRESQL_SEARCH:
        op.execute(statement)
    op.create_table(
        "login_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("code_hash"),
        if_not_exists=True,
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        if_not_exists=True,
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("attempted_at", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_attempts_message_id", "webhook_attempts", ["message_id"], unique=False, if_not_exists=True
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.String(length=200), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_until", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("disabled_at", sa.BigInteger(), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_endpoints_account", "webhook_endpoints", ["account"], unique=False, if_not_exists=True
    )
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=True),
        sa.Column("give_up_at", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=40), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint_id", "call_id", "event_type", name="uq_webhook_messages_once"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_messages_account",
        "webhook_messages",
        ["account", "status", "created_at"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_messages_due",
        "webhook_messages",
        ["status", "next_attempt_at"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_messages_endpoint",
        "webhook_messages",
        ["endpoint_id", "created_at"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_messages_turns",
        "webhook_messages",
        ["status", "account", "next_attempt_at", "id"],
        unique=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS transcript_finals_unindexed")
        op.execute("DROP TRIGGER IF EXISTS transcript_finals_indexed")
        op.execute("DROP TABLE IF EXISTS transcript_fts")
    op.drop_table("transcript_finals", if_exists=True)  # with its tsv column and GIN index
    op.drop_index("ix_webhook_messages_turns", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_messages_endpoint", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_messages_due", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_messages_account", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_endpoints_account", table_name="webhook_endpoints", if_exists=True)
    op.drop_index("ix_webhook_attempts_message_id", table_name="webhook_attempts", if_exists=True)
    op.drop_index("ix_calls_account_status_ended", table_name="calls", if_exists=True)
    op.drop_index("ix_calls_account_started", table_name="calls", if_exists=True)
    op.drop_index("ix_api_keys_revoked_at", table_name="api_keys", if_exists=True)
    op.drop_index("ix_api_keys_account", table_name="api_keys", if_exists=True)
    op.drop_table("webhook_messages", if_exists=True)
    op.drop_table("webhook_endpoints", if_exists=True)
    op.drop_table("webhook_attempts", if_exists=True)
    op.drop_table("meta", if_exists=True)
    op.drop_table("login_codes", if_exists=True)
    op.drop_table("event_chunks", if_exists=True)
    op.drop_table("quality_minutes", if_exists=True)
    op.drop_table("calls", if_exists=True)
    op.drop_table("api_keys", if_exists=True)
    op.drop_table("accounts", if_exists=True)
