"""`callstream serve`, `demo` and `migrate`: run the service, or bring its schema up to date."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.markup import escape

from callstream.cli.common import (
    BrokerUrl,
    DatabaseUrl,
    DataDir,
    Host,
    Port,
    console,
    fail,
    load_settings,
    masked,
    on_store,
    setting,
    with_store,
)

if TYPE_CHECKING:
    from callstream.server.serve import DrainingServer
    from callstream.settings import Settings
    from callstream.store import SqlStore


def serve(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    broker: BrokerUrl = None,
    database: DatabaseUrl = None,
    allowed_origins: Annotated[str | None, setting("allowed_origins")] = None,
    webhooks_allow_private: Annotated[
        bool | None, setting("webhooks_allow_private", "--webhooks-allow-private")
    ] = None,
    sentiment: Annotated[bool | None, setting("sentiment", "--sentiment/--no-sentiment")] = None,
    redact: Annotated[str | None, setting("redact")] = None,
    redact_region: Annotated[str | None, setting("redact_region")] = None,
    latency_warn_ms: Annotated[int | None, setting("latency_warn_ms")] = None,
    log_level: Annotated[str | None, setting("log_level")] = None,
    retention_days: Annotated[int | None, setting("retention_days")] = None,
    metrics_token: Annotated[str | None, setting("metrics_token")] = None,
    record: Annotated[bool | None, setting("record", "--record")] = None,
    recordings_dir: Annotated[str | None, setting("recordings_dir")] = None,
    dashboard_account: Annotated[
        str | None,
        typer.Option(
            envvar="CALLSTREAM_DASHBOARD_ACCOUNT", help="print a one-time dashboard login link for it"
        ),
    ] = None,
) -> None:
    """Run the service (embedded default: in-process broker + SQLite under --data-dir)."""
    from callstream.server.serve import bound_port, configure_logging

    settings = load_settings(
        host=host,
        port=port,
        data_dir=data_dir,
        broker=broker,
        database=database,
        allowed_origins=_allowed_origins(allowed_origins),
        webhooks_allow_private=webhooks_allow_private,
        sentiment=sentiment,
        redact=redact,
        redact_region=redact_region,
        latency_warn_ms=latency_warn_ms,
        log_level=log_level,
        metrics_token=metrics_token,
        retention_days=retention_days,
        record=record,
        recordings_dir=recordings_dir,
    )
    configure_logging(settings.log_level)
    on_store(settings, _nothing)  # a database this version cannot upgrade: one line, no traceback
    _check_broker(settings.broker)

    async def ready(server: DrainingServer) -> None:
        base = settings.public_url or f"http://{settings.host}:{bound_port(server)}"
        console.print(f"callstream listening on {base}  (docs: {base}/docs)", soft_wrap=True)
        account = dashboard_account or await _only_account(server.runtime.store)
        if account:  # as Jupyter does: a one-time link, so the browser never sees an API key
            code = await server.runtime.store.create_login_code(account)
            console.print(f"dashboard for {account} (one-time link): {base}/?login={code}", soft_wrap=True)
        else:
            console.print(f"dashboard: {base}/ (a login link: callstream login --account A)", soft_wrap=True)

    _run(settings, ready)


def demo(
    host: Host = None,
    port: Port = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="keep the demo's data in this folder (env CALLSTREAM_DATA_DIR); default: a temporary one"),
    ] = None,
    calls: Annotated[int, typer.Option(min=1, max=5_000, help="simulated calls kept live")] = 12,
    speed: Annotated[float, typer.Option(help="speaking pace; 2 = twice as fast")] = 1.0,
    audio: Annotated[bool, typer.Option("--audio", help="the calls speak: listen in from the dashboard")] = False,
    record: Annotated[bool, typer.Option("--record", help="keep each call's audio: ended calls play in the dashboard")] = False,
) -> None:
    """`serve` plus a demo account, simulated live calls, and the dashboard's URL.

    Without --data-dir (or CALLSTREAM_DATA_DIR) its data, recordings included, lives in a
    temporary folder that is removed when the demo stops."""
    with _demo_data(data_dir or os.environ.get("CALLSTREAM_DATA_DIR")) as folder:
        _demo(folder, host, port, calls, speed, audio, record)


@contextlib.contextmanager
def _demo_data(given: str | None) -> Iterator[str]:
    """The folder given, kept; else a temporary one, removed however the demo stops (Ctrl-C,
    SIGTERM, an error), so runs do not pile up folders in /tmp."""
    if given is not None:
        yield given
        return
    scratch = tempfile.mkdtemp(prefix="callstream-demo-")
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield scratch
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)


def _stop(signum: int, _frame: object) -> NoReturn:
    """SIGTERM ends the demo through its clean-up, as Ctrl-C does. (The server hands the signal
    back once it has drained, and by default SIGTERM would then kill the process outright.)"""
    raise SystemExit(128 + signum)


def _demo(
    data_dir: str, host: str | None, port: int | None, calls: int, speed: float, audio: bool, record: bool
) -> None:
    from callstream.server.serve import bound_port, configure_logging
    from callstream.simulate import run_simulation

    settings = load_settings(host=host, port=port, data_dir=data_dir, webhooks_allow_private=True, record=record or None)
    configure_logging("warning")
    on_store(settings, _nothing)

    async def ready(server: DrainingServer) -> None:
        base = f"http://{settings.host}:{bound_port(server)}"
        store = server.runtime.store
        _, key = await store.create_key("demo", frozenset({"publish", "subscribe", "control", "listen", "admin"}), name="demo")
        code = await store.create_login_code("demo", ttl_s=24 * 3600, control=True, listen=True)
        console.rule("[bold]callstream demo")
        console.print(f"dashboard (one-time login link): [bold cyan]{base}/?login={code}[/]")
        console.print(f"API docs: {base}/docs    data: {data_dir}")
        console.print(f"demo API key (account 'demo'): {key}")
        console.print(f"try: callstream tail --url {base} --key {key} --all")
        console.print(f"simulating a campaign of {calls} live calls; Ctrl-C to stop")
        server.companions.append(
            asyncio.create_task(
                run_simulation(
                    base, key, calls=calls, rate=None, speed=speed, duration=None, seed=None, on_progress=None,
                    stagger=True, audio=audio,
                )
            )
        )

    with contextlib.suppress(KeyboardInterrupt):
        _run(settings, ready)


def migrate(data_dir: DataDir = None, database: DatabaseUrl = None) -> None:
    """Bring the database schema up to date (also done on start)."""
    with_store(data_dir, database, _nothing)
    console.print("schema is up to date")


def _run(settings: Settings, ready: Callable[[DrainingServer], Awaitable[None]]) -> None:
    """Serve until stopped; a start that fails (a port in use, a host that is not one) ends the
    command in one line, exit status 1."""
    from callstream.server.serve import StartupError, run_forever, serve

    try:
        run_forever(serve(settings, ready))
    except StartupError as exc:
        fail(escape(str(exc)), 1)


def _check_broker(url: str | None) -> None:
    """A Redis broker that does not answer ends `serve` in one line before it starts, rather than
    with the app's failed start-up (a traceback in the log)."""
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        return
    from redis import asyncio as aioredis
    from redis.exceptions import RedisError

    async def ping() -> None:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=5.0)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError, ValueError) as exc:
        fail(escape(f"cannot reach the broker: {masked(str(exc), url)}"), 1)  # as the database's errors


async def _nothing(_store: SqlStore) -> None:
    """Opening the store is the work: it brings the schema up to date."""


def _allowed_origins(value: str | None) -> list[str] | None:
    return None if value is None else [o.strip() for o in value.split(",") if o.strip()]


async def _only_account(store: SqlStore) -> str | None:
    """The account to open the dashboard for when there is no doubt: the store has just one."""
    accounts = {k.account for k in await store.list_keys() if k.revoked_at is None}
    return accounts.pop() if len(accounts) == 1 else None
