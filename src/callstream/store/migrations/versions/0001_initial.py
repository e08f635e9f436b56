"""The core schema: accounts, API keys, calls, events, meta, login codes.

`if_not_exists` everywhere: databases created before migrations existed (by `create_all`)
already hold these tables, and adopting them must not fail.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.String(100), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
        if_not_exists=True,
    )
    op.create_index("ix_api_keys_account", "api_keys", ["account"], if_not_exists=True)
    op.create_index("ix_api_keys_revoked_at", "api_keys", ["revoked_at"], if_not_exists=True)
    op.create_table(
        "calls",
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
        if_not_exists=True,
    )
    op.create_index(
        "ix_calls_account_started", "calls", ["account", "started_at", "call_id"], if_not_exists=True
    )
    op.create_table(
        "events",
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("call_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        if_not_exists=True,
    )
    op.create_table(
        "login_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger),
        if_not_exists=True,
    )


def downgrade() -> None:
    for table in ("login_codes", "meta", "events", "calls", "api_keys", "accounts"):
        op.drop_table(table)
