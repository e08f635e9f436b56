"""Real backing services for tests: reachability policy, a private redis-server, fresh databases.

Policy: a test that needs Redis or PostgreSQL runs against the real one. Locally it is skipped
when the service is unreachable; with CI=true it fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_URL = os.environ.get("CALLSTREAM_TEST_REDIS", f"redis://{REDIS_HOST}:{REDIS_PORT}/0")
# Server processes have no key prefix of their own: theirs is a database apart from the broker
# tests' prefixed keys (their tests keep apart by accounts and call ids of their own).
NODES_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/3"
PG_ADMIN_URL = os.environ.get(
    "CALLSTREAM_TEST_POSTGRES", f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/postgres"
)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI=true) when the service is not listening."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: these tests must run)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a spare port, without persistence: a restart loses
    every key, which is exactly the failure the broker must survive."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("redis-server is not installed (CI=true: these tests must run)")
            pytest.skip("redis-server is not installed")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, downtime_s: float = 0.5) -> None:
        self.stop()
        time.sleep(downtime_s)
        self.start()


class ReplyCutter:
    """A TCP proxy in front of Redis that can break a connection after Redis ran a command and
    before its reply reaches the client: the reply a real network loses.

    `cut_reply_to(marker)`: the next request whose bytes hold `marker` goes through; its
    connection is aborted when the answer comes back, and `cut` is set."""

    def __init__(self, host: str = REDIS_HOST, port: int = REDIS_PORT) -> None:
        self._upstream = (host, port)
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.cut = asyncio.Event()

    async def start(self) -> str:
        """Listen on a spare port; the URL to give the client (database 0, as REDIS_URL)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def cut_reply_to(self, marker: bytes) -> None:
        self._marker = marker
        self.cut.clear()

    async def stop(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(*self._upstream)
        self._writers += [client_writer, redis_writer]
        doomed = False

        async def requests() -> None:
            nonlocal doomed
            while data := await client_reader.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker, doomed = None, True
                redis_writer.write(data)
                await redis_writer.drain()
            redis_writer.close()

        async def replies() -> None:
            while data := await redis_reader.read(65536):
                if doomed:  # Redis has run it: the client never hears so
                    client_writer.transport.abort()
                    redis_writer.transport.abort()
                    self.cut.set()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        await asyncio.gather(requests(), replies(), return_exceptions=True)


@contextmanager
def own_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()


def database_name() -> str:
    return f"callstream_test_{secrets.token_hex(6)}"


async def create_database(name: str) -> str:
    """Create an empty PostgreSQL database; returns its asyncpg URL."""
    await _admin(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(statement: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()
