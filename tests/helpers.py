"""Shared test helpers: a real `callstream serve` process, keys, and socket conveniences."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import orjson
import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect

from callstream.auth import parse_scopes
from callstream.cli.common import with_store
from callstream.events import is_valid_call_id
from callstream.simulate import REFERENCE_DAY, _plan
from callstream.store import SqlStore
from callstream.store.sql import KeyRecord

T = TypeVar("T")

ALL_SCOPES = "publish,subscribe,control,listen,admin"
# How long a server may take to answer /healthz 200 once started, and each /healthz at most. Most
# of a start is the interpreter importing the package (about 2 s alone); with CI's 4 test workers
# starting servers at once on 2 cores, a SQLite node took up to 26 s before its first log line and
# 29.4 s to its first 200, and its first /healthz, right after it listened, over 1 s; on a slower
# day a PostgreSQL node printed nothing in 60 s. Under pytest-timeout's 120 s, which a module's
# fixture shares with the module's first test.
START_TIMEOUT_S = 90.0
HEALTH_REQUEST_S = 5.0


def missing(what: str) -> NoReturn:
    """Skip locally, fail under CI=true: a tool the tests need (Chromium, Node) that is missing
    must not let CI pass by skipping them (CONTRIBUTING.md, What the test suite needs)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: these tests must run)")
    pytest.skip(what, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


class _PortTakenError(RuntimeError):
    """The server exited: another process listens on its port."""


class ServerProcess:
    """A real server process on a loopback port; the tests talk to it only over the network."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.args = list(args)
        self.port = port or free_port()
        self._own_port = port is None  # a free port of its own: another one if a server holds it
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def database_args(self) -> list[str]:
        if "--database" in self.args:
            i = self.args.index("--database")
            return ["--database", self.args[i + 1]]
        return ["--data-dir", str(self.data_dir)]

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        """Start, and wait until this process (not another test's server: nothing holds a
        `free_port` while a node starts, so another worker can be handed it too) answers
        /healthz 200. A node of `free_port` whose port another server took starts again on a
        new one."""
        for _ in range(3):
            try:
                return self._start(timeout)
            except _PortTakenError:
                if not self._own_port:
                    raise
                self.port = free_port()
                self.log_path = self.data_dir / f"server-{self.port}.log"
        return self._start(timeout)

    def _listens(self) -> bool:
        """Whether this process, not another, listens on the port (so answered the /healthz)."""
        assert self.proc is not None
        try:
            connections = psutil.Process(self.proc.pid).net_connections("tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in connections)

    def _start(self, timeout: float) -> ServerProcess:
        env = {**os.environ, "CALLSTREAM_LOG_LEVEL": "info", **self.env}
        command = [sys.executable, "-m", "callstream", "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--webhooks-allow-private", *self.args]
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        last = "none"  # what /healthz answered last: a node that answers 503 is not a slow start
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                error = _PortTakenError if f"cannot listen on 127.0.0.1:{self.port}" in log else RuntimeError
                raise error(f"server exited with {self.proc.returncode}: {log}")
            try:
                answer = httpx.get(self.url + "/healthz", timeout=HEALTH_REQUEST_S)
                if answer.status_code == 200 and self._listens():
                    return self
                last = f"{answer.status_code} {answer.text}"
                if answer.status_code == 200:  # not from this process
                    last += " from another process on the port"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.kill()  # no fixture teardown runs for a start that raised: left running, it leaks
        raise RuntimeError(f"server did not become healthy within {timeout:g} s (last /healthz: {last}): {self.log()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM: graceful shutdown (sockets closed with 1001)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "callstream", *args]
        return subprocess.run(
            command, capture_output=True, text=True, check=check, env={**os.environ, **(env or {})}, timeout=60
        )

    def create_key(self, account: str, scopes: str = ALL_SCOPES) -> str:
        return self.create_key_with_id(account, scopes)[1]

    def create_key_with_id(self, account: str, scopes: str = ALL_SCOPES) -> tuple[str, str]:
        """A new key's (id, secret), made as `callstream keys create` makes it (tests/e2e/test_cli.py)."""
        if not is_valid_call_id(account):
            raise ValueError(f"not an account: {account!r}")
        scope_set = parse_scopes(scopes)

        async def create(store: SqlStore) -> tuple[KeyRecord, str]:
            return await store.create_key(account, scope_set, None)

        made, secret = self.in_store(create)
        return made.id, secret

    def in_store(self, work: Callable[[SqlStore], Awaitable[T]]) -> T:
        """`work` done on the server's store by the code the CLI's keys and login commands run, but
        in this process: a CLI process would import the whole package again, and most tests make
        keys or links (the commands themselves are tested in tests/e2e/test_cli.py and test_control.py)."""
        where = self.database_args()
        data_dir, database = (None, where[1]) if where[0] == "--database" else (where[1], None)
        with ThreadPoolExecutor(1) as pool:  # with_store runs an event loop of its own; a test may be in one
            return pool.submit(with_store, data_dir, database, work).result()

    def revoke_key(self, key_id: str) -> None:
        self.cli("keys", "revoke", key_id, *self.database_args())

    def login_url(self, account: str, *, control: bool = False, listen: bool = False) -> str:
        """A one-time dashboard link, as `callstream login` prints it."""

        async def code(store: SqlStore) -> str:
            return await store.create_login_code(account, control=control, name=None, listen=listen)

        return f"{self.url}/?login={self.in_store(code)}"


class Cluster:
    """Server nodes sharing one broker and one database; `start` adds and starts some."""

    def __init__(self, root: Path, database: str, broker: str) -> None:
        self.root, self.database, self.broker = root, database, broker
        self.nodes: list[ServerProcess] = []

    def start(self, count: int, env: dict[str, str] | None = None) -> list[ServerProcess]:
        for _ in range(count):
            data_dir = self.root / f"node{len(self.nodes)}"
            data_dir.mkdir()
            node = ServerProcess(data_dir, "--broker", self.broker, "--database", self.database, env=env)
            self.nodes.append(node)
        for node in self.nodes[-count:]:
            node.start()
        return self.nodes[-count:]

    def key(self, account: str) -> str:
        return self.nodes[0].create_key(account)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


async def open_events(server: ServerProcess, credential: str, **kwargs: Any) -> ClientConnection:
    return await connect(f"{server.ws_url}/v1/events?token={credential}", **kwargs)


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message: dict[str, Any] = orjson.loads(raw)
    return message


async def recv_until(ws: ClientConnection, kind: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every message up to and including the first of type `kind`."""
    seen: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        message = await recv(ws, max(left, 0.01))
        seen.append(message)
        if message.get("type") == kind:
            return seen


async def no_message(ws: ClientConnection, within: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), within)
    except TimeoutError:
        return True
    return False


def key_of(server: ServerProcess) -> str:
    """A key (every scope) of an account of its own."""
    return server.create_key(f"acct_{uuid.uuid4().hex[:10]}")


def publish(server: ServerProcess, key: str, call_id: str, events: list[dict[str, Any]] | dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/calls/{call_id}/events",
        content=orjson.dumps(events),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=10,
    )


def history(server: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    """Every stored event of a call over REST, following `next_since` from page to page."""
    events: list[dict[str, Any]] = []
    since: int | None = 0
    while since is not None:
        response = httpx.get(
            f"{server.url}/v1/calls/{call_id}/events",
            params={"since": since, "limit": 10_000},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        since = page["next_since"]
    return events


def final(text: str, speaker: str = "user", **extra: Any) -> dict[str, Any]:
    return {"type": "transcript.final", "data": {"speaker": speaker, "text": text, **extra}}


def partial(text: str, speaker: str = "user", **extra: Any) -> dict[str, Any]:
    return {"type": "transcript.partial", "data": {"speaker": speaker, "text": text, **extra}}


def ended(status: str = "completed", duration_ms: int = 1000) -> dict[str, Any]:
    return {"type": "call.ended", "data": {"status": status, "duration_ms": duration_ms}}


def fill_next_journal_file(store: SqlStore, db_path: Path | str) -> None:
    """The embedded store's next journal write fails as on a full disk (/dev/full under the
    journal file's name); the journal moves on to a new file after it."""
    journal = store._journal
    assert journal is not None
    os.symlink("/dev/full", f"{db_path}-events.{journal._node}.{journal._generation}")


class Supervisor:
    """A control-scoped subscriber of calls (docs/protocol.md, Live control): it sends requests
    and keeps every call event it reads, so a test can assert what the call did in between."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ref = 0

    async def ask(self, call_id: str, action: str, **args: Any) -> str:
        """Send one request; its request_id once the server acknowledged it (an error fails)."""
        answer = await self.request(call_id, action, **args)
        assert answer["type"] == "control_ack", answer
        return str(answer["data"]["request_id"])

    async def request(self, call_id: str, action: str, **args: Any) -> dict[str, Any]:
        """Send one request; the server's answer to it (`control_ack` or `error`)."""
        self._ref += 1
        ref = f"s{self._ref}"
        await send(self.ws, {"type": "control", "call_id": call_id, "action": action, "args": args, "ref": ref})
        return await self.until(lambda m: m.get("ref") == ref and m["type"] in ("control_ack", "error"))

    async def result(self, request_id: str, timeout: float = 15) -> dict[str, Any]:
        """The request's `control.result` data."""
        event = await self.until(
            lambda m: m["type"] == "control.result" and m["data"]["request_id"] == request_id, timeout
        )
        return dict(event["data"])

    async def done(self, call_id: str, action: str, **args: Any) -> None:
        """Ask, and wait until the producer answered ok."""
        request_id = await self.ask(call_id, action, **args)
        assert await self.result(request_id) == {"request_id": request_id, "ok": True}

    async def until(self, match: Any, timeout: float = 15) -> dict[str, Any]:
        """Read up to the first message `match` accepts (call events on the way are kept)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            message = await recv(self.ws, max(left, 0.01))
            if "seq" in message:
                self.events.append(message)
            if match(message):
                return message

    async def during(self, seconds: float) -> list[dict[str, Any]]:
        """The call events that arrive within the next `seconds`."""
        start = len(self.events)
        with contextlib.suppress(TimeoutError):
            await self.until(lambda _: False, seconds)
        return self.events[start:]


def steady_seed() -> int:
    """A simulation seed whose first call is answered and completes: it runs long enough to be
    steered by a supervisor (callstream.simulate draws each call's plan from the seed)."""

    def first_plan(seed: int) -> Any:
        return _plan(random.Random(random.Random(seed).getrandbits(64)), REFERENCE_DAY)

    return next(seed for seed in itertools.count() if first_plan(seed).status == "completed")
