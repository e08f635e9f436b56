"""`callstream keys …` and `login`: credentials made straight in the database, never over the API."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.table import Table

from callstream.cli.common import DEFAULT_URL, DatabaseUrl, DataDir, Url, console, fail, with_store

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command("create")
def create(
    account: Annotated[str, typer.Option(help="the account (tenant) the key belongs to")],
    scope: Annotated[
        str, typer.Option(help="comma-separated: publish,subscribe,control,admin")
    ] = "publish,subscribe,control,admin",
    name: Annotated[str | None, typer.Option(help="a label for humans")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"key","id","account"}')] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Create an API key; its secret is printed once and only stored hashed."""
    from callstream.auth import parse_scopes
    from callstream.events import is_valid_call_id

    if not is_valid_call_id(account):
        fail("--account must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        fail(f"--scope: {exc}")
    record, secret = with_store(data_dir, database, lambda s: s.create_key(account, scopes, name))
    if as_json:
        sys.stdout.write(orjson.dumps({"key": secret, "id": record.id, "account": account}).decode() + "\n")
        return
    console.print(f"key id:  {record.id}\naccount: {account}\nscopes:  {','.join(sorted(scopes))}")
    console.print(f"secret (shown once): [bold]{secret}[/]")


@app.command("list")
def list_(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """List keys (never their secrets)."""
    records = with_store(data_dir, database, lambda s: s.list_keys(account))
    if as_json:
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
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    table = Table("id", "account", "name", "scopes", "status")
    for r in records:
        status = "revoked" if r.revoked_at else "active"
        table.add_row(r.id, r.account, r.name or "", ",".join(sorted(r.scopes)), status)
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (key_…), not the secret")],
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Revoke a key; every node ends its open sockets within seconds."""
    if not with_store(data_dir, database, lambda s: s.revoke_key(key_id)):
        fail(f"no active key {key_id}", 1)
    console.print(f"revoked {key_id}")


def login(
    account: Annotated[str, typer.Option(help="the account whose dashboard to open")],
    url: Url = DEFAULT_URL,
    control: Annotated[
        bool, typer.Option("--control", help="the session may also act on live calls (say, end, …)")
    ] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Print a one-time dashboard login link (valid 10 minutes)."""
    code = with_store(data_dir, database, lambda s: s.create_login_code(account, control=control))
    console.print(f"{url.rstrip('/')}/?login={code}")
