"""The schema: accounts, API keys, calls, their events in chunks, meta, login codes, webhooks.

One initial revision: the project has not been released, so its history of schema changes lives
in git, not here. `if_not_exists` everywhere: databases created by `create_all` (tests, tools)
already hold these tables, and adopting them must not fail.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
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
    op.drop_index("ix_webhook_messages_turns", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_messages_endpoint", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_messages_due", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_messages_account", table_name="webhook_messages", if_exists=True)
    op.drop_index("ix_webhook_endpoints_account", table_name="webhook_endpoints", if_exists=True)
    op.drop_index("ix_webhook_attempts_message_id", table_name="webhook_attempts", if_exists=True)
    op.drop_index("ix_calls_account_started", table_name="calls", if_exists=True)
    op.drop_index("ix_api_keys_revoked_at", table_name="api_keys", if_exists=True)
    op.drop_index("ix_api_keys_account", table_name="api_keys", if_exists=True)
    op.drop_table("webhook_messages", if_exists=True)
    op.drop_table("webhook_endpoints", if_exists=True)
    op.drop_table("webhook_attempts", if_exists=True)
    op.drop_table("meta", if_exists=True)
    op.drop_table("login_codes", if_exists=True)
    op.drop_table("event_chunks", if_exists=True)
    op.drop_table("calls", if_exists=True)
    op.drop_table("api_keys", if_exists=True)
    op.drop_table("accounts", if_exists=True)
