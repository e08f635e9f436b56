"""The `callstream` command. Every option also reads from a `CALLSTREAM_*` environment variable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from callstream.settings import Settings, ValidationError, describe_errors

app = typer.Typer(
    help="callstream: live events of voice calls.", no_args_is_help=True, pretty_exceptions_enable=False
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_URL = "http://127.0.0.1:8080"

Host = Annotated[str | None, typer.Option(help="interface to bind [env CALLSTREAM_HOST; 127.0.0.1]")]
Port = Annotated[int | None, typer.Option(help="port [env CALLSTREAM_PORT; 8080; 0 = any free]")]
DataDir = Annotated[
    str | None, typer.Option(help="where the embedded SQLite store lives [env CALLSTREAM_DATA_DIR]")
]
BrokerUrl = Annotated[str | None, typer.Option("--broker", help="redis://… [env CALLSTREAM_BROKER]")]
DatabaseUrl = Annotated[
    str | None, typer.Option("--database", help="postgresql://… [env CALLSTREAM_DATABASE]")
]
Url = Annotated[str, typer.Option(envvar="CALLSTREAM_URL", help="the server's base URL")]
Key = Annotated[str, typer.Option(envvar="CALLSTREAM_KEY", help="an API key", show_default=False)]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def load_settings(**given: Any) -> Settings:
    """Settings from the flags given, then CALLSTREAM_* variables, then defaults; clear errors."""
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise fail("invalid configuration:\n" + describe_errors(exc, flags=given.keys())) from None


def _allowed_origins(value: str | None) -> list[str] | None:
    return None if value is None else [o.strip() for o in value.split(",") if o.strip()]


@app.command()
def serve(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    broker: BrokerUrl = None,
    database: DatabaseUrl = None,
    allowed_origins: Annotated[
        str | None, typer.Option(help="comma-separated Origin allow-list for /v1/events")
    ] = None,
    webhooks_allow_private: Annotated[
        bool | None, typer.Option("--webhooks-allow-private", help="allow webhook URLs on private networks")
    ] = None,
    sentiment: Annotated[bool | None, typer.Option("--sentiment/--no-sentiment")] = None,
    log_level: Annotated[str | None, typer.Option(help="critical|error|warning|info|debug")] = None,
    metrics_token: Annotated[
        str | None,
        typer.Option(help="require `Authorization: Bearer <it>` on /metrics [env CALLSTREAM_METRICS_TOKEN]"),
    ] = None,
    dashboard_account: Annotated[
        str | None,
        typer.Option(
            envvar="CALLSTREAM_DASHBOARD_ACCOUNT", help="print a one-time dashboard login link for it"
        ),
    ] = None,
) -> None:
    """Run the service (embedded default: in-process broker + SQLite under --data-dir)."""
    from callstream.server.serve import DrainingServer, bound_port, configure_logging, run_forever
    from callstream.server.serve import serve as run

    settings = load_settings(
        host=host,
        port=port,
        data_dir=data_dir,
        broker=broker,
        database=database,
        allowed_origins=_allowed_origins(allowed_origins),
        webhooks_allow_private=webhooks_allow_private,
        sentiment=sentiment,
        log_level=log_level,
        metrics_token=metrics_token,
    )
    configure_logging(settings.log_level)

    async def ready(server: DrainingServer) -> None:
        base = settings.public_url or f"http://{settings.host}:{bound_port(server)}"
        console.print(f"callstream listening on {base}  (docs: {base}/docs)", soft_wrap=True)
        account = dashboard_account or await _only_account(server.runtime.store)
        if account:  # as Jupyter does: a one-time link, so the browser never sees an API key
            code = await server.runtime.store.create_login_code(account)
            console.print(f"dashboard for {account} (one-time link): {base}/?login={code}", soft_wrap=True)
        else:
            console.print(f"dashboard: {base}/ (a login link: callstream login --account A)", soft_wrap=True)

    run_forever(run(settings, ready))


@app.command()
def demo(
    host: Host = None,
    port: Port = None,
    data_dir: DataDir = None,
    calls: Annotated[int, typer.Option(help="concurrent simulated calls")] = 6,
    speed: Annotated[float, typer.Option(help="speaking pace; 2 = twice as fast")] = 1.0,
) -> None:
    """`serve` plus a demo account, simulated live calls, and the dashboard's URL."""
    from callstream.server.serve import DrainingServer, bound_port, configure_logging, run_forever
    from callstream.server.serve import serve as run
    from callstream.simulate import run_simulation

    data_dir = (
        data_dir or os.environ.get("CALLSTREAM_DATA_DIR") or tempfile.mkdtemp(prefix="callstream-demo-")
    )
    settings = load_settings(host=host, port=port, data_dir=data_dir, webhooks_allow_private=True)
    configure_logging("warning")

    async def ready(server: DrainingServer) -> None:
        base = f"http://{settings.host}:{bound_port(server)}"
        store = server.runtime.store
        _, key = await store.create_key("demo", frozenset({"publish", "subscribe", "admin"}), name="demo")
        code = await store.create_login_code("demo", ttl_s=24 * 3600)
        console.rule("[bold]callstream demo")
        console.print(f"dashboard (one-time login link): [bold cyan]{base}/?login={code}[/]")
        console.print(f"API docs: {base}/docs    data: {data_dir}")
        console.print(f"demo API key (account 'demo'): {key}")
        console.print(f"try: callstream tail --url {base} --key {key} --all")
        console.print(f"simulating {calls} concurrent calls; Ctrl-C to stop")
        server.companions.append(
            asyncio.create_task(
                run_simulation(
                    base, key, calls=calls, rate=None, speed=speed, duration=None, seed=None, on_progress=None
                )
            )
        )

    with contextlib.suppress(KeyboardInterrupt):
        run_forever(run(settings, ready))


async def _only_account(store: Any) -> str | None:
    """The account to open the dashboard for when there is no doubt: the store has just one."""
    accounts = {k.account for k in await store.list_keys() if k.revoked_at is None}
    return accounts.pop() if len(accounts) == 1 else None


def _store(data_dir: str | None, database: str | None) -> Any:
    from callstream.store import SqlStore, database_url

    settings = load_settings(data_dir=data_dir, database=database)
    return SqlStore(database_url(settings.database, settings.data_dir))


def _with_store(data_dir: str | None, database: str | None, work: Any) -> Any:
    async def main() -> Any:
        store = _store(data_dir, database)
        await store.start(writer=False)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="the account (tenant) the key belongs to")],
    scope: Annotated[
        str, typer.Option(help="comma-separated: publish,subscribe,admin")
    ] = "publish,subscribe,admin",
    name: Annotated[str | None, typer.Option(help="a label for humans")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"key","id","account"}')] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Create an API key; its secret is printed once and only stored hashed."""
    from callstream.auth import parse_scopes
    from callstream.events import is_valid_call_id

    if not is_valid_call_id(account):
        raise fail("--account must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        raise fail(f"--scope: {exc}") from None
    record, secret = _with_store(data_dir, database, lambda s: s.create_key(account, scopes, name))
    if as_json:
        sys.stdout.write(orjson.dumps({"key": secret, "id": record.id, "account": account}).decode() + "\n")
        return
    console.print(f"key id:  {record.id}\naccount: {account}\nscopes:  {','.join(sorted(scopes))}")
    console.print(f"secret (shown once): [bold]{secret}[/]")


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """List keys (never their secrets)."""
    records = _with_store(data_dir, database, lambda s: s.list_keys(account))
    rows = [
        {
            "id": r.id,
            "account": r.account,
            "name": r.name,
            "scopes": sorted(r.scopes),
            "created_at": r.created_at,
            "revoked_at": r.revoked_at,
        }
        for r in records
    ]
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    table = Table("id", "account", "name", "scopes", "status")
    for r in rows:
        table.add_row(
            r["id"],
            r["account"],
            r["name"] or "",
            ",".join(r["scopes"]),
            "revoked" if r["revoked_at"] else "active",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (key_…), not the secret")],
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Revoke a key; every node ends its open sockets within seconds."""
    if not _with_store(data_dir, database, lambda s: s.revoke_key(key_id)):
        raise fail(f"no active key {key_id}", 1)
    console.print(f"revoked {key_id}")


@app.command()
def login(
    account: Annotated[str, typer.Option(help="the account whose dashboard to open")],
    url: Url = DEFAULT_URL,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Print a one-time dashboard login link (valid 10 minutes)."""
    code = _with_store(data_dir, database, lambda s: s.create_login_code(account))
    console.print(f"{url.rstrip('/')}/?login={code}")


@app.command()
def token(
    key: Key,
    url: Url = DEFAULT_URL,
    ttl: Annotated[int | None, typer.Option(help="lifetime in seconds (max 86400)")] = None,
    calls: Annotated[str | None, typer.Option(help="comma-separated call ids it may see")] = None,
) -> None:
    """Mint a short-lived browser JWT from an API key (asks the server: it holds the secret)."""
    import httpx

    body: dict[str, Any] = {}
    if ttl is not None:
        body["ttl_s"] = ttl
    if calls:
        body["calls"] = [c.strip() for c in calls.split(",") if c.strip()]
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/tokens", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}", 1) from None
    if response.status_code != 200:
        raise fail(f"{response.status_code}: {response.text}", 1)
    sys.stdout.write(response.json()["token"] + "\n")


@app.command()
def simulate(
    key: Key,
    url: Url = DEFAULT_URL,
    calls: Annotated[int, typer.Option(min=1, max=100_000, help="concurrent calls")] = 5,
    rate: Annotated[float | None, typer.Option(min=0.001, help="new calls per second")] = None,
    speed: Annotated[float, typer.Option(min=0.1, max=1000.0, help="speaking pace multiplier")] = 1.0,
    duration: Annotated[float | None, typer.Option(min=0.1, help="stop after this many seconds")] = None,
    seed: Annotated[int | None, typer.Option(help="for reproducible conversations")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no live view")] = False,
) -> None:
    """Drive realistic simulated calls into a server."""
    from callstream.simulate import simulate_command

    simulate_command(url, key, calls, rate, speed, duration, seed, quiet)


@app.command()
def tail(
    key: Key,
    call_ids: Annotated[list[str] | None, typer.Argument(help="call ids to follow")] = None,
    url: Url = DEFAULT_URL,
    all_calls: Annotated[bool, typer.Option("--all", help="every call of the account")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="NDJSON, one event a line")] = False,
) -> None:
    """Live transcript in the terminal."""
    from callstream.tail import tail_command

    if not call_ids and not all_calls:
        raise fail("name call ids or pass --all")
    tail_command(url, key, ["*"] if all_calls else list(call_ids or []), as_json)


@app.command()
def migrate(data_dir: DataDir = None, database: DatabaseUrl = None) -> None:
    """Bring the database schema up to date (also done on start)."""
    _with_store(data_dir, database, lambda s: asyncio.sleep(0))
    console.print("schema is up to date")


def _mount_optional() -> None:
    try:
        from callstream.cli_webhooks import webhooks_app
    except ImportError:
        return
    app.add_typer(webhooks_app, name="webhooks")


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
