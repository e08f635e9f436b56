"""What `callstream.server.transport` relies on inside uvicorn and websockets, checked on the
installed versions.

`CallstreamWebSocketProtocol` subclasses uvicorn's sans-I/O WebSocket protocol: it overrides some
of its methods and reads and replaces its state, none of which is uvicorn's public API. An
upgrade that renames a hook would leave our override silently unused; one that reshapes the
state would break the events socket at run time. These tests fail first, naming what changed.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from uvicorn.protocols.websockets import websockets_sansio_impl
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.protocol import State
from websockets.server import ServerProtocol

from callstream.events import text_frame
from callstream.server.serve import bound_port, run_forever
from callstream.server.transport import FRAME_WRITER, CallstreamWebSocketProtocol

BASE = WebSocketsSansIOProtocol
UVICORN = f"uvicorn {uvicorn.__version__}"
WEBSOCKETS = f"websockets {websockets.__version__}"
RELIES = "which callstream.server.transport relies on"

# uvicorn's methods that CallstreamWebSocketProtocol overrides, with the parameters it passes on.
HOOKS: dict[str, list[str]] = {
    "__init__": ["self", "config", "server_state", "app_state", "_loop"],
    "pause_writing": ["self"],
    "resume_writing": ["self"],
    "connection_lost": ["self", "exc"],
    "handle_close": ["self", "event"],
    "shutdown": ["self"],
    "send": ["self", "message"],
    "handle_bytes": ["self", "event"],
}
# What CallstreamWebSocketProtocol adds: uvicorn must not define (and so start calling) these.
OWN = {
    "close_sent",  # a property over uvicorn's plain attribute, so that every change is seen
    "frames_open",
    "_changed",
    "write_frames",
    "_abort_if_open",
    "_refusing",
    "_hold_refusal",
    "_log_refusal",
    "_send_refusal",
}
# uvicorn's instance state that transport.py reads, and what it must be once constructed.
STATE: dict[str, type | tuple[type, ...]] = {
    "conn": ServerProtocol,
    "close_sent": bool,
    "handshake_complete": bool,
    "writable": asyncio.Event,
    "loop": asyncio.AbstractEventLoop,
    "initial_response": type(None),
    "logger": logging.Logger,
}
# What transport.py calls on `.transport` (uvloop's, which is no `asyncio.Transport` subclass).
TRANSPORT_METHODS = ("write", "is_closing", "get_write_buffer_size", "abort")
# The methods of `asyncio.Queue` that transport's `_ReceiveQueue` stands in for.
QUEUE_METHODS = {"put_nowait", "get", "empty"}


def _class_members(cls: type) -> set[str]:
    return {name for name in vars(cls) if not (name.startswith("__") and name != "__init__")}


def test_every_member_of_the_subclass_is_a_listed_hook_or_its_own() -> None:
    """Keeps this contract complete: a new override must be listed in HOOKS (or OWN)."""
    unlisted = _class_members(CallstreamWebSocketProtocol) - HOOKS.keys() - OWN
    assert not unlisted, f"list {sorted(unlisted)} in HOOKS or OWN of this test"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_the_hooks_callstream_overrides_are_still_there(name: str) -> None:
    method = getattr(BASE, name, None)
    assert callable(method), f"{UVICORN} no longer has WebSocketsSansIOProtocol.{name}, {RELIES}"
    params = list(inspect.signature(method).parameters)
    assert params == HOOKS[name], (
        f"{UVICORN} changed WebSocketsSansIOProtocol.{name}{tuple(params)} (was {tuple(HOOKS[name])}), "
        f"{RELIES}"
    )
    is_async = inspect.iscoroutinefunction(method)
    ours_async = inspect.iscoroutinefunction(getattr(CallstreamWebSocketProtocol, name))
    assert is_async == ours_async, f"{UVICORN} made WebSocketsSansIOProtocol.{name} async={is_async}, {RELIES}"


@pytest.mark.parametrize("name", sorted(OWN - {"close_sent"}))
def test_uvicorn_does_not_define_what_callstream_adds(name: str) -> None:
    assert not hasattr(BASE, name), (
        f"{UVICORN} now has its own WebSocketsSansIOProtocol.{name}, which "
        "callstream.server.transport's would replace"
    )


async def test_the_state_callstream_reads_is_set_by_uvicorn() -> None:
    config = uvicorn.Config(_app, ws=CallstreamWebSocketProtocol, log_config=None)
    proto = BASE(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    attributes = vars(proto)
    for name, kind in STATE.items():
        assert name in attributes, f"{UVICORN} no longer sets WebSocketsSansIOProtocol.{name}, {RELIES}"
        assert isinstance(attributes[name], kind), (
            f"{UVICORN} made WebSocketsSansIOProtocol.{name} a {type(attributes[name]).__name__}, {RELIES}"
        )
    assert "transport" in attributes, f"{UVICORN} no longer sets WebSocketsSansIOProtocol.transport, {RELIES}"
    assert "queue" in attributes, f"{UVICORN} no longer sets WebSocketsSansIOProtocol.queue, {RELIES}"
    assert isinstance(getattr(proto.conn, "logger", None), logging.Logger | logging.LoggerAdapter), (
        f"{WEBSOCKETS} no longer has ServerProtocol.logger, {RELIES}"
    )
    assert isinstance(getattr(proto.conn, "state", None), State), (
        f"{WEBSOCKETS} no longer has ServerProtocol.state (a websockets.protocol.State), {RELIES}"
    )
    assert hasattr(State, "OPEN"), f"{WEBSOCKETS} no longer has State.OPEN, {RELIES}"


def _uses_of(attribute: str) -> tuple[set[str], set[str]]:
    """What uvicorn's protocol does with `self.<attribute>`: the members it calls on it, and how it
    touches it itself (`load`, `store`, `del`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(websockets_sansio_impl)))
    members: set[str] = set()
    contexts: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id == "self" and node.attr == attribute:
            contexts.add(type(node.ctx).__name__.lower())
        elif (
            isinstance(value, ast.Attribute)
            and value.attr == attribute
            and isinstance(value.value, ast.Name)
            and value.value.id == "self"
        ):
            members.add(node.attr)
    return members, contexts


def test_uvicorn_uses_only_what_the_receive_queue_offers() -> None:
    members, _ = _uses_of("queue")
    extra = members - QUEUE_METHODS
    assert not extra, (
        f"{UVICORN} now calls WebSocketsSansIOProtocol.queue.{sorted(extra)}, which "
        "callstream.server.transport's _ReceiveQueue does not have"
    )


def test_uvicorn_only_reads_and_assigns_close_sent() -> None:
    _, contexts = _uses_of("close_sent")
    assert contexts == {"load", "store"}, (
        f"{UVICORN} now touches WebSocketsSansIOProtocol.close_sent as {sorted(contexts)}, {RELIES}"
    )


# ---- the same, live: uvicorn on uvloop, as `callstream serve` runs it -----------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """An app that does nothing: constructing a protocol only needs one to load."""


class Server:
    """uvicorn on a free port with callstream's protocol (as `callstream serve` installs it); `accepted` gets each socket's scope."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, ws=CallstreamWebSocketProtocol, ws_per_message_deflate=False,
            lifespan="off", log_config=None, interface="asgi3",
        )
        self.uvicorn = uvicorn.Server(config)

    async def app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self.accepted.put_nowait(scope)
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def _live() -> None:
    server = Server()
    serving = asyncio.create_task(server.uvicorn.serve())
    while not server.uvicorn.started:
        assert not serving.done(), "the test server did not start"
        await asyncio.sleep(0.01)
    try:
        async with connect(f"ws://127.0.0.1:{bound_port(server.uvicorn)}/") as ws:
            scope = await asyncio.wait_for(server.accepted.get(), 5)
            writer = scope.get(FRAME_WRITER)
            assert isinstance(writer, CallstreamWebSocketProtocol), "the accept no longer reaches callstream's send"
            assert writer.scope is scope, f"{UVICORN} no longer keeps the ASGI scope as .scope, {RELIES}"
            for method in TRANSPORT_METHODS:
                assert callable(getattr(writer.transport, method, None)), (
                    f"{UVICORN} no longer keeps the socket's transport (with .{method}) as .transport, {RELIES}"
                )
            assert writer.handshake_complete is True
            assert writer.conn.state is State.OPEN
            assert writer.frames_open
            assert writer.write_frames(text_frame(b'{"n":1}') + text_frame(b'{"n":2}'))
            writer.transport.write(text_frame(b'{"n":3}'))  # the hub's direct write
            assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)] == ['{"n":1}', '{"n":2}', '{"n":3}']

            # A binary message read while the app waits in `receive` goes to the sink, whole.
            sunk: list[bytes] = []
            writer.binary_sink = lambda data: sunk.append(data) is None
            await ws.send(b"\x01" * 300)
            for _ in range(500):
                if sunk:
                    break
                await asyncio.sleep(0.01)
            assert sunk == [b"\x01" * 300], (
                f"{UVICORN} no longer hands a binary frame's websockets Frame to handle_bytes, {RELIES}"
            )
    finally:
        server.uvicorn.should_exit = True
        await serving


def test_live_on_uvloop_frames_go_out_and_binary_messages_reach_the_sink() -> None:
    run_forever(_live())


def test_an_http_send_waits_before_it_writes_so_a_send_closed_at_its_wait_wrote_nothing() -> None:
    """`event_stream.SseConnection._write_now` runs uvicorn's `send` without a task and closes it at
    its first wait: that is only harmless if nothing was written before the wait."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    tree = ast.parse(textwrap.dedent(inspect.getsource(RequestResponseCycle.send)))
    awaits = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Await)]
    writes = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "write"
    ]
    assert awaits, f"{UVICORN}: RequestResponseCycle.send has no wait, {RELIES}"
    assert writes, f"{UVICORN}: RequestResponseCycle.send has no write, {RELIES}"
    assert max(awaits) < min(writes), f"{UVICORN}: RequestResponseCycle.send writes before it waits, {RELIES}"


# ---- event streams: chunks written straight to uvicorn's httptools response (chunked_body) --------


# What chunked_body reads of uvicorn's httptools `RequestResponseCycle` once a response started
# (name: the type it must have; `flow.write_paused` is read on the cycle's `flow`).
CYCLE_STATE: dict[str, type | tuple[type, ...]] = {
    "response_started": bool,
    "response_complete": bool,
    "disconnected": bool,
    "chunked_encoding": (bool, type(None)),
    "scope": dict,
}


def cycle_changes(send: Send) -> list[str]:
    """What chunked_body reads of the cycle behind `send` and no longer finds as it expects."""
    cycle = getattr(send, "__self__", None)
    changed = [
        f"RequestResponseCycle.{name}"
        for name, kind in CYCLE_STATE.items()
        if not isinstance(getattr(cycle, name, None), kind)
    ]
    if not callable(getattr(getattr(cycle, "transport", None), "write", None)):
        changed.append("RequestResponseCycle.transport.write")
    if not isinstance(getattr(getattr(cycle, "flow", None), "write_paused", None), bool):
        changed.append("RequestResponseCycle.flow.write_paused")
    return changed


class StreamServer:
    """uvicorn on uvloop with `http`, as `callstream serve` runs it: each request gets a chunked
    response, part of it written through `send` and part through `chunked_body`."""

    def __init__(self, http: str) -> None:
        self.http = http
        self.changed: list[str] = []  # what chunked_body reads of the cycle and did not find (httptools)
        self.found: list[bool] = []  # per request: whether chunked_body found the writer
        self.closed_after: list[bool] = []  # per request: `open` was False once the response ended
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, http=http, lifespan="off", log_config=None, interface="asgi3"
        )
        self.uvicorn = uvicorn.Server(config)

    async def app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        from callstream.server.chunked_body import chunk, chunked_body

        if scope["type"] != "http":
            return
        assert chunked_body(send) is None, "a response not started yet has no body writer"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        if self.http == "httptools":  # before chunked_body reads any of it
            self.changed = cycle_changes(send)
        body = chunked_body(send)
        self.found.append(body is not None)
        if body is None:
            for part in (b"one\n", b"two\n", b"three\n"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        assert body.open
        body.write(chunk(b"one\n"))
        await send({"type": "http.response.body", "body": b"two\n", "more_body": True})
        body.write(chunk(b"three\n"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.closed_after.append(not body.open)


async def _stream(http: str) -> StreamServer:
    import httpx

    server = StreamServer(http)
    serving = asyncio.create_task(server.uvicorn.serve())
    while not server.uvicorn.started:
        assert not serving.done(), "the test server did not start"
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{bound_port(server.uvicorn)}/")
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.content == b"one\ntwo\nthree\n"
    finally:
        server.uvicorn.should_exit = True
        await serving
    return server


def test_chunks_written_beside_uvicorns_httptools_send_make_one_well_formed_chunked_body() -> None:
    """`event_stream.SseConnection` writes a one-call stream's events with `chunked_body`, between
    messages `send` writes: that needs the cycle behind uvicorn's httptools `send` (its transport,
    flow control and response state) and uvicorn's own chunk framing."""
    server = StreamServer("httptools")

    async def check() -> None:
        nonlocal server
        server = await _stream("httptools")

    run_forever(check())
    relies = "which callstream.server.chunked_body relies on"
    assert server.changed == [], f"{UVICORN} changed {', '.join(server.changed)}, {relies}"
    assert server.found == [True], f"{UVICORN}'s httptools send no longer leads to its RequestResponseCycle, {relies}"
    assert server.closed_after == [True], f"{UVICORN}'s cycle no longer shows a complete response, {relies}"


def test_another_http_implementation_gets_no_body_writer_and_streams_through_send() -> None:
    server = StreamServer("h11")

    async def check() -> None:
        nonlocal server
        server = await _stream("h11")

    run_forever(check())
    assert server.found == [False]
