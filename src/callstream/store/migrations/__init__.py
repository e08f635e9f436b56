"""Alembic migrations for SQLite and PostgreSQL; `callstream.store.migrate.upgrade` runs them."""
