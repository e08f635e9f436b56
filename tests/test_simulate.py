"""The simulator: the generator's shape (pure, no server), then whole runs against a tiny ingest.

The shape tests are what keeps demos and benchmarks honest: if a simulated call breaks the
protocol's conventions (partials that don't grow, a function.call without its result, two
call.ended), every dashboard and benchmark built on it would show or measure the wrong thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.server import ServerConnection as SyncConnection
from websockets.sync.server import serve as sync_serve

from callstream.events import AGENT_STATES, END_STATUSES, check_payload
from callstream.simulate import (
    WORDS_PER_SECOND,
    run_simulation,
    script_events,
    simulate_command,
)
from tests.helpers import ServerProcess, Supervisor, open_events, send, steady_seed

Event = tuple[float, str, dict[str, Any]]


def events(seed: int, speed: float = 1.0) -> list[Event]:
    return list(script_events("sim_0000abcd", random.Random(seed), speed))


def check_shape(evs: list[Event]) -> None:
    """Every convention docs/protocol.md ("Producing") gives producers, checked on one simulated call."""
    assert evs, "a call has at least its call.ended"
    types = [kind for _, kind, _ in evs]
    assert types.count("call.ended") == 1
    assert types[-1] == "call.ended"
    assert all(delay >= 0 for delay, _, _ in evs)
    for _, kind, data in evs:
        check_payload(kind, dict(data))  # the server's own validator accepts it
        assert not {"seq", "ts", "call_id"} & set(data), "the server assigns these"

    utterances: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for _, kind, data in evs:
        if kind.startswith("transcript."):
            utterances[data["utterance_id"]].append((kind, data))
    for items in utterances.values():
        *partials, (last_kind, final) = items
        assert last_kind == "transcript.final"
        assert partials, "every utterance is heard growing before it is final"
        assert all(kind == "transcript.partial" for kind, _ in partials)
        assert {d["speaker"] for _, d in items} == {final["speaker"]}
        words = final["text"].split()
        counts = [len(d["text"].split()) for _, d in partials]
        assert counts == sorted(set(counts)), "partials grow word by word"
        assert all(d["text"] == " ".join(words[: len(d["text"].split())]) for _, d in partials)

    calls: dict[str, str] = {}
    for i, (_, kind, data) in enumerate(evs):
        if kind == "function.call":
            assert data["tool_call_id"] not in calls
            calls[data["tool_call_id"]] = data["name"]
            _, next_kind, result = evs[i + 1]
            assert next_kind == "function.result"
            assert (result["tool_call_id"], result["name"]) == (data["tool_call_id"], data["name"])
    results = [d["tool_call_id"] for _, k, d in evs if k == "function.result"]
    assert sorted(results) == sorted(calls)

    states = [d["state"] for _, k, d in evs if k == "agent.state"]
    assert set(states) <= AGENT_STATES
    assert all(a != b for a, b in itertools.pairwise(states)), "only real changes"
    state = ""
    for _, kind, data in evs:
        if kind == "agent.state":
            state = data["state"]
        elif kind.startswith("transcript."):
            assert state == ("speaking" if data["speaker"] == "agent" else "listening")

    ended = evs[-1][2]
    assert ended["status"] in END_STATUSES
    assert ended["reason"]
    assert ended["duration_ms"] == pytest.approx(sum(d for d, _, _ in evs[1:]) * 1000, abs=1)


@pytest.mark.parametrize("seed", range(40))
def test_simulated_call_has_the_protocol_shape(seed: int) -> None:
    check_shape(events(seed))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**64), speed=st.floats(0.25, 100))
def test_shape_holds_for_any_seed_and_speed(seed: int, speed: float) -> None:
    check_shape(events(seed, speed))


def test_deterministic_under_a_seed() -> None:
    assert events(7) == events(7)
    assert events(7) != events(8)


def test_speed_scales_time_only() -> None:
    slow, fast = events(3, 1.0), events(3, 4.0)
    assert [(k, d) for _, k, d in slow][:-1] == [(k, d) for _, k, d in fast][:-1]
    assert sum(d for d, _, _ in fast) == pytest.approx(sum(d for d, _, _ in slow) / 4)


def test_partials_arrive_at_speaking_pace() -> None:
    gaps = [
        delay
        for seed in range(30)
        for (delay, kind, data), (_, prev_kind, _) in zip(
            events(seed)[1:], events(seed), strict=False
        )
        if kind == prev_kind == "transcript.partial"
    ]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / WORDS_PER_SECOND, rel=0.1)


def test_each_answer_reports_the_pipelines_metrics_and_takes_as_long_as_they_say() -> None:
    """STT after each user final; the LLM's first token, then the agent speaking once the TTS's
    first audio is out, each `metrics` event the time it reports; now and then a slow LLM."""
    llm_ttfbs: list[int] = []
    for seed in range(40):
        evs = events(seed)
        for i, (_, kind, data) in enumerate(evs):
            if kind == "transcript.final" and data["speaker"] == "user":
                _, next_kind, stt = evs[i + 1]
                assert (next_kind, stt["stage"]) == ("metrics", "stt")
                assert 120 <= stt["ttfb_ms"] <= 350
            if kind == "agent.state" and data["state"] == "speaking":
                (llm_delay, _, llm), (tts_delay, _, _), (_, _, tts) = evs[i - 1], evs[i], evs[i + 1]
                assert (llm["stage"], tts["stage"]) == ("llm", "tts")
                assert llm_delay * 1000 == pytest.approx(llm["ttfb_ms"], abs=1)
                assert tts_delay * 1000 == pytest.approx(tts["ttfb_ms"], abs=1)
                llm_ttfbs.append(llm["ttfb_ms"])
    slow = sum(ttfb > 1_000 for ttfb in llm_ttfbs)
    assert 0 < slow < len(llm_ttfbs) / 5


def test_scripts_and_endings_vary() -> None:
    first_lines: set[str] = set()
    statuses: Counter[str] = Counter()
    tools: set[str] = set()
    for seed in range(600):
        evs = events(seed)
        statuses[evs[-1][2]["status"]] += 1
        tools |= {d["name"] for _, k, d in evs if k == "function.call"}
        first_lines |= {d["text"] for _, k, d in evs if k == "transcript.final"}
    assert set(statuses) == END_STATUSES
    assert statuses.most_common(1)[0][0] == "completed"
    openings = {"Riverside Family Clinic", "Northwind Fiber", "Brightside Solar",
                "Trattoria Lucia", "Vista Mobile"}
    assert all(any(name in line for line in first_lines) for name in openings)
    assert {"check_availability", "book_appointment", "create_ticket", "transfer_call"} <= tools


def test_speed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speed"):
        next(script_events("sim_1", random.Random(1), 0))


# -- whole runs against a minimal ingest server ----------------------------------------------------


class Ingest:
    """Acks every event and records them per call: enough to play a simulation against."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.seq: Counter[str] = Counter()
        self.more = asyncio.Event()  # set on every event the async server receives

    def answer(self, raw: str | bytes) -> bytes:
        msg = orjson.loads(raw)
        self.calls[msg["call_id"]].append(msg)
        self.seq[msg["call_id"]] += 1
        return orjson.dumps({"type": "ack", "ref": msg["ref"], "seq": self.seq[msg["call_id"]]})

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            await ws.send(self.answer(raw).decode())
            self.more.set()

    def sync_handler(self, ws: SyncConnection) -> None:
        for raw in ws:
            ws.send(self.answer(raw).decode())

    def assert_every_call_ended_once(self) -> None:
        assert self.calls
        for call_id, msgs in self.calls.items():
            assert call_id.startswith("sim_")
            assert len(call_id) == 12
            assert [m["type"] for m in msgs].count("call.ended") == 1
            assert msgs[-1]["type"] == "call.ended"


@pytest.fixture
async def ingest() -> AsyncIterator[Ingest]:
    server = Ingest()
    async with serve(server.handler, "127.0.0.1", 0) as srv:
        server.url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        yield server


async def test_run_simulation_keeps_calls_going_and_ends_them(ingest: Ingest) -> None:
    seen: list[int] = []
    stats = await run_simulation(
        ingest.url, "k", calls=4, rate=None, speed=400, duration=0.8, seed=1,
        on_progress=lambda s: seen.append(s.events_sent),
    )
    assert stats.calls_started > 4, "a new call starts when one ends"
    assert stats.calls_ended == stats.calls_started
    assert stats.events_sent == stats.events_acked == sum(map(len, ingest.calls.values()))
    assert stats.errors == 0
    assert seen == list(range(1, stats.events_sent + 1))
    assert len(ingest.calls) == stats.calls_started
    ingest.assert_every_call_ended_once()


async def test_rate_limits_call_starts(ingest: Ingest) -> None:
    stats = await run_simulation(
        ingest.url, "k", calls=50, rate=20, speed=1, duration=0.5, seed=2, on_progress=None
    )
    assert 8 <= stats.calls_started <= 12
    ingest.assert_every_call_ended_once()
    reasons = Counter(m["data"]["reason"] for msgs in ingest.calls.values() for m in msgs
                      if m["type"] == "call.ended")
    assert reasons["simulation stopped"] >= 1  # calls still going were ended, not left live


async def test_cancelling_ends_every_started_call(ingest: Ingest) -> None:
    task = asyncio.create_task(run_simulation(
        ingest.url, "k", calls=5, rate=None, speed=1, duration=None, seed=3, on_progress=None
    ))
    while len(ingest.calls) < 5:
        ingest.more.clear()
        await ingest.more.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ingest.assert_every_call_ended_once()


@pytest.fixture
def threaded_ingest() -> Iterator[Ingest]:
    server = Ingest()
    with sync_serve(server.sync_handler, "127.0.0.1", 0) as srv:
        server.url = f"http://127.0.0.1:{srv.socket.getsockname()[1]}"
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield server
        srv.shutdown()
        thread.join(timeout=5)


def test_simulate_command_shows_a_live_view_and_a_summary(
    threaded_ingest: Ingest, capsys: pytest.CaptureFixture[str]
) -> None:
    simulate_command(threaded_ingest.url, "k", 3, None, 300, 0.7, 4, quiet=False)
    err = capsys.readouterr().err
    assert "calls live" in err
    assert "errors" in err
    assert "calls started" in err.splitlines()[-1]
    threaded_ingest.assert_every_call_ended_once()


# -- steering a live simulated call on a real server (docs/protocol.md, Live control) -----------------


@contextlib.asynccontextmanager
async def one_simulated_call(server: ServerProcess, key: str) -> AsyncIterator[tuple[Supervisor, str]]:
    """A simulation of one call, and a supervisor subscribed to it."""
    ws = await open_events(server, key)
    sup = Supervisor(ws)
    await send(ws, {"type": "subscribe", "call_id": "*"})
    await sup.until(lambda m: m["type"] == "subscribed")
    sim = asyncio.create_task(run_simulation(server.url, key, calls=1, speed=2, duration=120, seed=steady_seed()))
    try:
        first = await sup.until(lambda m: "seq" in m)
        yield sup, first["call_id"]
    finally:
        sim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim
        await ws.close()


def agent_final(text: str) -> Any:
    return lambda m: m["type"] == "transcript.final" and m["data"]["speaker"] == "agent" and m["data"]["text"] == text


async def test_the_simulated_agent_obeys_a_supervisor(server: ServerProcess, api_key: str) -> None:
    async with one_simulated_call(server, api_key) as (sup, call_id):
        await sup.done(call_id, "pause")  # the agent (greeting) is cut off and listens; the script holds
        held = [(m["type"], m["data"].get("state"), m["data"].get("interrupted")) for m in await sup.during(2.0)]
        cut_off = ("transcript.final", None, True)
        listening = ("agent.state", "listening", None)
        assert held in ([], [listening], [cut_off, listening])

        await sup.done(call_id, "say", text="A supervisor is on the line now.")
        said = await sup.until(agent_final("A supervisor is on the line now."))
        growing = [m["data"]["text"] for m in sup.events
                   if m["type"] == "transcript.partial" and m["data"]["utterance_id"] == said["data"]["utterance_id"]]
        assert growing == ["A", "A supervisor", "A supervisor is", "A supervisor is on", "A supervisor is on the",
                           "A supervisor is on the line"]

        # A long line, cut short at once by another: the first ends as far as it got, interrupted.
        long_line = "Please bear with me while I read out the full terms and conditions of your current plan."
        await sup.done(call_id, "say", text=long_line)
        started = await sup.until(lambda m: m["type"] == "transcript.partial" and m["data"]["speaker"] == "agent")
        await sup.done(call_id, "say", text="Actually, let me skip that.", interrupt=True)
        await sup.until(agent_final("Actually, let me skip that."))
        cut = [m["data"] for m in sup.events if m["type"] == "transcript.final"
               and m["data"]["utterance_id"] == started["data"]["utterance_id"]]
        assert len(cut) == 1
        assert cut[0]["interrupted"] is True
        assert long_line.startswith(cut[0]["text"])
        assert cut[0]["text"] != long_line

        await sup.done(call_id, "instruct", text="Mention the spring offer.")
        await sup.done(call_id, "resume")
        reply = await sup.until(lambda m: m["type"] == "transcript.final" and m["data"]["speaker"] == "agent")
        assert reply["data"]["text"].startswith("Mention the spring offer. ")  # its next scripted reply

        await sup.done(call_id, "end")
        ended = await sup.until(lambda m: m["type"] == "call.ended")
        assert (ended["data"]["status"], ended["data"]["reason"]) == ("completed", "ended by the supervisor")
        after = [m for m in await sup.during(1.0) if m["call_id"] == call_id]
        assert after == []  # nothing after the end (the simulation went on with a new call)
        seqs = [m["seq"] for m in sup.events if m["call_id"] == call_id]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_the_simulated_call_is_transferred_by_a_supervisor(server: ServerProcess, api_key: str) -> None:
    async with one_simulated_call(server, api_key) as (sup, call_id):
        await sup.done(call_id, "transfer", to="+14155550100", reason="wants a human")
        ended = await sup.until(lambda m: m["type"] == "call.ended")
        assert ended["data"]["status"] == "transferred"
        assert ended["data"]["reason"] == "transferred to +14155550100 by the supervisor: wants a human"
