"""Events stored a chunk at a time: one row per call per commit (store/chunks.py).

The old table's rows are carried over as chunks of up to 256 consecutive events of a call, each
rebuilt as the wire frame the node now stores (`events.encode_event`: same type, call, seq, ts
and data), so reads, replays and webhooks see exactly what they saw before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_PER_CHUNK = 256

_old = sa.table(
    "events",
    sa.column("account", sa.String),
    sa.column("call_id", sa.String),
    sa.column("seq", sa.BigInteger),
    sa.column("ts", sa.BigInteger),
    sa.column("type", sa.String),
    sa.column("data", sa.Text),
)
_new = sa.table(
    "event_chunks",
    sa.column("account", sa.String),
    sa.column("call_id", sa.String),
    sa.column("last_seq", sa.BigInteger),
    sa.column("first_seq", sa.BigInteger),
    sa.column("events", sa.Text),
)


def _frame(call_id: str, seq: int, ts: int, event_type: str, data: str) -> str:
    head = orjson.dumps({"type": event_type, "call_id": call_id, "seq": seq, "ts": ts}).decode()
    return f'{head[:-1]},"data":{data}}}'


def _chunks(rows: Iterator[Any]) -> Iterator[dict[str, Any]]:
    key: tuple[str, str] | None = None
    held: list[Any] = []

    def chunk() -> dict[str, Any]:
        frames = ",".join(_frame(r.call_id, r.seq, r.ts, r.type, r.data) for r in held)
        return {"account": held[0].account, "call_id": held[0].call_id, "first_seq": held[0].seq,
                "last_seq": held[-1].seq, "events": f"[{frames}]"}

    for row in rows:
        if held and ((row.account, row.call_id) != key or len(held) == _PER_CHUNK):
            yield chunk()
            held = []
        key = (row.account, row.call_id)
        held.append(row)
    if held:
        yield chunk()


def upgrade() -> None:
    op.create_table(
        "event_chunks",
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("call_id", sa.String(128), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, primary_key=True),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        if_not_exists=True,
    )
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("events"):
        return  # a database created from the tables at this revision
    # One call at a time: a long history is never read whole, and no read stays open while the
    # chunks are written.
    calls = bind.execute(sa.select(_old.c.account, _old.c.call_id).distinct()).all()
    for account, call_id in calls:
        rows = bind.execute(
            sa.select(_old).where(_old.c.account == account, _old.c.call_id == call_id).order_by(_old.c.seq)
        ).all()
        bind.execute(_new.insert(), list(_chunks(iter(rows))))
    op.drop_table("events")


def downgrade() -> None:
    op.create_table(
        "events",
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("call_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    bind = op.get_bind()
    calls = bind.execute(sa.select(_new.c.account, _new.c.call_id).distinct()).all()
    for account, call_id in calls:
        chunks = bind.execute(
            sa.select(_new.c.events).where(_new.c.account == account, _new.c.call_id == call_id)
        ).scalars().all()
        frames = {f["seq"]: f for chunk in chunks for f in orjson.loads(chunk)}
        bind.execute(_old.insert(), [
            {"account": account, "call_id": call_id, "seq": f["seq"], "ts": f["ts"], "type": f["type"],
             "data": orjson.dumps(f["data"]).decode()}
            for f in frames.values()
        ])
    op.drop_table("event_chunks")
