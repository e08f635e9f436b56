"""`callstream webhooks …`: manage endpoints and read the delivery log over the REST API.

The commands talk to a running server (like `tail` and `simulate`), never to the database, so
they work the same against one embedded node or a cluster behind a load balancer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import httpx
import orjson
import typer
from rich.console import Console
from rich.table import Table

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(
    help="Post-call webhooks: add, list and remove endpoints; read and replay deliveries.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="CALLSTREAM_URL", help="the server's base URL")]
Key = Annotated[
    str,
    typer.Option("--key", envvar="CALLSTREAM_KEY", help="an API key (admin)", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]
DEFAULT_URL = "http://127.0.0.1:8080"


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _call(method: str, url: str, key: str, path: str, body: Any = None, **params: Any) -> Any:
    """One request; any HTTP or connection error becomes a one-line message and exit code 1."""
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
        _fail(f"cannot reach {url}: {exc}")
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            _fail(f"{error['code']}: {error['message']} (HTTP {response.status_code})")
        except (ValueError, KeyError, TypeError):
            _fail(f"HTTP {response.status_code}: {response.text[:200]}")
    return None if response.status_code == 204 else response.json()


def _print_json(value: Any) -> None:
    console.print_json(orjson.dumps(value).decode())


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@webhooks_app.command("add")
def add(
    endpoint_url: Annotated[str, typer.Argument(metavar="URL", help="where to POST")],
    key: Key,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="call.ended / transcript.completed (default: all)"),
    ] = None,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Register an endpoint; prints its signing secret, which is shown only this once."""
    created = _call("POST", url, key, "/v1/webhooks", {"url": endpoint_url, "events": event})
    if as_json:
        _print_json(created)
        return
    console.print(f"endpoint [bold]{created['id']}[/bold] → {created['url']}")
    console.print(f"events:  {', '.join(created['events'])}")
    console.print(f"secret:  [bold]{created['secret']}[/bold]  (shown once: store it now)")


@webhooks_app.command("list")
def list_(key: Key, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """The account's endpoints (never their secrets)."""
    answer = _call("GET", url, key, "/v1/webhooks")
    if as_json:
        _print_json(answer)
        return
    table = Table("id", "url", "events", "state", "created (UTC)")
    for w in answer["webhooks"]:
        state = f"disabled: {w['disabled_reason']}" if w["disabled"] else "active"
        table.add_row(w["id"], w["url"], ", ".join(w["events"]), state, _when(w["created_at"]))
    console.print(table)


@webhooks_app.command("rm")
def rm(
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    key: Key,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Remove an endpoint with its pending deliveries and its log."""
    _call("DELETE", url, key, f"/v1/webhooks/{webhook_id}")
    if as_json:
        _print_json({"id": webhook_id, "deleted": True})
    else:
        console.print(f"removed {webhook_id}")


@webhooks_app.command("rotate")
def rotate(
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    key: Key,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """A new signing secret; the old one keeps signing too until the overlap ends."""
    answer = _call("POST", url, key, f"/v1/webhooks/{webhook_id}/rotate")
    if as_json:
        _print_json(answer)
        return
    console.print(f"secret:  [bold]{answer['secret']}[/bold]  (shown once: store it now)")
    until = _when(answer["previous_secret_expires_at"])
    console.print(f"the previous secret also signs until {until} UTC")


@webhooks_app.command("deliveries")
def deliveries(
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    key: Key,
    url: Url = DEFAULT_URL,
    limit: Annotated[int, typer.Option(help="messages, newest first")] = 20,
    status: Annotated[str | None, typer.Option(help="pending / succeeded / failed")] = None,
    as_json: Json = False,
) -> None:
    """Every attempt of the endpoint's recent messages: time, code, latency, error, next retry."""
    answer = _call("GET", url, key, f"/v1/webhooks/{webhook_id}/deliveries", limit=limit, status=status)
    if as_json:
        _print_json(answer)
        return
    table = Table(
        "message (webhook-id)", "type", "call", "#", "at (UTC)", "code", "ms", "result", "error",
        "next retry (UTC)", title=f"deliveries of {webhook_id}",
    )  # fmt: skip
    for d in answer["deliveries"]:
        head = [d["message_id"], d["type"], d["call_id"]]
        if not d["attempts"]:
            table.add_row(*head, "-", "-", "-", "-", d["status"], "", _when(d["next_attempt_at"]))
        for a in d["attempts"]:
            code = "-" if a["status_code"] is None else str(a["status_code"])
            table.add_row(
                *head, str(a["attempt"]), _when(a["attempted_at"]), code, str(a["latency_ms"]),
                a["result"], a["error"] or "", _when(a["next_attempt_at"]),
            )  # fmt: skip
            head = ["", "", ""]
    console.print(table)


@webhooks_app.command("replay")
def replay(
    key: Key,
    message_id: Annotated[
        str | None, typer.Argument(metavar="[MESSAGE_ID]", help="the delivery to send again")
    ] = None,
    failed_since: Annotated[
        str | None,
        typer.Option("--failed-since", help="ISO time: re-send every delivery failed since"),
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="with --failed-since: only this endpoint")] = None,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Send a delivery again now (same webhook-id), or every one that failed since a time."""
    if (message_id is None) == (failed_since is None):
        _fail("name a MESSAGE_ID or pass --failed-since ISO_TIME (one of the two)")
    if message_id is not None:
        answer = _call("POST", url, key, f"/v1/webhooks/deliveries/{message_id}/replay")
        if as_json:
            _print_json(answer)
        else:
            console.print(f"queued {answer['message_id']} for delivery now")
        return
    body = {"since": failed_since, "status": "failed", "endpoint_id": endpoint}
    answer = _call("POST", url, key, "/v1/webhooks/replay", body)
    if as_json:
        _print_json(answer)
        return
    console.print(f"queued {answer['replayed']} failed deliveries again")
    for mid in answer["message_ids"]:
        console.print(f"  {mid}")
