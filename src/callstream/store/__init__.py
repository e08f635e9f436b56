"""The durable store: SQLite under --data-dir by default, PostgreSQL with --database."""

from __future__ import annotations

from callstream.store.chunks import StoredEvent
from callstream.store.sql import (
    CallFailedError,
    CallRecord,
    CallUnsettledError,
    KeyRecord,
    SqlStore,
    StoreUnavailableError,
    database_url,
)

__all__ = [
    "CallFailedError",
    "CallRecord",
    "CallUnsettledError",
    "KeyRecord",
    "SqlStore",
    "StoreUnavailableError",
    "StoredEvent",
    "database_url",
]
