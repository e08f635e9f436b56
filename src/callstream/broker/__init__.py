"""Brokers, chosen by URL scheme: none → in-process, `redis://` → Redis (imported lazily)."""

from __future__ import annotations

from callstream.broker.base import (
    Broker,
    BrokerUnavailableError,
    CallEndedError,
    ControlResultError,
    HeldHistory,
    MetadataRefusedError,
    PendingControlsError,
    QuotaExceededError,
    Quotas,
)
from callstream.events import CallState

__all__ = [
    "Broker",
    "BrokerUnavailableError",
    "CallEndedError",
    "CallState",
    "ControlResultError",
    "HeldHistory",
    "MetadataRefusedError",
    "PendingControlsError",
    "QuotaExceededError",
    "Quotas",
    "create_broker",
]


def create_broker(
    url: str | None, *, history_ttl_s: float, quotas: Quotas | None = None, control_timeout_s: float = 10.0
) -> Broker:
    if not url or url.startswith("memory:"):
        from callstream.broker.memory import MemoryBroker

        return MemoryBroker(
            history_ttl_s=history_ttl_s, deliver_after_store=True, quotas=quotas, control_timeout_s=control_timeout_s
        )
    if url.startswith(("redis://", "rediss://", "unix://")):
        from callstream.broker.redis import RedisBroker  # type: ignore[import-not-found,unused-ignore]

        return RedisBroker(  # type: ignore[no-any-return,unused-ignore]
            url, history_ttl_s=history_ttl_s, quotas=quotas, control_timeout_s=control_timeout_s
        )
    raise ValueError(f"unsupported broker URL scheme in {url.split('://')[0]!r}: use redis:// or leave unset")
