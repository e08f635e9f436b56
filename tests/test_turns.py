"""The turn tracker on scripted calls: every edge case docs/quality.md defines, and properties."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.broker.memory import MemoryBroker
from callstream.events import CallState, Event, NewEvent
from callstream.turns import ENDS, NOT_SPEAKING, SPEAKING, USER_FINAL, USER_PARTIAL, Marks, role
from tests.turn_scripts import ENDED, agent_says, measure, state, user


def latencies(datas: list[dict[str, Any]]) -> list[int]:
    return [d["latency_ms"] for d in datas if "latency_ms" in d]


def interrupted(datas: list[dict[str, Any]]) -> list[int]:
    return [i for i, d in enumerate(datas) if d.get("interrupted") is True]


def talk(marks: list[Marks | None]) -> tuple[int, int]:
    return sum(m.agent_ms for m in marks if m), sum(m.user_ms for m in marks if m)


def test_a_turn_is_measured_from_the_user_final_to_the_agent_speaking() -> None:
    datas, marks = measure(
        (0, user("I need", final=False)),
        (900, user("I need help")),
        (1000, state("thinking")),
        (1750, state("speaking")),
        (4750, state("listening")),
    )
    assert datas[3] == {"state": "speaking", "latency_ms": 850}
    assert latencies(datas) == [850]
    assert interrupted(datas) == []
    assert talk(marks) == (3000, 900)  # agent: speaking → listening; user: first partial → final


def test_partials_only_are_no_turn() -> None:
    datas, marks = measure(
        (0, user("hel", final=False)),
        (400, user("hello th", final=False)),
        (1200, state("speaking")),
        (2000, state("listening")),
    )
    assert latencies(datas) == []
    assert interrupted(datas) == []  # the user spoke before the agent, not over it
    datas, marks = measure((0, user("hel", final=False)), (700, user("hello", final=False)), (1500, ENDED))
    assert talk(marks) == (0, 1500)  # the utterance the call's end cut off still counts as talk


def test_consecutive_finals_are_one_turn_measured_from_the_last() -> None:
    datas, _ = measure(
        (0, user("Hi.")),
        (2000, user("I want to change my booking.")),
        (2600, state("speaking")),
    )
    assert latencies(datas) == [600]


def test_the_agent_speaking_first_is_no_turn() -> None:
    datas, marks = measure(
        (0, state("speaking")),
        (3000, state("listening")),
        (5000, user("Hello?")),
        (5400, state("speaking")),
    )
    assert datas[0] == {"state": "speaking"}
    assert latencies(datas) == [400]  # only the answer to the user counts
    assert talk(marks)[0] == 3000


def test_the_agent_stopping_on_its_own_is_not_an_interruption() -> None:
    datas, _ = measure(
        (0, user("What time is it?")),
        (500, state("speaking")),
        (800, agent_says("It is", final=False)),  # the agent's own words are not the user's
        (2000, agent_says("It is noon.")),
        (2100, state("listening")),
    )
    assert datas[-1] == {"state": "listening"}
    assert interrupted(datas) == []


def test_the_user_speaking_over_the_agent_interrupts_it() -> None:
    datas, marks = measure(
        (0, user("Book a table")),
        (700, state("speaking")),
        (1500, user("no wa", final=False)),
        (1700, state("listening")),
        (2500, user("no wait, tomorrow")),
        (3100, state("speaking")),
        (5000, state("listening")),
    )
    assert interrupted(datas) == [3]
    assert datas[3] == {"state": "listening", "interrupted": True}
    assert latencies(datas) == [700, 600]  # the interruption's final is answered like any other
    assert talk(marks) == (1000 + 1900, 1000)


def test_a_final_alone_over_the_agent_interrupts_it_too() -> None:
    datas, _ = measure((0, state("speaking")), (500, user("Stop.")), (600, state("thinking")))
    assert interrupted(datas) == [2]


def test_speaking_again_while_speaking_is_not_a_new_turn() -> None:
    datas, marks = measure(
        (0, user("Hi")),
        (300, state("speaking")),
        (900, state("speaking")),
        (1500, state("listening")),
    )
    assert latencies(datas) == [300]
    assert talk(marks)[0] == 1200


def test_the_call_ending_while_the_agent_speaks_closes_its_talk_without_interruption() -> None:
    datas, marks = measure((0, state("speaking")), (200, user("bye", final=False)), (900, ENDED))
    assert interrupted(datas) == []
    assert talk(marks) == (900, 700)


def test_a_clock_that_steps_back_never_makes_a_negative_figure() -> None:
    datas, marks = measure((5000, user("Hi")), (4000, state("speaking")), (3000, state("listening")))
    assert latencies(datas) == [0]
    assert talk(marks) == (0, 0)


def test_only_user_speech_agent_state_and_the_end_take_part() -> None:
    assert role("function.call", {"name": "x"}) == ""
    assert role("metrics", {"stage": "llm"}) == ""
    assert role("transcript.final", {"speaker": "agent"}) == ""
    assert [role(*user("x", final=False)), role(*user("x")), role(*state("speaking")), role(*state("thinking"))] == [
        USER_PARTIAL, USER_FINAL, SPEAKING, NOT_SPEAKING,
    ]
    assert role(*ENDED) == ENDS


def test_figures_read_back_from_data() -> None:
    assert Marks.of_data("agent.state", {"state": "speaking", "latency_ms": 640}) == Marks(640)
    assert Marks.of_data("agent.state", {"state": "listening", "interrupted": True}) == Marks(None, True)
    assert Marks.of_data("agent.state", {"state": "listening"}) is None
    assert Marks.of_data("transcript.final", {"latency_ms": 3}) is None


# ---- properties ---------------------------------------------------------------------------

PARTS = [USER_PARTIAL, USER_FINAL, SPEAKING, NOT_SPEAKING]
EVENT_OF = {
    USER_PARTIAL: user("so", final=False),
    USER_FINAL: user("so then"),
    SPEAKING: state("speaking"),
    NOT_SPEAKING: state("listening"),
    "x": agent_says("sure"),
}
scripts = st.lists(st.tuples(st.sampled_from([*PARTS, "x"]), st.integers(-2_000, 5_000)), max_size=60)


@given(scripts)
def test_no_figure_is_ever_negative_and_each_latency_answers_one_final(script: list[tuple[str, int]]) -> None:
    ts, steps = 1_700_000_000_000, []
    for part, dt in script:
        ts += dt  # the server's clock may step back (NTP): nothing measured may go negative
        steps.append((ts, EVENT_OF[part]))
    steps.append((ts + 1, ENDED))
    datas, marks = measure(*steps)
    assert all(latency >= 0 for latency in latencies(datas))
    assert all(m.agent_ms >= 0 and m.user_ms >= 0 for m in marks if m)
    assert len(latencies(datas)) <= sum(1 for part, _ in script if part == USER_FINAL)
    for data in datas:
        assert ("latency_ms" in data) <= (data.get("state") == "speaking")
        assert ("interrupted" in data) <= (data.get("state") in ("listening", "thinking"))


@settings(max_examples=40, deadline=None)
@given(scripts, st.lists(st.integers(1, 6), min_size=1, max_size=20))
def test_replay_carries_the_figures_subscribers_got_live(script: list[tuple[str, int]], sizes: list[int]) -> None:
    """Through the real (memory) broker, in batches of any size: what was delivered live, what
    the publisher was answered and what a `since` replay returns carry the same figures, and
    they are the tracker's over the events' own ts."""

    async def run() -> tuple[list[Event], list[Event], list[Event]]:
        delivered: list[Event] = []

        async def load(account: str, call_id: str) -> CallState | None:
            return None

        broker = MemoryBroker()
        await broker.start(delivered.extend, load)
        try:
            news = [NewEvent("c1", kind, dict(data)) for kind, data in (EVENT_OF[part] for part, _ in script)]
            news.append(NewEvent("c1", *ENDED))
            answered: list[Event] = []
            at, turn = 0, 0
            while at < len(news):
                size = sizes[turn % len(sizes)]
                answered += await broker.publish("acme", news[at : at + size])
                at, turn = at + size, turn + 1
                await asyncio.sleep(0.001 * (turn % 3))  # some batches a ms apart, some not
            replayed = (await broker.history("acme", "c1", 0)).events
        finally:
            await broker.close()
        return answered, delivered, replayed

    answered, delivered, replayed = asyncio.run(run())
    figures = [(e.seq, e.data.get("latency_ms"), e.data.get("interrupted")) for e in answered]
    assert [(e.seq, e.data.get("latency_ms"), e.data.get("interrupted")) for e in delivered] == figures
    kept = {e.seq for e in replayed}  # superseded partials are not replayed; every other event is
    assert [(e.seq, e.data.get("latency_ms"), e.data.get("interrupted")) for e in replayed] == [
        f for f in figures if f[0] in kept
    ]
    datas, marks = measure(*((e.ts, (e.type, e.data)) for e in answered))
    assert datas == [e.data for e in answered]
    assert marks == [e.marks for e in answered]
