"""`callstream keys …` and `login`: credentials made in the database, or over the API with `--url`.

With `--url` and `--key` (an `admin` key) the keys commands use the server's REST API (docs/protocol.md,
REST) and act on that key's account; without, they open the store directly (a shell on
the server), for any account. `login` always opens the store.
"""

from __future__ import annotations

import sys
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from callstream.cli.common import (
    DEFAULT_URL,
    ControlScope,
    DatabaseUrl,
    DataDir,
    ListenScope,
    SessionName,
    Url,
    call_api,
    console,
    fail,
    with_store,
)
from callstream.session_names import check_session_name

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
ServerUrl = Annotated[
    str | None, typer.Option("--url", help="talk to this server's REST API instead of the store (needs --key)")
]
AdminKey = Annotated[
    str | None,
    typer.Option("--key", envvar="CALLSTREAM_KEY", help="an admin API key, with --url", show_default=False),
]
LoginAccount = Annotated[str, typer.Option(help="the account whose dashboard to open")]


@dataclass(frozen=True)
class _Server:
    """The keys of the `--key`'s own account, over the server's REST API."""

    url: str
    key: str

    def create_key(self, account: str | None, scopes: frozenset[str], name: str | None) -> tuple[str, str, str]:
        created = call_api("POST", self.url, self.key, "/v1/keys", {"scopes": sorted(scopes), "name": name})
        if account is not None and created["account"] != account:
            fail(f"the key was made for account {created['account']}: --url acts on the --key's account", 1)
        return created["id"], created["key"], created["account"]

    def list_keys(self, account: str | None) -> list[dict[str, Any]]:
        return [r for r in call_api("GET", self.url, self.key, "/v1/keys")["keys"] if account in (None, r["account"])]

    def revoke_key(self, key_id: str) -> bool:
        call_api("DELETE", self.url, self.key, f"/v1/keys/{urllib.parse.quote(key_id, safe='')}")
        return True  # an unknown or revoked key is the API's 404, which `call_api` reports


@dataclass(frozen=True)
class _Store:
    """The keys of any account, in the store itself."""

    data_dir: str | None
    database: str | None

    def create_key(self, account: str | None, scopes: frozenset[str], name: str | None) -> tuple[str, str, str]:
        from callstream.events import is_valid_call_id

        if account is None or not is_valid_call_id(account):
            fail("--account must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        made, secret = with_store(self.data_dir, self.database, lambda s: s.create_key(account, scopes, name))
        return made.id, secret, account

    def list_keys(self, account: str | None) -> list[dict[str, Any]]:
        records = with_store(self.data_dir, self.database, lambda s: s.list_keys(account))
        return [
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

    def revoke_key(self, key_id: str) -> bool:
        return with_store(self.data_dir, self.database, lambda s: s.revoke_key(key_id))


def _keys(data_dir: str | None, database: str | None, url: str | None, key: str | None) -> _Server | _Store:
    """Where the command acts: the server at `--url` (which needs `--key`), else the store."""
    if url is None:
        return _Store(data_dir, database)
    if not key:
        fail("--url needs --key (an API key with the admin scope)")
    return _Server(url, key)


@app.command("create")
def create(
    account: Annotated[
        str | None, typer.Option(help="the account (tenant) the key belongs to; with --url: the key's own")
    ] = None,
    scope: Annotated[
        str, typer.Option(help="comma-separated: publish,subscribe,control,listen,admin")
    ] = "publish,subscribe,control,listen,admin",
    name: Annotated[str | None, typer.Option(help="a label for humans")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"key","id","account"}')] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
    url: ServerUrl = None,
    key: AdminKey = None,
) -> None:
    """Create an API key; its secret is printed once and only stored hashed."""
    from callstream.auth import parse_scopes

    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        fail(f"--scope: {exc}")
    key_id, secret, account = _keys(data_dir, database, url, key).create_key(account, scopes, name)
    if as_json:
        sys.stdout.write(orjson.dumps({"key": secret, "id": key_id, "account": account}).decode() + "\n")
        return
    console.print(f"key id:  {key_id}\naccount: {account}\nscopes:  {','.join(sorted(scopes))}")
    console.print(f"secret (shown once): [bold]{secret}[/]")


@app.command("list")
def list_(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
    url: ServerUrl = None,
    key: AdminKey = None,
) -> None:
    """List keys (never their secrets)."""
    rows = _keys(data_dir, database, url, key).list_keys(account)
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    table = Table("id", "account", "name", "scopes", "status")
    for r in rows:
        status = "revoked" if r["revoked_at"] else "active"
        table.add_row(r["id"], r["account"], r["name"] or "", ",".join(r["scopes"]), status)
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (key_…), not the secret")],
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
    url: ServerUrl = None,
    key: AdminKey = None,
) -> None:
    """Revoke a key; every node ends its open sockets and streams within seconds."""
    if not _keys(data_dir, database, url, key).revoke_key(key_id):
        fail(f"no active key {key_id}", 1)
    console.print(f"revoked {key_id}")


def login(
    account: LoginAccount,
    url: Url = DEFAULT_URL,
    control: ControlScope = False,
    listen: ListenScope = False,
    name: SessionName = None,
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
) -> None:
    """Print a one-time dashboard login link (valid 10 minutes)."""
    if name is not None:
        try:
            check_session_name(name)
        except ValueError as exc:
            fail(f"--name: {exc}")
    code = with_store(
        data_dir, database, lambda s: s.create_login_code(account, control=control, name=name, listen=listen)
    )
    console.print(f"{url.rstrip('/')}/?login={code}")
