"""Helpers for testing code that produces or consumes callstream events (public API).

A program built on callstream is best tested against the real thing, not a mock of it: the
ordering, replay and reconnect behaviour are what the program relies on. Starting the embedded
server takes well under a second, so these helpers run a real one in-process::

    from callstream import Client
    from callstream.testing import run_server, publish, transcript_final, call_ended

    def test_my_consumer(tmp_path):
        with run_server(tmp_path) as server:
            publish(server.url, server.key, "call_1", [transcript_final("hi"), call_ended()])
            ...  # point the code under test at server.url with server.key

The event builders return ``{"type", "data"}`` objects exactly as ``POST
/v1/calls/{id}/events`` and :class:`callstream.Publisher` take them; :func:`server_event`
builds the typed :class:`callstream.client.Event` a :class:`~callstream.Client` would yield,
for unit tests that need no server at all.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from callstream.client import Event, parse_message

__all__ = [
    "RunningServer",
    "agent_state",
    "call_ended",
    "function_call",
    "function_result",
    "metrics",
    "publish",
    "run_server",
    "server_event",
    "transcript_final",
    "transcript_partial",
]

ALL_SCOPES = ("publish", "subscribe", "control", "listen", "admin")


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server started by :func:`run_server`: where it listens and a key of its account."""

    url: str
    key: str
    account: str
    data_dir: Path

    def publish(self, call_id: str, events: dict[str, Any] | Sequence[dict[str, Any]]) -> list[int]:
        """Publish to this server with its key; see :func:`publish`."""
        return publish(self.url, self.key, call_id, events)


@contextmanager
def run_server(
    data_dir: str | Path,
    *,
    account: str = "test",
    scopes: Iterable[str] = ALL_SCOPES,
    start_timeout: float = 30.0,
    **settings: Any,
) -> Iterator[RunningServer]:
    """Run a real callstream server in a background thread on a free loopback port.

    Yields a :class:`RunningServer` with ``url`` and an API ``key`` of ``account``. The store
    lives under ``data_dir`` (pytest's ``tmp_path`` fits). ``settings`` are
    :class:`callstream.settings.Settings` fields (``sentiment=False``,
    ``outbox_high_water=4096``, …). The server has its own event loop, so this works from sync
    tests and from async ones alike, and the code under test talks to it over real sockets.
    """
    from callstream.server.serve import DrainingServer, bound_port, build_server
    from callstream.settings import Settings

    config = Settings(**{"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir), **settings})
    loop = asyncio.new_event_loop()
    server: DrainingServer = build_server(config)
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:  # reported to the caller, not lost in the thread
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="callstream-test-server", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread, failure, start_timeout)
        create = server.runtime.store.create_key(account, frozenset(scopes), name="testing")
        _, key = asyncio.run_coroutine_threadsafe(create, loop).result(start_timeout)
        url = f"http://127.0.0.1:{bound_port(server)}"
        yield RunningServer(url=url, key=key, account=account, data_dir=Path(data_dir))
    finally:
        server.should_exit = True
        thread.join(start_timeout)


def _wait_started(server: Any, thread: threading.Thread, failure: list[BaseException], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if failure or not thread.is_alive():
            msg = f"the callstream server did not start: {failure[0] if failure else 'thread ended'!r}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            msg = f"the callstream server did not start within {timeout} s"
            raise TimeoutError(msg)
        time.sleep(0.01)


def publish(
    url: str, key: str, call_id: str, events: dict[str, Any] | Sequence[dict[str, Any]]
) -> list[int]:
    """Publish one event or a batch over REST and return the seqs the server gave them.

    Raises ``httpx.HTTPStatusError`` when the server refuses (its body says why), so a test
    fails at the line that published something invalid.
    """
    response = httpx.post(
        f"{url.rstrip('/')}/v1/calls/{call_id}/events",
        content=orjson.dumps(events),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json()["seq"])


# -- event builders: what a producer publishes --------------------------------------------------


def transcript_partial(text: str, speaker: str = "user", **extra: Any) -> dict[str, Any]:
    """A ``transcript.partial``; pass ``utterance_id=`` to pair it with its final."""
    return {"type": "transcript.partial", "data": {"speaker": speaker, "text": text, **extra}}


def transcript_final(text: str, speaker: str = "user", **extra: Any) -> dict[str, Any]:
    """A ``transcript.final`` (the server adds ``sentiment`` unless run with sentiment off)."""
    return {"type": "transcript.final", "data": {"speaker": speaker, "text": text, **extra}}


def agent_state(state: str, **extra: Any) -> dict[str, Any]:
    """An ``agent.state``: ``listening``, ``thinking`` or ``speaking``."""
    return {"type": "agent.state", "data": {"state": state, **extra}}


def metrics(stage: str, ttfb_ms: float | None = None, duration_ms: float | None = None, **extra: Any) -> dict[str, Any]:
    """A ``metrics`` event: the producer's own figures for one stage (``stt``, ``llm``, ``tts``, …)."""
    data: dict[str, Any] = {"stage": stage, **extra}
    if ttfb_ms is not None:
        data["ttfb_ms"] = ttfb_ms
    if duration_ms is not None:
        data["duration_ms"] = duration_ms
    return {"type": "metrics", "data": data}


def function_call(name: str, args: Any = None, tool_call_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``function.call``; ``tool_call_id`` pairs it with its result."""
    data = {"name": name, "args": args if args is not None else {}, **extra}
    if tool_call_id is not None:
        data["tool_call_id"] = tool_call_id
    return {"type": "function.call", "data": data}


def function_result(name: str, result: Any, tool_call_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``function.result``."""
    data = {"name": name, "result": result, **extra}
    if tool_call_id is not None:
        data["tool_call_id"] = tool_call_id
    return {"type": "function.result", "data": data}


def call_ended(status: str = "completed", duration_ms: int = 0, reason: str | None = None) -> dict[str, Any]:
    """A ``call.ended``; the last event a call accepts."""
    data: dict[str, Any] = {"status": status, "duration_ms": duration_ms}
    if reason is not None:
        data["reason"] = reason
    return {"type": "call.ended", "data": data}


def server_event(event: dict[str, Any], call_id: str, seq: int, ts: int | None = None) -> Event:
    """The typed event a :class:`~callstream.Client` yields for ``event`` (from the builders).

    For unit tests of consumer code: ``handle(server_event(transcript_final("hi"), "c1", 1))``.
    """
    data = dict(event["data"])
    if event["type"] in ("transcript.partial", "transcript.final"):
        data.setdefault("is_final", event["type"] == "transcript.final")
    message = {
        "type": event["type"],
        "call_id": call_id,
        "seq": seq,
        "ts": ts if ts is not None else int(time.time() * 1000),
        "data": data,
    }
    return parse_message(message)
