"""Bring a database's schema up to date at start (and with `callstream migrate`): Alembic head.

Every node runs this when it starts. On PostgreSQL the upgrade runs in one transaction that
first takes a transaction-level advisory lock, so nodes starting together migrate one after
the other (the later ones find nothing left to do), and a failed migration leaves nothing
half-applied: PostgreSQL's DDL is transactional. On SQLite, `BEGIN IMMEDIATE` (the file's
write lock) does the same job.

A database at a revision this code does not ship (an unreleased development build's, or a newer
version's) is refused with `UnknownSchemaError`, a one-line message saying what to do, before
Alembic looks for a way from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["UnknownSchemaError", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
DATA_DIR_FILE = "callstream.db"  # the embedded store's file in the data dir (`sql.database_url` names it)
# pg_advisory_xact_lock key: "callstream" in ASCII, so other apps' locks do not collide.
_LOCK_KEY = 0x63616C6C73747265


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class UnknownSchemaError(Exception):
    """The database's schema is at a revision this code does not know: it cannot be upgraded."""


def head_revision() -> str | None:
    """The newest revision this code ships."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        # The driver begins transactions lazily (DDL runs outside one); take the write lock
        # now so nodes sharing the file migrate one after the other.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    config = _config(connection)
    _known(connection, ScriptDirectory.from_config(config))
    command.upgrade(config, "head")


def _known(connection: Connection, scripts: ScriptDirectory) -> None:
    """Raise `UnknownSchemaError` if the database is at a revision none of `scripts` is."""
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = sorted(r for r in current if r not in {s.revision for s in scripts.walk_revisions()})
    if not unknown:
        return
    if connection.dialect.name == "sqlite":
        path = connection.engine.url.database or ""
        if os.path.basename(path) == DATA_DIR_FILE:  # the data dir's own: it holds nothing else
            where, remedy = path, f"remove the data dir ({os.path.dirname(os.path.abspath(path))}) or use another"
        else:  # a file the user named, perhaps beside files of their own
            name = os.path.basename(path)
            where, remedy = path, f"remove the database file ({path}) and the {name}-* files beside it, or use another"
    else:
        where, remedy = "the database", "start on a new database"
    raise UnknownSchemaError(
        f"{where} is at schema revision {', '.join(unknown)}, which this version of callstream cannot"
        f" upgrade (an unreleased development build or a newer version made it): {remedy}"
    )


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate to head. Idempotent and safe to run from several nodes at once."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
