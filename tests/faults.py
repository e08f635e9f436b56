"""Backing services of a test's own, to take down and bring back: the place to inject outages.

- `PrivatePostgres`: a PostgreSQL cluster initialised into a temporary directory (`initdb`),
  served on a spare loopback port by `pg_ctl`. `stop()` is a real outage (connections refused,
  sessions ended), `start()` brings the same cluster back on the same port with its data.
- `RedisServer`: a redis-server of the test's own on a spare port. By default without
  persistence (a restart loses every key, the harshest Redis failure); `persistent=True` keeps
  its keys across `stop()`/`start()` (append-only file, fsync on every write), like a network
  outage of a Redis that stayed up.
- `ReplyCutter`: a TCP proxy to the machine's Redis that loses the reply to a chosen command
  after Redis ran it (the fixture `reply_cutter`, tests/broker/conftest.py); put in front of a
  node, it loses the first answer that holds a marker (say, an ingest socket's ack).

Both keep their port (and data directory) for their whole life, so a node started against
`url` sees an outage when they stop and recovery when they start, without being restarted.
The fixtures `private_pg` and `private_redis` (tests/conftest.py) give a started one, torn down
after the test; `private_postgres()` / `own_redis()` do the same for other scopes.

Policy as for the machine's services (tests/broker/services.py): missing binaries skip a test
locally and fail it under CI=true. Tests run as root in CI, and PostgreSQL refuses to run as
root: its commands then run as the `postgres` user (`runuser`), in a directory of that user's.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from tests.broker.services import REDIS_HOST, REDIS_PORT
from tests.helpers import free_port

_STARTUP_S = 30.0


def _missing(what: str) -> NoReturn:
    """Skip locally, fail under CI=true: CI must never pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: these tests must run)")
    pytest.skip(what)


def _reachable(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(check: Callable[[], bool], what: str, timeout: float = _STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: `url` for a node, `stop()` / `start()` for outages.

    The cluster trusts local connections as `postgres` and skips fsync (a test's data need not
    survive the machine; commits still reach the WAL before they are acknowledged, so an
    `immediate` stop, a crash, loses nothing that was committed).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._bin = _postgres_bin()
        self._as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="callstream-pg-"))
        if self._as_postgres:  # the postgres user must own what it writes
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._initialised = False

    @property
    def url(self) -> str:
        """The URL a node is given (`--database`)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def driver_url(self) -> str:
        """The same database for the test's own SQLAlchemy engine."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._ctl("status", check=False).returncode == 0

    def start(self) -> PrivatePostgres:
        """Start the cluster (initialising it the first time) and wait until it takes connections."""
        if not self._initialised:
            self._initdb()
        self._ctl("start", "-w", "-t", str(int(_STARTUP_S)), "-l", str(self.log_path))
        _wait_until(lambda: _reachable(self.port), f"PostgreSQL on port {self.port} listening")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Take the cluster down: `fast` ends sessions and shuts down cleanly, `immediate` is a
        crash (recovery replays the WAL at the next start). Returns once nothing listens."""
        if self.running:
            self._ctl("stop", "-w", "-m", mode)
        _wait_until(lambda: not _reachable(self.port), f"PostgreSQL on port {self.port} gone")

    def close(self) -> None:
        """Stop it for good and delete its files."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def _initdb(self) -> None:
        initdb = [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust"]
        self._run([*initdb, "-E", "UTF8", "--no-sync", "--no-instructions"])
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",  # TCP only: nothing shared with the machine's server
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._initialised = True

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), *args], check=check)

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}{self.log()}")
        return done


def _postgres_bin() -> Path:
    """The directory of the newest installed PostgreSQL's server binaries (Debian's layout, or PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        _missing("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _missing("running PostgreSQL as root needs runuser, which is not installed")
    return Path(initdb).parent


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private cluster, deleted afterwards."""
    server = PrivatePostgres()
    try:
        yield server.start()
    finally:
        server.close()


class RedisServer:
    """A redis-server of the test's own on a spare port; `stop()` kills it (SIGKILL: no goodbye
    to its clients), `start()` starts it again on the same port and directory."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server is not installed")
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--dir", str(self.workdir)]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(lambda: _reachable(self.port), f"redis-server on port {self.port} listening", 10)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self, downtime_s: float = 0.5) -> None:
        self.stop()
        time.sleep(downtime_s)
        self.start()


@contextmanager
def own_redis(workdir: Path, *, persistent: bool = False) -> Iterator[RedisServer]:
    """A started redis-server of the test's own, killed afterwards."""
    server = RedisServer(workdir, persistent=persistent).start()
    try:
        yield server
    finally:
        server.stop()


class ReplyCutter:
    """A TCP proxy in front of Redis that can break a connection after Redis ran a command and
    before its reply reaches the client: the reply a real network loses.

    `cut_reply_to(marker)`: the next request whose bytes hold `marker` goes through; its
    connection is aborted when the answer comes back, and `cut` is set. `cut_reply_holding(marker)`:
    the next answer whose bytes hold `marker` is lost the same way (a client's WebSocket frames
    are masked, a server's are not: this is the way to lose a server's answer)."""

    def __init__(self, host: str = REDIS_HOST, port: int = REDIS_PORT) -> None:
        self._upstream = (host, port)
        self._marker: bytes | None = None
        self._reply_marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.cut = asyncio.Event()

    async def start(self) -> str:
        """Listen on a spare port; the URL to give the client (database 0, as REDIS_URL)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def port(self) -> int:
        """The port it listens on (once started)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def cut_reply_to(self, marker: bytes) -> None:
        self._marker = marker
        self.cut.clear()

    def cut_reply_holding(self, marker: bytes) -> None:
        self._reply_marker = marker
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
            nonlocal doomed
            while data := await redis_reader.read(65536):
                if self._reply_marker is not None and self._reply_marker in data:
                    self._reply_marker, doomed = None, True
                if doomed:  # Redis has run it: the client never hears so
                    client_writer.transport.abort()
                    redis_writer.transport.abort()
                    self.cut.set()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        await asyncio.gather(requests(), replies(), return_exceptions=True)
