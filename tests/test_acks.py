"""The ingest socket's ack line (docs/protocol.md, Producing: acks in order, each once its event is durable),
driven without sockets: futures stand for the store's commits, a list for the clock."""

from __future__ import annotations

import asyncio

import orjson

from callstream.acks import AckLine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(line: AckLine) -> list[dict[str, object]]:
    return [orjson.loads(m) for m in line.due()]


async def test_an_ack_waits_for_its_commit() -> None:
    line = AckLine(10.0, Clock())
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    line.add([("r1", 1, "c1"), ("r2", 2, "c1")], durable)
    assert line.due() == []
    assert len(line) == 1
    durable.set_result(None)
    assert messages(line) == [{"type": "ack", "ref": "r1", "seq": 1}, {"type": "ack", "ref": "r2", "seq": 2}]
    assert len(line) == 0
    assert line.due() == []  # each ack leaves once


async def test_no_ack_overtakes_an_earlier_frame_still_waiting() -> None:
    loop = asyncio.get_running_loop()
    line = AckLine(10.0, Clock())
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[None] = loop.create_future()
    line.add([(1, 1, "c1")], first)
    line.add([(2, 2, "c1")], second)
    second.set_result(None)
    assert line.due() == []
    first.set_result(None)
    assert [m["ref"] for m in messages(line)] == [1, 2]


async def test_a_failed_commit_answers_each_ref_with_an_error() -> None:
    line = AckLine(10.0, Clock())
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    line.add([("a", 1, "c1"), ("b", 2, "c2")], durable)
    durable.set_exception(RuntimeError("disk full"))
    got = messages(line)
    assert [m["ref"] for m in got] == ["a", "b"]
    assert all(m["type"] == "error" and m["data"]["code"] == "internal" for m in got)  # type: ignore[index]
    assert "not stored: disk full" in got[0]["data"]["message"]  # type: ignore[index]


async def test_a_commit_slower_than_the_timeout_gets_an_error_and_its_late_ack_is_dropped() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock()
    line = AckLine(10.0, clock)
    hung: asyncio.Future[None] = loop.create_future()
    later: asyncio.Future[None] = loop.create_future()
    line.add([("slow", 1, "c1")], hung)
    clock.now += 4
    line.add([("next", 2, "c1")], later)
    assert line.next_deadline() == 110.0
    clock.now = 109.9
    assert line.due() == []
    clock.now = 110.0
    got = messages(line)
    assert [(m["type"], m["ref"]) for m in got] == [("error", "slow")]
    assert "did not commit within 10 s" in got[0]["data"]["message"]  # type: ignore[index]
    assert line.next_deadline() == 114.0  # the next frame keeps its own deadline
    hung.set_result(None)
    later.set_result(None)
    assert messages(line) == [{"type": "ack", "ref": "next", "seq": 2}]  # nothing more for "slow"
    assert line.next_deadline() is None


async def test_a_commit_that_failed_some_calls_acks_the_others() -> None:
    """One frame, two calls, and the store refused one of them: the other's events were stored
    (and fanned out), so they are acked; a resend of them would store them twice."""

    class CallsFailedError(Exception):
        calls = frozenset({("acme", "bad")})

    line = AckLine(10.0, Clock())
    durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    line.add([("g1", 1, "good"), ("b1", 1, "bad"), ("g2", 2, "good")], durable)
    durable.set_exception(CallsFailedError("call bad could not be stored"))
    got = messages(line)
    assert [(m["type"], m["ref"]) for m in got] == [("ack", "g1"), ("error", "b1"), ("ack", "g2")]
    assert got[1]["call_id"] == "bad"
