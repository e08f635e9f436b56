"""Webhooks: endpoints, the durable outbox of messages, and every delivery attempt.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.String(200), nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text),
        sa.Column("previous_secret_until", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("disabled_at", sa.BigInteger),
        sa.Column("disabled_reason", sa.Text),
        if_not_exists=True,
    )
    op.create_index("ix_webhook_endpoints_account", "webhook_endpoints", ["account"], if_not_exists=True)
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger),
        sa.Column("give_up_at", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(40)),
        sa.Column("lease_until", sa.BigInteger),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("finished_at", sa.BigInteger),
        sa.UniqueConstraint("endpoint_id", "call_id", "event_type", name="uq_webhook_messages_once"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_messages_due", "webhook_messages", ["status", "next_attempt_at"], if_not_exists=True
    )
    op.create_index(
        "ix_webhook_messages_endpoint",
        "webhook_messages",
        ["endpoint_id", "created_at"],
        if_not_exists=True,
    )
    op.create_index(
        "ix_webhook_messages_account",
        "webhook_messages",
        ["account", "status", "created_at"],
        if_not_exists=True,
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempted_at", sa.BigInteger, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger),
        if_not_exists=True,
    )
    op.create_index("ix_webhook_attempts_message_id", "webhook_attempts", ["message_id"], if_not_exists=True)


def downgrade() -> None:
    for table in ("webhook_attempts", "webhook_messages", "webhook_endpoints"):
        op.drop_table(table)
