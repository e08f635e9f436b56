"""Alembic environment: runs on the connection `callstream.store.migrate` hands over.

Nodes migrate on start through `migrate.upgrade`, which passes its own (async engine's sync)
connection in `config.attributes["connection"]`, already holding PostgreSQL's advisory lock.
Run from the `alembic` command line instead, `sqlalchemy.url` (or CALLSTREAM_DATABASE) names
the database and an async engine is made for it.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from callstream.store.tables import metadata
from callstream.webhooks import tables as _webhook_tables  # noqa: F401 - registers its tables

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    from callstream.store.sql import database_url

    engine = create_async_engine(database_url(url, "."))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")

shared = config.attributes.get("connection")
if shared is not None:
    run(shared)
else:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CALLSTREAM_DATABASE", "")
    asyncio.run(run_from_url(url))
