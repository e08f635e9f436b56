"""A control request outlives a restart of the node that took it: every request still gets
exactly one `control.result` (docs/control.md). The embedded broker keeps the requests that wait
for a result in the node's memory; the restarted node reads them back from the store, takes the
producer's result while the request's deadline has not passed, and else publishes the timeout
(at once when the deadline passed while it was down). On Redis the requests and their deadlines
wait in Redis, and the restarted node times them out from there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.services import fresh_database
from tests.e2e.test_control import control, hold, producer
from tests.helpers import Cluster, ServerProcess, history, open_events, recv, recv_until, send

TIMEOUT = "CALLSTREAM_CONTROL_TIMEOUT_S"
SHORT_S = 2.0  # the control timeout of the tests that wait for it


@pytest.fixture(params=["sqlite", "postgresql"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """An embedded node (its broker in the process) on each store, not started: each test sets
    its control timeout first."""
    if request.param == "sqlite":
        server = ServerProcess(tmp_path, env={TIMEOUT: str(SHORT_S)})
        yield server
        server.stop()
        return
    with fresh_database() as database:
        server = ServerProcess(tmp_path, "--database", database.url, env={TIMEOUT: str(SHORT_S)})
        yield server
        server.stop()


def killed(node: ServerProcess) -> None:
    node.kill()


def stopped(node: ServerProcess) -> None:
    node.stop()


async def unanswered(node: ServerProcess, key: str, call_id: str, down: Callable[[ServerProcess], None]) -> dict[str, Any]:
    """The ack of a request its producer received and did not answer before the node went `down`."""
    async with await producer(node, key) as agent, await open_events(node, key) as supervisor:
        await hold(agent, call_id)
        ack = await control(supervisor, call_id, "say", text="Are you still there?")
        assert ack["type"] == "control_ack", ack
        assert (await recv(agent))["request_id"] == ack["data"]["request_id"]
        down(node)
    data: dict[str, Any] = ack["data"]
    return data


async def result_seen(node: ServerProcess, key: str, call_id: str, since: int) -> dict[str, Any]:
    """The first `control.result` a subscriber resuming after `since` sees (replayed or live)."""
    async with await open_events(node, key) as watcher:
        await send(watcher, {"type": "subscribe", "call_id": call_id, "since": since})
        seen = await recv_until(watcher, "control.result", 30)
    data: dict[str, Any] = seen[-1]["data"]
    return data


async def late_answer_refused(node: ServerProcess, key: str, call_id: str, request_id: str) -> None:
    """The request has its result: the producer's own, sent now, is refused."""
    async with await producer(node, key) as agent:
        result = {"request_id": request_id, "ok": True}
        await send(agent, {"call_id": call_id, "type": "control.result", "data": result, "ref": 9})
        refusal = await recv(agent)
        assert (refusal["type"], refusal["ref"], refusal["data"]["code"]) == ("error", 9, "invalid_message")


def results(node: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in history(node, key, call_id) if e["type"] == "control.result"]


async def stored_results(node: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    """The call's stored results once there is one: on Redis an event is delivered before its
    commit, so the store may hold it a moment after a subscriber saw it (15 s at most)."""
    settle_by = time.monotonic() + 15
    while not (found := results(node, key, call_id)) and time.monotonic() < settle_by:
        await asyncio.sleep(0.2)
    return found


@pytest.mark.parametrize(
    ("down", "timeout_s", "wait_s"),
    [(killed, 3 * SHORT_S, 0.0), (stopped, SHORT_S, SHORT_S)],
    ids=["sigkill-deadline-after-restart", "sigterm-deadline-passed-while-down"],
)
async def test_a_request_left_waiting_by_a_restart_times_out_once(
    node: ServerProcess, call_id: str, down: Callable[[ServerProcess], None], timeout_s: float, wait_s: float
) -> None:
    node.env[TIMEOUT] = str(timeout_s)
    node.start()
    key = node.create_key("ctl")
    ack = await unanswered(node, key, call_id, down)
    await asyncio.sleep(wait_s)  # the deadline passes while no node runs
    node.start()
    timed_out = {"request_id": ack["request_id"], "ok": False, "error": "timeout"}
    assert await result_seen(node, key, call_id, ack["seq"]) == timed_out
    await late_answer_refused(node, key, call_id, ack["request_id"])
    assert results(node, key, call_id) == [timed_out]


async def test_the_producer_answers_a_request_made_before_the_restart(node: ServerProcess, call_id: str) -> None:
    node.env[TIMEOUT] = "60"  # its deadline is well after the restart
    node.start()
    key = node.create_key("ctl")
    ack = await unanswered(node, key, call_id, killed)
    node.start()
    done = {"request_id": ack["request_id"], "ok": True}
    async with await producer(node, key) as agent:  # the producer reconnects and answers
        await send(agent, {"call_id": call_id, "type": "control.result", "data": done, "ref": 2})
        assert (await recv(agent))["type"] == "ack"
    assert await result_seen(node, key, call_id, ack["seq"]) == done
    assert results(node, key, call_id) == [done]


async def test_a_call_that_ends_after_the_restart_settles_the_request(node: ServerProcess, call_id: str) -> None:
    node.env[TIMEOUT] = "60"
    node.start()
    key = node.create_key("ctl")
    ack = await unanswered(node, key, call_id, killed)
    node.start()
    async with await producer(node, key) as agent:
        ending = {"type": "call.ended", "data": {"status": "completed", "duration_ms": 1000}}
        await send(agent, {"call_id": call_id, **ending, "ref": 3})
        assert (await recv(agent))["type"] == "ack"
    settled = {"request_id": ack["request_id"], "ok": False, "error": "call_ended"}
    last_two = history(node, key, call_id)[-2:]
    assert [e["type"] for e in last_two] == ["control.result", "call.ended"]
    assert last_two[0]["data"] == settled


@pytest.mark.redis
@pytest.mark.postgres
async def test_on_redis_a_restarted_node_times_out_what_waits_in_redis(
    cluster: Cluster, account: str, call_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TIMEOUT, str(SHORT_S))
    (node,) = cluster.start(1)
    key = cluster.key(account)
    ack = await unanswered(node, key, call_id, killed)
    node.start()
    timed_out = {"request_id": ack["request_id"], "ok": False, "error": "timeout"}
    assert await result_seen(node, key, call_id, ack["seq"]) == timed_out
    await late_answer_refused(node, key, call_id, ack["request_id"])
    assert await stored_results(node, key, call_id) == [timed_out]
