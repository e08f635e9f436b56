"""Prometheus metrics served at /metrics. Names follow `callstream_<thing>_<unit>`."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from callstream.events import ENDED, Event

EVENTS_PUBLISHED = Counter("callstream_events_published", "Events sequenced on this node")
EVENTS_REPAIRED = Counter(
    "callstream_events_repaired", "Events a commit failed to take, stored later from the broker's log"
)
CALLS_ENDED = Counter("callstream_calls_ended", "Calls that ended (call.ended accepted on this node)")
EVENTS_DELIVERED = Counter("callstream_events_delivered", "Event frames sent to subscribers")
PARTIALS_DROPPED = Counter("callstream_partials_dropped", "Superseded partials dropped for slow consumers")
SLOW_CONSUMERS = Counter("callstream_slow_consumers", "Connections closed as slow consumers")
AUDIO_FRAMES_RECEIVED = Counter("callstream_audio_frames_received", "Audio frames accepted from producers on this node")
AUDIO_FRAMES_SENT = Counter("callstream_audio_frames_sent", "Audio frames queued for listeners on this node")
AUDIO_FRAMES_DROPPED = Counter(
    "callstream_audio_frames_dropped", "Audio frames dropped, oldest first, for listeners that fell behind"
)
CONNECTIONS = Gauge("callstream_connections", "Open WebSocket connections", ["endpoint"])
CLIENT_ERRORS = Counter("callstream_client_errors", "Errors sent to clients", ["code"])
# Turns (turns.py) of the events this node sequenced: every node counts its own, so the cluster's
# figures are the sum over nodes. Buckets fit voice: a reply within 0.2 s is instant, past 5 s lost.
TURN_LATENCY = Histogram(
    "callstream_turn_latency_seconds",
    "How long callers waited: a user final to the agent speaking (agent.state data.latency_ms)",
    buckets=(0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
)
INTERRUPTIONS = Counter("callstream_interruptions", "Agent turns the user spoke over (data.interrupted)")


def count_sequenced(events: Sequence[Event]) -> None:
    """Count a publish's events: published, calls ended, and the turns the tracker measured."""
    EVENTS_PUBLISHED.inc(len(events))
    ended = 0
    for event in events:
        if event.type == ENDED:
            ended += 1
        marks = event.marks
        if marks is not None:
            if marks.latency_ms is not None:
                TURN_LATENCY.observe(marks.latency_ms / 1000)
            if marks.interrupted:
                INTERRUPTIONS.inc()
    if ended:
        CALLS_ENDED.inc(ended)
