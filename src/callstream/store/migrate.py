"""Bring a database's schema up to date at start (and with `callstream migrate`)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from callstream.store.tables import metadata


async def upgrade(engine: AsyncEngine) -> None:
    """Create what is missing. Idempotent, so every node may run it on start."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
