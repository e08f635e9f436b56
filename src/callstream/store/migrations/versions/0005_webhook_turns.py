"""The index the webhook worker's fair claims walk: pending messages by account, then due time.

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


def upgrade() -> None:
    op.create_index(
        "ix_webhook_messages_turns",
        "webhook_messages",
        ["status", "account", "next_attempt_at", "id"],
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_messages_turns", "webhook_messages", if_exists=True)
