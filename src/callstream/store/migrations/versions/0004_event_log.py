"""The embedded store's log of sparse commits (store/event_log.py).

Created on PostgreSQL too, where it stays empty: one schema for both, as everywhere else. The
downgrade folds what the log holds into event_chunks and calls first, so nothing is lost.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from callstream.store.event_log import FOLD

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("first_seq", sa.BigInteger),
        sa.Column("last_seq", sa.BigInteger),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("call_last_seq", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("sentiment_sum", sa.Float, nullable=False),
        sa.Column("sentiment_n", sa.Integer, nullable=False),
        if_not_exists=True,
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # only SQLite nodes write the log
        for statement in FOLD:
            bind.execute(sa.text(statement))
    op.drop_table("event_log")
