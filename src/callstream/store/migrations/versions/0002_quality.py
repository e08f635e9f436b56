"""Live quality (docs/quality.md): turn figures on each calls row, and turns per minute.

The calls row gains the call's turn sums and `last_ts` (its last event), with an index for the
account's live calls and those that ended since a moment; `quality_minutes` holds each minute's
turns by latency bucket and interruptions, which `/v1/stats` sums over its window. Columns are
added only where missing: a database made by `create_all` already has them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    sa.Column("last_ts", sa.BigInteger(), server_default="0", nullable=False),
    sa.Column("turns", sa.Integer(), server_default="0", nullable=False),
    sa.Column("latency_max", sa.BigInteger(), server_default="0", nullable=False),
    sa.Column("latencies", sa.Text(), server_default="", nullable=False),
    sa.Column("interruptions", sa.Integer(), server_default="0", nullable=False),
    sa.Column("agent_talk_ms", sa.BigInteger(), server_default="0", nullable=False),
    sa.Column("user_talk_ms", sa.BigInteger(), server_default="0", nullable=False),
)


def _calls_columns() -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns("calls")}


def upgrade() -> None:
    present = _calls_columns()
    for column in _COLUMNS:
        if column.name not in present:
            op.add_column("calls", column)
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


def downgrade() -> None:
    op.drop_table("quality_minutes", if_exists=True)
    op.drop_index("ix_calls_account_status_ended", table_name="calls", if_exists=True)
    present = _calls_columns()
    for column in reversed(_COLUMNS):
        if column.name in present:
            op.drop_column("calls", column.name)
