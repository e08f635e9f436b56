"""What every `callstream` command shares: the consoles, the options, settings, the store, the API."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from callstream.settings import Settings, ValidationError, describe_errors

if TYPE_CHECKING:  # the store (SQLAlchemy) loads only for the commands that open it
    from callstream.store import SqlStore

T = TypeVar("T")

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_URL = "http://127.0.0.1:8080"

Host = Annotated[str | None, typer.Option(help="interface to bind (env CALLSTREAM_HOST; 127.0.0.1)")]
Port = Annotated[int | None, typer.Option(help="port (env CALLSTREAM_PORT; 8080; 0 = any free)")]
DataDir = Annotated[
    str | None, typer.Option(help="where the embedded SQLite store lives (env CALLSTREAM_DATA_DIR)")
]
BrokerUrl = Annotated[str | None, typer.Option("--broker", help="redis://… (env CALLSTREAM_BROKER)")]
DatabaseUrl = Annotated[
    str | None, typer.Option("--database", help="postgresql://… (env CALLSTREAM_DATABASE)")
]
Url = Annotated[str, typer.Option(envvar="CALLSTREAM_URL", help="the server's base URL")]
Key = Annotated[str, typer.Option(envvar="CALLSTREAM_KEY", help="an API key", show_default=False)]
AdminKey = Annotated[
    str, typer.Option(envvar="CALLSTREAM_KEY", help="an API key (admin)", show_default=False)
]
Json = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]
ControlScope = Annotated[
    bool, typer.Option("--control", help="it may also act on live calls: say, end, … (a token: if its key may)")
]
ListenScope = Annotated[
    bool, typer.Option("--listen", help="it may also hear live calls and play recordings (a token: if its key may)")
]
SessionName = Annotated[
    str | None,
    typer.Option(
        help="the session's own name, shown as who asked in its control requests (default: the key's)"
    ),
]


def setting(name: str, *flags: str) -> Any:
    """The option that sets `Settings.<name>`. Its help is the setting's description followed by
    its variable and default, so a flag and its `CALLSTREAM_*` variable are described once."""
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    shown = "" if default in (None, "", []) or isinstance(default, bool) else f"; {default}"
    return typer.Option(*flags, help=f"{field.description} (env CALLSTREAM_{name.upper()}{shown})")


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with a one-line error on stderr and exit `code` (2: usage, 1: it failed)."""
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def check_url(url: str) -> str:
    """`url` if it is a server's base URL (http(s):// or ws(s)://), else a one-line usage error."""
    from callstream.wire import rest_url

    try:
        rest_url(url)
    except ValueError as exc:
        fail(escape(str(exc)))
    return url


def load_settings(**given: Any) -> Settings:
    """Settings from the flags given, then CALLSTREAM_* variables, then defaults; clear errors."""
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        fail("invalid configuration:\n" + describe_errors(exc, flags=given.keys()))


def with_store(data_dir: str | None, database: str | None, work: Callable[[SqlStore], Awaitable[T]]) -> T:
    """Run `work` on the store the flags name (no writer: another process may be serving it)."""
    return on_store(load_settings(data_dir=data_dir, database=database), work)


def on_store(settings: Settings, work: Callable[[SqlStore], Awaitable[T]]) -> T:
    """Run `work` on the store `settings` name, its schema brought up to date first (no writer).
    A database this version cannot upgrade, or cannot open at all, ends the command in one line;
    the store raises `StoreUnavailableError` for what its driver could not open, and the line
    names the driver's error it carries (a refused connection, a missing database)."""
    from callstream.store import SqlStore, StoreUnavailableError, database_url
    from callstream.store.migrate import UnknownSchemaError

    async def main() -> T:
        try:
            store = SqlStore(database_url(settings.database, settings.data_dir))
        except (OSError, ValueError, StoreUnavailableError) as exc:  # no data dir; a URL that is not one
            raise _CannotOpenError(exc) from exc
        try:
            try:
                await store.start(writer=False)
            except (ValueError, TypeError, StoreUnavailableError) as exc:
                # ValueError, TypeError: the driver refused the URL (a port that is not a number,
                # libpq's `sslmode`)
                raise _CannotOpenError(exc) from exc
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except UnknownSchemaError as exc:
        fail(escape(str(exc)), 1)
    except _CannotOpenError as exc:
        cause: BaseException = exc.cause
        if isinstance(cause, StoreUnavailableError) and cause.__cause__ is not None:
            cause = cause.__cause__  # what the driver said
        reason = masked(str(getattr(cause, "orig", None) or cause).splitlines()[0], settings.database)
        fail(escape(f"cannot open the database: {type(cause).__name__}: {reason}"), 1)


def masked(text: str, url: str | None) -> str:
    """`text` without the password of `url` (as written in it, and decoded)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    if url is not None:
        with contextlib.suppress(ArgumentError, ValueError):
            if password := make_url(url).password:
                text = text.replace(str(password), "***")
    return text


class _CannotOpenError(Exception):
    """The store could not start: its database is unreachable, refused us, or is not one."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def call_api(method: str, url: str, key: str, path: str, body: Any = None, **params: Any) -> Any:
    """One request to the server's REST API; any HTTP or connection error becomes a one-line
    message and exit code 1. None for a 204, else the JSON answer."""
    try:
        response = httpx.request(
            method,
            url.rstrip("/") + path,
            headers={"authorization": f"Bearer {key}"},
            json=body,
            params={k: v for k, v in params.items() if v is not None},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", 1)
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            fail(f"{error['code']}: {error['message']} (HTTP {response.status_code})", 1)
        except (ValueError, KeyError, TypeError):
            fail(f"HTTP {response.status_code}: {response.text[:200]}", 1)
    return None if response.status_code == 204 else response.json()
