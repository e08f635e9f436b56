"""Prometheus metrics served at /metrics. Names follow `callstream_<thing>_<unit>`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_PUBLISHED = Counter("callstream_events_published", "Events sequenced on this node")
EVENTS_REPAIRED = Counter(
    "callstream_events_repaired", "Events a commit failed to take, stored later from the broker's log"
)
CALLS_ENDED = Counter("callstream_calls_ended", "Calls that ended (call.ended accepted on this node)")
EVENTS_DELIVERED = Counter("callstream_events_delivered", "Event frames sent to subscribers")
PARTIALS_DROPPED = Counter("callstream_partials_dropped", "Superseded partials dropped for slow consumers")
SLOW_CONSUMERS = Counter("callstream_slow_consumers", "Connections closed as slow consumers")
CONNECTIONS = Gauge("callstream_connections", "Open WebSocket connections", ["endpoint"])
CLIENT_ERRORS = Counter("callstream_client_errors", "Errors sent to clients", ["code"])
