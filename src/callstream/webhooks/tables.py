"""Webhook tables, on the store's own `metadata` so `create_all` and migrations include them.

Every row carries `account`, and every query of the API filters by it: one tenant never sees
another's endpoints, messages or attempts. The outbox (`webhook_messages`) is written in the
same transaction that stores `call.ended`, so a crash between "the call ended" and "the
webhook was queued" cannot happen; the worker then claims rows with a lease, so a crash
mid-delivery only delays the message until the lease runs out.
"""

from __future__ import annotations

import sqlalchemy as sa

from callstream.store.tables import metadata

__all__ = ["webhook_attempts", "webhook_endpoints", "webhook_messages"]

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account", sa.String(128), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    # Comma-separated event types the endpoint receives.
    sa.Column("events", sa.String(200), nullable=False),
    # HMAC needs the key itself, so secrets are stored as issued (`whsec_…`), not hashed.
    sa.Column("secret", sa.Text, nullable=False),
    # After a rotation the previous secret keeps signing until `previous_secret_until`.
    sa.Column("previous_secret", sa.Text),
    sa.Column("previous_secret_until", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("disabled_at", sa.BigInteger),
    sa.Column("disabled_reason", sa.Text),
)

webhook_messages = sa.Table(
    "webhook_messages",
    metadata,
    # The Standard Webhooks `webhook-id`: the same on every attempt, so receivers can dedupe.
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("account", sa.String(128), nullable=False),
    sa.Column("endpoint_id", sa.String(40), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("call_id", sa.String(128), nullable=False),
    # The body, frozen when queued: every retry sends the same bytes.
    sa.Column("payload", sa.Text, nullable=False),
    # pending → succeeded | failed. A pending row with a live lease is being delivered.
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
    # One message per endpoint, call and type, even if `call.ended` were stored twice.
    sa.UniqueConstraint("endpoint_id", "call_id", "event_type", name="uq_webhook_messages_once"),
    sa.Index("ix_webhook_messages_due", "status", "next_attempt_at"),
    # The claim's walk: accounts with pending messages, then each one's oldest due (repo.claim).
    sa.Index("ix_webhook_messages_turns", "status", "account", "next_attempt_at", "id"),
    sa.Index("ix_webhook_messages_endpoint", "endpoint_id", "created_at"),
    sa.Index("ix_webhook_messages_account", "account", "status", "created_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(128), nullable=False),
    sa.Column("message_id", sa.String(40), nullable=False, index=True),
    sa.Column("endpoint_id", sa.String(40), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("attempted_at", sa.BigInteger, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("latency_ms", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    # succeeded | retry | failed | gone
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("next_attempt_at", sa.BigInteger),
)
