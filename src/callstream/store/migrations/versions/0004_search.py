"""Search (docs/protocol.md, Listing and searching calls): every final transcript line in
`transcript_finals`, and the index the database keeps over it as lines come and go.

SQLite: an FTS5 table `transcript_fts` (contentless: the text stays in `transcript_finals` alone)
over each line's `text` and its `keys` (its account's token, `store.search_sql`),
filled and emptied by triggers on `transcript_finals`, so every write path (the fold process's,
SQLAlchemy's) and an erasure (one DELETE of a call's rows) keep it right without knowing of it.
PostgreSQL: a generated `tsvector` column `tsv` with a GIN index. Words are runs of letters and
digits on both (`callstream.search`): PostgreSQL reads the text with its punctuation made spaces.

The finals stored before this revision are copied from the event chunks, so search finds them
too. Neither index is in `tables.py` (`tables.INDEX_ONLY_IN_MIGRATION`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KEYS = "'a' || hex({row}.account)"  # search_sql.account_token (FTS5 folds hex's capitals)

_SQLITE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS transcript_fts USING fts5("
    "keys, text, content='', columnsize=0, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS transcript_finals_indexed AFTER INSERT ON transcript_finals BEGIN"  # noqa: S608
    f" INSERT INTO transcript_fts (rowid, keys, text) VALUES (new.rowid, {_KEYS.format(row='new')}, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS transcript_finals_unindexed AFTER DELETE ON transcript_finals BEGIN"  # noqa: S608
    " INSERT INTO transcript_fts (transcript_fts, rowid, keys, text)"
    f" VALUES ('delete', old.rowid, {_KEYS.format(row='old')}, old.text); END",
)
_SQLITE_BACKFILL = (
    "INSERT INTO transcript_finals (account, call_id, seq, speaker, text)"
    " SELECT c.account, c.call_id, json_extract(e.value, '$.seq'), coalesce(json_extract(e.value, '$.data.speaker'), ''),"
    " coalesce(json_extract(e.value, '$.data.text'), '')"
    " FROM event_chunks AS c, json_each(c.events) AS e WHERE json_extract(e.value, '$.type') = 'transcript.final'"
    " ON CONFLICT (account, call_id, seq) DO NOTHING"
)
# ASCII punctuation, and the typographic marks transcripts carry, become spaces: PostgreSQL's own
# parser would keep `3.5`, `e-mail` or `+1555…` whole, where a word is letters and digits only.
_TSV = (
    "to_tsvector('simple'::regconfig, regexp_replace(text, '[[:punct:][:space:]\u2018\u2019\u201c\u201d\u2026\u2013\u2014]+', ' ', 'g'))"
)
_POSTGRESQL = (
    f"ALTER TABLE transcript_finals ADD COLUMN IF NOT EXISTS tsv tsvector GENERATED ALWAYS AS ({_TSV}) STORED",
    "CREATE INDEX IF NOT EXISTS ix_transcript_finals_tsv ON transcript_finals USING gin (tsv)",
)
_POSTGRESQL_BACKFILL = (
    "INSERT INTO transcript_finals (account, call_id, seq, speaker, text)"
    " SELECT c.account, c.call_id, (e.value ->> 'seq')::bigint, coalesce(e.value -> 'data' ->> 'speaker', ''),"
    " coalesce(e.value -> 'data' ->> 'text', '')"
    " FROM event_chunks AS c, jsonb_array_elements(c.events::jsonb) AS e(value)"
    " WHERE e.value ->> 'type' = 'transcript.final'"
    " ON CONFLICT (account, call_id, seq) DO NOTHING"
)


def upgrade() -> None:
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
    for statement in _SQLITE if sqlite else _POSTGRESQL:
        op.execute(statement)
    op.execute(_SQLITE_BACKFILL if sqlite else _POSTGRESQL_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS transcript_finals_unindexed")
        op.execute("DROP TRIGGER IF EXISTS transcript_finals_indexed")
        op.execute("DROP TABLE IF EXISTS transcript_fts")
    op.drop_table("transcript_finals", if_exists=True)
