"""`callstream tail` as a user runs it: a subprocess against a real server.

`--json` must print exactly the server's event messages (what a raw /v1/events subscriber gets),
one per line, flushed as they come, for named calls and for `--all`; Ctrl-C must exit 0 without
a traceback. The live view is checked by rendering it to a recorded console.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from callstream.client import Client, parse_message
from callstream.tail import TailView
from tests.helpers import (
    ServerProcess,
    ended,
    final,
    free_port,
    open_events,
    partial,
    publish,
    recv_until,
    run_async,
    send,
)


def _as_from_a_terminal() -> None:
    """Ctrl-C reaches the command as it does from a terminal, whatever this worker's own signal
    state (a process started in the background, or with SIGINT blocked, would pass that on)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class Tail:
    """A running `callstream tail` whose stdout lines are read on a thread (for timeouts)."""

    def __init__(self, server: ServerProcess, key: str, *args: str) -> None:
        command = [sys.executable, "-m", "callstream", "tail", "--url", server.url, "--key", key, *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal
        )
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [self.lines.put(ln) for ln in stdout], daemon=True).start()

    def next(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_until_printing(self, server: ServerProcess, key: str, warm_call: str) -> None:
        """tail prints events only: publish to a warm-up call until one shows up."""
        deadline = time.monotonic() + 20
        while self.next(0.3) is None:
            assert time.monotonic() < deadline, "tail never printed anything"
            assert self.proc.poll() is None, self.stderr()
            publish(server, key, warm_call, final("warm-up"))

    def messages_of(self, call_id: str, count: int) -> list[dict[str, Any]]:
        printed: list[dict[str, Any]] = []
        while len(printed) < count:
            line = self.next(10)
            assert line is not None, f"tail printed only {printed}"
            message = orjson.loads(line)  # every line is one JSON object
            if message["call_id"] == call_id:
                printed.append(message)
        return printed

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.close()


BATCH = [
    partial("hel", utterance_id="u1"),
    final("hello there", utterance_id="u1"),
    {"type": "agent.state", "data": {"state": "thinking"}},
    {"type": "function.call", "data": {"name": "lookup", "args": {"id": 7}, "tool_call_id": "t1"}},
    {"type": "function.result", "data": {"name": "lookup", "result": {"ok": True}, "tool_call_id": "t1"}},
    ended("completed", 2500),
]


def raw_history(server: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    """What a plain /v1/events subscriber with since=0 receives: the reference for --json."""

    async def read() -> list[dict[str, Any]]:
        ws = await open_events(server, key)
        try:
            await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
            return [m for m in await recv_until(ws, "subscribed") if "seq" in m]
        finally:
            await ws.close()

    result: list[dict[str, Any]] = run_async(read())
    return result


@pytest.mark.parametrize("mode", ["call_ids", "all"])
def test_tail_json_prints_exactly_the_published_events(
    server: ServerProcess, other_key: str, call_id: str, mode: str, tails: list[Tail]
) -> None:
    warm = call_id + "_warm"
    args = ["--all"] if mode == "all" else [call_id, warm]
    tail = Tail(server, other_key, "--json", *args)
    tails.append(tail)
    tail.wait_until_printing(server, other_key, warm)
    assert publish(server, other_key, call_id, BATCH).json()["seq"] == [1, 2, 3, 4, 5, 6]
    printed = tail.messages_of(call_id, len(BATCH))
    assert [(m["type"], m["seq"]) for m in printed] == [(e["type"], i) for i, e in enumerate(BATCH, 1)]
    for message, event in zip(printed, BATCH, strict=True):
        assert set(message) == {"type", "call_id", "seq", "ts", "data"}
        assert {k: message["data"][k] for k in event["data"]} == event["data"]
    stored = raw_history(server, other_key, call_id)  # the partial is not held once superseded
    assert [m for m in printed if m["type"] != "transcript.partial"] == stored


def test_tail_of_a_named_call_starts_with_the_call_so_far(
    server: ServerProcess, other_key: str, call_id: str, tails: list[Tail]
) -> None:
    publish(server, other_key, call_id, [final("said before tail started"), final("and this")])
    tail = Tail(server, other_key, "--json", call_id)
    tails.append(tail)
    assert [m["data"]["text"] for m in tail.messages_of(call_id, 2)] == ["said before tail started", "and this"]
    publish(server, other_key, call_id, final("live now"))
    assert [m["seq"] for m in tail.messages_of(call_id, 1)] == [3]


def test_tail_sigint_exits_0_quietly(server: ServerProcess, other_key: str, call_id: str, tails: list[Tail]) -> None:
    tail = Tail(server, other_key, "--json", call_id)
    tails.append(tail)
    tail.wait_until_printing(server, other_key, call_id)
    tail.proc.send_signal(signal.SIGINT)
    try:
        assert tail.proc.wait(10) == 0
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{tail.proc.pid}/status").read_text().splitlines()
        pytest.fail(f"tail still runs 10 s after Ctrl-C: {[line for line in status if line.startswith('Sig')]}")
    assert tail.proc.stderr is not None
    assert "Traceback" not in tail.proc.stderr.read()


def test_tail_plain_lines_when_stdout_is_not_a_terminal(
    server: ServerProcess, other_key: str, call_id: str, tails: list[Tail]
) -> None:
    tail = Tail(server, other_key, call_id)
    tails.append(tail)
    tail.wait_until_printing(server, other_key, call_id)
    publish(server, other_key, call_id, [final("bye now"), ended("completed", 4200)])
    lines: list[str] = []
    while not lines or "call ended" not in lines[-1]:
        line = tail.next(10)
        assert line is not None, lines
        lines.append(line)
    assert f"{call_id}  user ·+0.00 bye now" in lines[-2]
    assert f"{call_id} ■ call ended: completed · 4.2 s" in lines[-1]


def test_tail_with_a_refused_key_exits_1(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "callstream", "tail", "--url", server.url, "--key", "cs_nope", "--all"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "unauthorized" in result.stderr


def test_live_view_replaces_partials_with_finals_and_shows_state_tools_and_end() -> None:
    view = TailView()
    messages = [
        {"type": "transcript.partial", "call_id": "c1", "seq": 1, "ts": 1,
         "data": {"speaker": "user", "text": "I need to", "utterance_id": "u1"}},
        {"type": "transcript.partial", "call_id": "c1", "seq": 2, "ts": 1,
         "data": {"speaker": "agent", "text": "One mom", "utterance_id": "a1"}},
        {"type": "transcript.final", "call_id": "c1", "seq": 3, "ts": 1,
         "data": {"speaker": "user", "text": "I need to reschedule", "utterance_id": "u1",
                  "sentiment": {"label": "negative", "score": -0.42}}},
        {"type": "agent.state", "call_id": "c1", "seq": 4, "ts": 1, "data": {"state": "thinking"}},
        {"type": "function.call", "call_id": "c1", "seq": 5, "ts": 1,
         "data": {"name": "find_booking", "args": {"id": 3}, "tool_call_id": "t"}},
        {"type": "transcript.final", "call_id": "c2", "seq": 1, "ts": 1, "data": {"speaker": "user", "text": "hi"}},
        {"type": "call.ended", "call_id": "c2", "seq": 2, "ts": 1, "data": {"status": "failed", "duration_ms": 1500}},
    ]
    for message in messages:
        view.apply(parse_message(message))
    console = Console(record=True, width=100, height=30, color_system=None)
    console.print(view)
    screen = console.export_text()
    assert "I need to reschedule" in screen
    assert "I need to…" not in screen
    assert "One mom…" in screen  # still in progress
    assert "▼-0.42 I need to reschedule" in screen
    assert "agent thinking" in screen
    assert 'find_booking({"id":3})' in screen
    assert "call ended: failed · 1.5 s" in screen
    assert screen.index("c1") < screen.index("c2")  # live calls above ended ones


def test_live_view_marks_each_turns_latency_and_sums_the_calls_turns() -> None:
    view = TailView()
    for seq, data in enumerate([
        {"state": "speaking", "latency_ms": 640},
        {"state": "listening", "interrupted": True},
        {"state": "speaking", "latency_ms": 2_300},
        {"state": "listening"},
    ], 1):  # fmt: skip
        view.apply(parse_message({"type": "agent.state", "call_id": "c1", "seq": seq, "ts": 1, "data": data}))
    console = Console(record=True, width=100, height=30, color_system=None)
    console.print(view)
    screen = console.export_text()
    assert "⏱ 640 ms" in screen
    assert "✂ interrupted by the user" in screen
    assert "⏱ 2.3 s" in screen
    assert "· 2.3 s p90 2.3 s · 2 turns · 1 ✂" in screen  # the last, the p90, the count


async def test_the_live_view_says_why_it_is_reconnecting() -> None:
    port = free_port()  # nothing listens there
    async with Client(f"http://127.0.0.1:{port}", "cs_whatever") as client:
        console = Console(width=200, record=True)
        console.print(TailView(client))
    header = console.export_text().splitlines()[0]
    assert header.endswith(f"reconnecting… (cannot reach 127.0.0.1:{port}: connection refused)"), header
