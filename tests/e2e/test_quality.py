"""Live quality (docs/quality.md) through real server processes on SQLite and PostgreSQL: the turn
figures in the events live, on replay and over REST, the call's metrics, /v1/stats, producers'
`metrics` events, the `call.ended` webhook and the Prometheus text."""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from tests.helpers import ServerProcess, history, key_of, open_events, publish, recv, recv_until, send
from tests.turn_scripts import CALL
from tests.webhooks.conftest import Receiver

METRICS_EVENT = {"type": "metrics", "data": {"stage": "llm", "ttfb_ms": 412.5, "duration_ms": 1_180, "model": "m"}}


def nearest_rank(ordered: list[int], q: float) -> int:
    """The q-quantile by nearest rank (the test's own, not the server's)."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def get(server: ServerProcess, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def play(server: ServerProcess, key: str, call_id: str, *, end: bool = True) -> None:
    """`turn_scripts.CALL` one event a request, 30 ms apart (so every figure is a real span), with a
    producer's `metrics` event after the first answer."""
    script = [{"type": kind, "data": data} for kind, data in (CALL if end else CALL[:-1])]
    script.insert(6, METRICS_EVENT)
    for event in script:
        response = publish(server, key, call_id, event)
        assert response.status_code == 202, response.text
        time.sleep(0.03)


def expected_from(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The call's metrics as the events' own server ts show them (docs/quality.md)."""
    latencies, interruptions, agent_ms, user_ms = [], 0, 0, 0
    final_at = speaking_at = user_at = None
    for e in events:
        kind, data, ts = e["type"], e["data"], e["ts"]
        if kind == "agent.state" and data["state"] == "speaking":
            if "latency_ms" in data:
                assert data["latency_ms"] == ts - final_at
                latencies.append(data["latency_ms"])
            speaking_at = ts
        elif kind == "agent.state" or kind == "call.ended":
            agent_ms += ts - speaking_at if speaking_at is not None else 0
            speaking_at = None
            interruptions += data.get("interrupted") is True
        elif kind == "transcript.partial" and data["speaker"] == "user":
            user_at = ts if user_at is None else user_at
        elif kind == "transcript.final" and data["speaker"] == "user":
            user_ms += ts - (user_at or ts)
            final_at, user_at = ts, None
    ordered = sorted(latencies)
    return {
        "turns": len(latencies),
        "latency_ms": {"p50": nearest_rank(ordered, 0.5), "p90": nearest_rank(ordered, 0.9), "max": ordered[-1]},
        "interruptions": interruptions,
        "agent_talk_ms": agent_ms,
        "user_talk_ms": user_ms,
    }


async def watched(server: ServerProcess, key: str, call_id: str, *, end: bool = True) -> list[dict[str, Any]]:
    """`play` the call to a subscriber (subscribed before it starts): what it got live."""
    ws = await open_events(server, key)
    await send(ws, {"type": "subscribe", "call_id": call_id})
    await recv_until(ws, "subscribed")
    await asyncio.to_thread(play, server, key, call_id, end=end)
    live = [await recv(ws) for _ in range(len(CALL) + (1 if end else 0))]
    await ws.close()
    return live


async def replayed(server: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    ws = await open_events(server, key)
    await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
    events = [m for m in await recv_until(ws, "subscribed") if m["type"] != "subscribed"]
    await ws.close()
    return events


async def test_a_calls_figures_are_the_same_live_on_replay_and_over_rest(any_store: ServerProcess) -> None:
    key, call_id = key_of(any_store), f"call_{uuid.uuid4().hex[:12]}"
    live = await watched(any_store, key, call_id)
    stored = history(any_store, key, call_id)
    figures = [(e["seq"], e["data"].get("latency_ms"), e["data"].get("interrupted")) for e in stored]
    replay = await replayed(any_store, key, call_id)
    assert [(e["seq"], e["data"].get("latency_ms"), e["data"].get("interrupted")) for e in replay] == figures
    assert [f for f in ((e["seq"], e["data"].get("latency_ms"), e["data"].get("interrupted")) for e in live)
            if f[0] in {s for s, _, _ in figures}] == figures  # fmt: skip
    assert sum(f[1] is not None for f in figures) == 2
    assert sum(f[2] is True for f in figures) == 1
    assert [e["data"] for e in stored if e["type"] == "metrics"] == [METRICS_EVENT["data"]]

    call = get(any_store, key, f"/v1/calls/{call_id}").json()
    assert call["metrics"] == expected_from(live)
    assert call["metrics"]["latency_ms"]["p50"] >= 30  # the script waits 30 ms between events
    listed = get(any_store, key, "/v1/calls").json()["calls"]
    assert [c["metrics"] for c in listed if c["call_id"] == call_id] == [call["metrics"]]


async def test_metrics_are_kept_live_while_the_call_goes_on(any_store: ServerProcess) -> None:
    key, call_id = key_of(any_store), f"call_{uuid.uuid4().hex[:12]}"
    live = await watched(any_store, key, call_id, end=False)
    call = get(any_store, key, f"/v1/calls/{call_id}").json()
    assert call["status"] == "live"
    assert call["metrics"] == expected_from(live)
    assert call["metrics"]["user_talk_ms"] > 0  # from the partials, which only a subscriber sees


def test_stats_sum_the_accounts_window(any_store: ServerProcess) -> None:
    key = key_of(any_store)
    play(any_store, key, "ended_one")
    play(any_store, key, "live_one", end=False)
    assert publish(any_store, key, "quiet_one", {"type": "transcript.final", "data": {
        "speaker": "user", "text": "This is terrible, I hate it."}}).status_code == 202  # fmt: skip
    every = [e for call_id in ("ended_one", "live_one") for e in history(any_store, key, call_id)]
    labels = [get(any_store, key, f"/v1/calls/{c}").json()["sentiment"] for c in ("ended_one", "live_one", "quiet_one")]
    spread = dict.fromkeys(("positive", "neutral", "negative", "unscored"), 0)
    for label in labels:
        spread[label["label"] if label else "unscored"] += 1
    latencies = sorted(e["data"]["latency_ms"] for e in every if "latency_ms" in e["data"])

    for window in ("15m", "1h", "24h"):
        stats = get(any_store, key, "/v1/stats", window=window).json()
        assert stats["window"] == window
        assert stats["latency_warn_ms"] == 1500  # the default threshold the dashboard flags against
        assert (stats["live_calls"], stats["calls"], stats["turns"], stats["interruptions"]) == (2, 3, 4, 2)
        assert stats["interruptions_per_call"] == pytest.approx(2 / 3, abs=1e-3)
        assert stats["ended"] == {"completed": 1}
        assert stats["sentiment"] == spread
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):  # within one 5 % bucket
            assert stats["latency_ms"][name] == pytest.approx(nearest_rank(latencies, q), rel=0.06, abs=100)
        assert sum(point["turns"] for point in stats["series"]) == 4
        assert sum(point["interruptions"] for point in stats["series"]) == 2
        assert stats["since"] <= min(e["ts"] for e in every) <= max(e["ts"] for e in every) <= stats["until"]
    assert len(get(any_store, key, "/v1/stats").json()["series"]) in (15, 16)  # 15m by default, one a minute

    empty = get(any_store, key_of(any_store), "/v1/stats").json()
    assert (empty["live_calls"], empty["turns"], empty["latency_ms"], empty["interruptions_per_call"]) == (0, 0, None, 0)


def test_stats_refuse_what_they_cannot_answer(server: ServerProcess, api_key: str) -> None:
    bad = get(server, api_key, "/v1/stats", window="2d")
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_request"
    token = httpx.post(f"{server.url}/v1/tokens", json={"calls": ["c1"]}, headers={"Authorization": f"Bearer {api_key}"})
    limited = get(server, token.json()["token"], "/v1/stats")
    assert limited.status_code == 403
    assert httpx.get(f"{server.url}/v1/stats").status_code == 401


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"type": "agent.state", "data": {"state": "speaking", "latency_ms": 5}}, "data.latency_ms is measured by the server"),
        ({"type": "agent.state", "data": {"state": "listening", "interrupted": False}}, "data.interrupted is measured"),
        ({"type": "metrics", "data": {"ttfb_ms": 3}}, "data.stage must be a string"),
        ({"type": "metrics", "data": {"stage": ""}}, "data.stage must be a string"),
        ({"type": "metrics", "data": {"stage": "x" * 65}}, "data.stage must be a string"),
        ({"type": "metrics", "data": {"stage": "tts", "ttfb_ms": -1}}, "data.ttfb_ms must be a number"),
        ({"type": "metrics", "data": {"stage": "tts", "duration_ms": "12"}}, "data.duration_ms must be a number"),
        ({"type": "metrics", "data": {"stage": "tts", "duration_ms": True}}, "data.duration_ms must be a number"),
    ],
)
def test_a_producer_cannot_forge_figures_nor_send_bad_metrics(
    server: ServerProcess, api_key: str, call_id: str, event: dict[str, Any], problem: str
) -> None:
    response = publish(server, api_key, call_id, [{"type": "agent.state", "data": {"state": "listening"}}, event])
    assert response.status_code == 422
    assert response.json()["error"]["index"] == 1
    assert problem in response.json()["error"]["message"]
    assert get(server, api_key, f"/v1/calls/{call_id}").status_code == 404  # nothing of the batch applied


async def test_the_call_ended_webhook_carries_the_calls_metrics(server: ServerProcess) -> None:
    key, call_id = key_of(server), f"call_{uuid.uuid4().hex[:12]}"
    receiver = await Receiver().start()
    try:
        created = httpx.post(
            f"{server.url}/v1/webhooks", json={"url": receiver.url, "events": ["call.ended"]},
            headers={"Authorization": f"Bearer {key}"},
        ).json()  # fmt: skip
        await asyncio.to_thread(play, server, key, call_id)
        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert time.monotonic() < deadline, "no webhook in time"
            await asyncio.sleep(0.05)
        body = Webhook(created["secret"]).verify(receiver.requests[0].body, receiver.requests[0].headers)
    finally:
        await receiver.close()
    expected = get(server, key, f"/v1/calls/{call_id}").json()["metrics"]
    assert body["data"]["metrics"] == expected
    assert expected["turns"] == 2
    assert expected["interruptions"] == 1


def prometheus(server: ServerProcess) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("callstream_turn_latency_seconds") or line.startswith("callstream_interruptions"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_prometheus_counts_turns_and_interruptions(server: ServerProcess) -> None:
    before = prometheus(server)
    key, call_id = key_of(server), f"call_{uuid.uuid4().hex[:12]}"
    play(server, key, call_id)
    after = prometheus(server)
    latencies = [e["data"]["latency_ms"] / 1000 for e in history(server, key, call_id) if "latency_ms" in e["data"]]

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("callstream_turn_latency_seconds_count") == 2
    assert grew("callstream_turn_latency_seconds_sum") == pytest.approx(sum(latencies))
    for le in ("0.2", "0.3", "0.5", "0.75", "1.0", "1.5", "2.0", "3.0", "5.0", "+Inf"):
        bound = float(le)
        assert grew(f'callstream_turn_latency_seconds_bucket{{le="{le}"}}') == sum(x <= bound for x in latencies)
    assert grew("callstream_interruptions_total") == 1


def test_the_grafana_dashboard_plots_only_what_the_server_exports(server: ServerProcess) -> None:
    dashboard = orjson.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_bytes())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exported: set[str] = set()  # every family the server declares, sampled yet or not
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("# TYPE callstream_"):
            _, _, name, kind = line.split(" ")
            exported |= {name} | ({f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else set())
    used = {name for expr in exprs for name in re.findall(r"callstream_[a-z_]+", expr)}
    assert {"callstream_turn_latency_seconds_bucket", "callstream_interruptions_total",
            "callstream_connections", "callstream_events_delivered_total"} <= used  # fmt: skip
    assert used <= exported, used - exported
