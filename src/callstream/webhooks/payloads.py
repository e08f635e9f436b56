"""Webhook bodies, built from a call's stored events without I/O.

The body follows the Standard Webhooks shape `{"type", "timestamp", "data"}`. `call.ended`
carries everything a CRM or QA workflow needs after the call in one request (status, timing,
the full transcript, every function call paired with its result, the sentiment summary, the
turn metrics, the call's metadata, the URL of its recording), so a receiver does not have to
call back into the REST API for anything but the audio; `transcript.completed` carries the
transcript alone for receivers that only archive text.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from callstream.events import ENDED, FINAL
from callstream.quality import call_metrics
from callstream.sentiment import label_for
from callstream.store.chunks import StoredEvent

__all__ = [
    "EVENT_TYPES",
    "TRANSCRIPT_COMPLETED",
    "build_payload",
    "call_ended_data",
    "call_metadata",
    "function_calls",
    "iso_ms",
    "sentiment_summary",
    "transcript",
    "transcript_completed_data",
]

CALL_ENDED: Final = "call.ended"
TRANSCRIPT_COMPLETED: Final = "transcript.completed"
EVENT_TYPES: Final = (CALL_ENDED, TRANSCRIPT_COMPLETED)

_CALL = "function.call"
_RESULT = "function.result"


def iso_ms(ts_ms: int) -> str:
    """`2026-05-09T07:35:25.123Z`: the ISO 8601 form Standard Webhooks uses for `timestamp`."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def transcript(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """The finals in seq order; partials are never stored, so nothing is superseded here."""
    lines = []
    for e in events:
        if e.type != FINAL:
            continue
        line: dict[str, Any] = {
            "seq": e.seq,
            "ts": e.ts,
            "speaker": e.data.get("speaker"),
            "text": e.data.get("text"),
        }
        for optional in ("utterance_id", "sentiment", "redacted"):
            if optional in e.data:
                line[optional] = e.data[optional]
        lines.append(line)
    return lines


def function_calls(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """Every `function.call` with its `function.result` (null while none came).

    Pairing is by `tool_call_id` when the producer gives one; otherwise a result goes to the
    oldest unanswered call of the same name, which is what sequential tool use produces. A
    result that matches no call is still listed (with `args` null) so nothing is hidden.
    """
    calls: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        tool_call_id = e.data.get("tool_call_id")
        name = e.data.get("name")
        if e.type == _CALL:
            entry = {
                "seq": e.seq,
                "ts": e.ts,
                "name": name,
                "tool_call_id": tool_call_id,
                "args": e.data.get("args"),
                "result": None,
            }
            calls.append(entry)
            if isinstance(tool_call_id, str):
                by_id.setdefault(tool_call_id, entry)
        elif e.type == _RESULT:
            result = {"seq": e.seq, "ts": e.ts, "result": e.data.get("result")}
            entry_or_none = _match(calls, by_id, tool_call_id, name)
            if entry_or_none is None:
                calls.append(
                    {
                        "seq": None,
                        "ts": None,
                        "name": name,
                        "tool_call_id": tool_call_id,
                        "args": None,
                        "result": result,
                    }
                )
            else:
                entry_or_none["result"] = result
    return calls


def _match(
    calls: list[dict[str, Any]],
    by_id: dict[str, dict[str, Any]],
    tool_call_id: object,
    name: object,
) -> dict[str, Any] | None:
    if isinstance(tool_call_id, str):
        entry = by_id.get(tool_call_id)
        return entry if entry is not None and entry["result"] is None else None
    for entry in calls:
        if entry["result"] is None and entry["tool_call_id"] is None and entry["name"] == name:
            return entry
    return None


def sentiment_summary(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean score and label of the call, overall and per speaker; None when nothing was scored."""
    scores: dict[str, list[float]] = {}
    for line in lines:
        sentiment = line.get("sentiment")
        score = sentiment.get("score") if isinstance(sentiment, dict) else None
        if isinstance(score, int | float) and not isinstance(score, bool):
            scores.setdefault(str(line.get("speaker")), []).append(float(score))
    every = [s for values in scores.values() for s in values]
    if not every:
        return None

    def summary(values: list[float]) -> dict[str, Any]:
        mean = round(sum(values) / len(values), 3)
        return {"score": mean, "label": label_for(mean), "n": len(values)}

    return {
        **summary(every),
        "by_speaker": {speaker: summary(values) for speaker, values in sorted(scores.items())},
    }


def call_ended_data(
    call: dict[str, Any], events: list[StoredEvent], recording_url: str | None = None
) -> dict[str, Any]:
    """`call` holds the call row's fields (call_id, started_at, ended_at, duration_ms, …);
    `recording_url` is where its recording is served (null: it has none)."""
    ended = next((e for e in reversed(events) if e.type == ENDED), None)
    ended_data = ended.data if ended is not None else {}
    end_status = ended_data.get("status", call.get("end_status"))
    lines = transcript(events)
    return {
        "call_id": call["call_id"],
        # `status` is how the call ended, as in the `call.ended` event; `end_status` repeats it
        # under the name the REST API uses for the same field.
        "status": end_status,
        "end_status": end_status,
        "reason": ended_data.get("reason", call.get("reason")),
        "duration_ms": ended_data.get("duration_ms", call.get("duration_ms")),
        "started_at": call.get("started_at"),
        "ended_at": call.get("ended_at") if call.get("ended_at") is not None else _ts(ended),
        "last_seq": events[-1].seq if events else 0,
        "transcript": lines,
        "function_calls": function_calls(events),
        "sentiment": sentiment_summary(lines),
        "metrics": call_metrics(call),
        "metadata": call_metadata(call),
        "recording_url": recording_url,
    }


def transcript_completed_data(call: dict[str, Any], events: list[StoredEvent]) -> dict[str, Any]:
    return {
        "call_id": call["call_id"],
        "started_at": call.get("started_at"),
        "ended_at": call.get("ended_at"),
        "transcript": transcript(events),
    }


def call_metadata(call: dict[str, Any]) -> dict[str, Any]:
    """The call's metadata as its row keeps it (JSON text, or None: `{}`)."""
    text = call.get("metadata")
    return dict(orjson.loads(text)) if isinstance(text, str) else {}


def build_payload(
    event_type: str, call: dict[str, Any], events: list[StoredEvent], ts_ms: int, recording_url: str | None = None
) -> dict[str, Any]:
    """The whole body for one event type; `ts_ms` (when the call ended) becomes `timestamp`."""
    if event_type == CALL_ENDED:
        data = call_ended_data(call, events, recording_url)
    elif event_type == TRANSCRIPT_COMPLETED:
        data = transcript_completed_data(call, events)
    else:
        raise ValueError(f"unknown webhook event type: {event_type}")
    return {"type": event_type, "timestamp": iso_ms(ts_ms), "data": data}


def _ts(event: StoredEvent | None) -> int | None:
    return None if event is None else event.ts
