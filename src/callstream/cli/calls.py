"""`callstream calls list|search|delete`: an account's calls from a running server, filtered and
searched over `GET /v1/calls` (docs/protocol.md, Listing and searching calls), and erased
(docs/privacy.md). The commands talk to the server's REST API, never to the database, so an
erasure reaches every node of a cluster (their replay logs and caches too)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from callstream.cli.common import DEFAULT_URL, AdminKey, Json, Key, Url, call_api, console, fail
from callstream.events import is_valid_call_id

app = typer.Typer(help="List, search and erase the account's calls.", no_args_is_help=True)

Status = Annotated[str | None, typer.Option(help="live | ended")]
Limit = Annotated[int, typer.Option(min=1, max=500, help="calls a page")]
Cursor = Annotated[str | None, typer.Option(help="the page after this one (a previous answer's next_cursor)")]
Query = Annotated[
    str | None, typer.Argument(metavar="Q", help='words the transcript holds: refund, "late fee", appoint*')
]


@app.command("list")
def list_calls(
    key: Key,
    url: Url = DEFAULT_URL,
    status: Status = None,
    limit: Limit = 20,
    cursor: Cursor = None,
    as_json: Json = False,
) -> None:
    """The account's calls, newest first."""
    _show(call_api("GET", url, key, "/v1/calls", status=status, limit=limit, cursor=cursor), as_json)


@app.command("search")
def search(
    key: Key,
    q: Query = None,
    url: Url = DEFAULT_URL,
    status: Status = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="K=V: the call's metadata key K is V (repeatable)")
    ] = None,
    started_after: Annotated[int | None, typer.Option(help="ms since the epoch")] = None,
    started_before: Annotated[int | None, typer.Option(help="ms since the epoch")] = None,
    sentiment_below: Annotated[float | None, typer.Option(help="the call's mean sentiment is below this (-1 to 1)")] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
    as_json: Json = False,
) -> None:
    """Calls whose final transcripts match Q, newest first, each with the line that matched.

    Every filter given must hold too. Without Q, the calls that pass the filters; a Q with no letter
    or digit is refused."""
    params: dict[str, Any] = {
        "q": q, "status": status, "started_after": started_after, "started_before": started_before,
        "sentiment_below": sentiment_below, "limit": limit, "cursor": cursor,
    }
    for pair in metadata or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--metadata takes K=V, not {pair!r}")
        params[f"metadata.{name}"] = value
    _show(call_api("GET", url, key, "/v1/calls", **params), as_json)


def _show(page: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(page).decode() + "\n")
        return
    calls = page["calls"]
    if not calls:
        console.print("no calls match")
        return
    searched = any("snippet" in call for call in calls)
    table = Table(box=None, pad_edge=False)
    for column in ("call", "status", "started", "duration", *(("match",) if searched else ())):
        table.add_column(column, overflow="fold")
    for call in calls:
        cells: list[str | Text] = [call["call_id"], call["status"], _when(call["started_at"]), _duration(call)]
        if searched:
            cells.append(snippet_text(call))
        table.add_row(*cells)
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"[dim]more: --cursor {page['next_cursor']}[/dim]")


def snippet_text(call: dict[str, Any]) -> Text:
    """A hit's snippet with its matches in bold, after who said it."""
    match = call.get("match") or {}
    text = Text(f"{match.get('speaker', '?')} #{match.get('seq', '?')}: ", style="dim")
    body = Text(call.get("snippet", ""))
    for start, end in match.get("marks", ()):
        body.stylize("bold yellow", start, end)
    return text + body


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(call: dict[str, Any]) -> str:
    ms = call.get("duration_ms")
    return "live" if ms is None else f"{ms / 1000:.0f} s"


@app.command("delete")
def delete(
    call_id: Annotated[str, typer.Argument(metavar="CALL_ID", help="an ended call")],
    key: AdminKey,
    url: Url = DEFAULT_URL,
) -> None:
    """Erase an ended call everywhere: events, transcript, metadata, replay history, pending webhooks.

    Exits 1 when the server refuses (a live call, no such call) or cannot be reached."""
    if not is_valid_call_id(call_id):
        fail("CALL_ID must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    call_api("DELETE", url, key, f"/v1/calls/{call_id}")
    console.print(f"call {call_id} erased")
