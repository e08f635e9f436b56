"""Search: SQLite's FTS5 index is merged by the store, a bounded step a commit (`rows.fts_merge`),
in place of FTS5's own automerge.

FTS5 merges its segments on its own as rows are written ('automerge'), but in lumps: every 64
pages written it merges 64 pages a level, so one commit of a few lines now and then waits for
a merge of megabytes, and a level keeps up to three segments (a query opens each). With
automerge off and 'usermerge' at 2, the merge step after each commit merges two segments of a
level into one of the next, a few pages at a time, keeping about one segment a level. FTS5's
crisis merge (16 segments on a level) stays, should the steps fall behind. PostgreSQL's GIN
index needs nothing: this revision leaves it as it is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CONFIG = "INSERT INTO transcript_fts (transcript_fts, rank) VALUES ('{name}', {value})"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(_CONFIG.format(name="automerge", value=0))
        op.execute(_CONFIG.format(name="usermerge", value=2))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # FTS5's defaults
        op.execute(_CONFIG.format(name="automerge", value=4))
        op.execute(_CONFIG.format(name="usermerge", value=4))
