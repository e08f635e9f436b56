"""Call metadata (docs/protocol.md, Call metadata): the calls row keeps the call's metadata.

`metadata` is the merged object as JSON text (NULL: none), `metadata_seq` the seq of the event
that last changed it: rows of two commits merge by keeping the newer one (`rows.CALL_MERGE`).
Each column is added only where missing (a database made by `create_all` has them already).

Revision ID: 0003, after 0002.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def _held() -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns("calls")}


def upgrade() -> None:
    held = _held()
    if "metadata" not in held:
        op.add_column("calls", sa.Column("metadata", sa.Text(), nullable=True))
    if "metadata_seq" not in held:
        op.add_column("calls", sa.Column("metadata_seq", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    held = _held()
    for name in ("metadata_seq", "metadata"):
        if name in held:
            op.drop_column("calls", name)
