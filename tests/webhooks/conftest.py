"""Fixtures for webhook delivery: real loopback HTTP receivers and a real store per backend.

The store runs on SQLite (a file in tmp_path) and on the machine's PostgreSQL (a fresh
database per session, dropped afterwards). PostgreSQL tests skip when the server is absent,
except under CI=true, where they must run.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from callstream.events import Event
from callstream.store import SqlStore
from callstream.webhooks import tables as wt
from callstream.webhooks.config import WebhookConfig
from callstream.webhooks.repo import WebhookRepo
from callstream.webhooks.schedule import RetrySchedule
from callstream.webhooks.worker import WebhookWorker
from tests.broker.services import PG_ADMIN_URL
from tests.helpers import run_async

PG_ADMIN = PG_ADMIN_URL.replace("+asyncpg", "", 1)  # asyncpg's own spelling of the same server


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server: answers each request with the next planned status (or hangs)."""

    plan: list[int | str] = field(default_factory=list)
    default: int | str = 200
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    # Requests received and not yet answered or given up by the client; the most there were.
    open: int = 0
    peak: int = 0
    _server: asyncio.Server | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        action = self.plan.pop(0) if self.plan else self.default
        if action == "hang":
            await self._hang(reader)
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        writer.write(f"HTTP/1.1 {action} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
        await writer.drain()

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        """Never answer: return once the client gives up (closes) or the receiver closes."""
        waits = {asyncio.ensure_future(reader.read()), asyncio.ensure_future(self._release.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(headers, body, time.monotonic()))
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                await self._answer(reader, writer)
            finally:
                self.open -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    made: list[Receiver] = []

    async def make(*plan: int | str, default: int | str = 200, delay: float = 0.0) -> Receiver:
        made.append(await Receiver(list(plan), default, delay).start())
        return made[-1]

    yield make
    for r in made:
        await r.close()


async def _pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"cs_webhooks_{uuid.uuid4().hex[:10]}"
    try:
        run_async(_pg(f'CREATE DATABASE "{name}"'))
    except (OSError, ImportError) as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL at {PG_ADMIN} is not available: {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    run_async(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(database_url)
    await store.start()
    async with store.engine.begin() as conn:  # the PostgreSQL database lives for the session
        for table in (wt.webhook_attempts, wt.webhook_messages, wt.webhook_endpoints):
            await conn.execute(table.delete())
    yield store
    await store.close()


def fast_config(**overrides: object) -> WebhookConfig:
    """Retries every 50 ms, so a test sees a whole retry story in well under a second."""
    schedule = RetrySchedule(
        delays=(0.05, 0.05), repeat=0.05, give_up_after=float(str(overrides.pop("give_up", 60.0))),
        jitter=0.0,
    )  # fmt: skip
    values: dict[str, object] = {
        "schedule": schedule,
        "timeout_s": 2.0,
        "poll_s": 0.02,
        "allow_private": True,
        "concurrency": 8,
        **overrides,
    }
    return WebhookConfig(**values)  # type: ignore[arg-type]


@dataclass
class Webhooks:
    store: SqlStore
    repo: WebhookRepo
    worker: WebhookWorker

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookWorker]:
        task = asyncio.create_task(self.worker.run())
        try:
            yield self.worker
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def end_call(self, account: str, call_id: str, *, finals: tuple[str, ...] = ("hello",)) -> None:
        """Publish a small call straight into the store, as the node's publish path does."""
        ts = int(time.time() * 1000)
        events = [
            Event(account, call_id, i + 1, ts + i, "transcript.final",
                  {"speaker": "user", "text": text, "is_final": True,
                   "sentiment": {"score": 0.5, "label": "positive"}})
            for i, text in enumerate(finals)
        ]  # fmt: skip
        events.append(
            Event(account, call_id, len(events) + 1, ts + len(events), "call.ended",
                  {"status": "completed", "duration_ms": 1234})
        )  # fmt: skip
        await self.store.append(events)


@pytest.fixture
def webhooks(store: SqlStore) -> Callable[..., Webhooks]:
    def make(**overrides: object) -> Webhooks:
        config = fast_config(**overrides)
        repo = WebhookRepo(store.engine, store.dialect, config)
        store.ended_hooks.append(repo.enqueue_for_call)
        return Webhooks(store, repo, WebhookWorker(repo, config))

    return make


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
