"""`callstream webhooks …`: manage endpoints and read the delivery log over the REST API.

The commands talk to a running server (like `tail` and `simulate`), never to the database, so
they work the same against one embedded node or a cluster behind a load balancer. Each prints
the API's answer with `--json`, else a rendering of it for people.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from callstream.cli.common import DEFAULT_URL, Json, Url, call_api, console, fail
from callstream.cli.common import AdminKey as Key

app = typer.Typer(
    help="Post-call webhooks: add, list and remove endpoints; read and replay deliveries.",
    no_args_is_help=True,
)

WebhookId = Annotated[str, typer.Argument(metavar="ID")]


def _show(answer: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """The API's answer as JSON with `--json`, else as `human` renders it."""
    if as_json:
        console.print_json(orjson.dumps(answer).decode())
    else:
        human(answer)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_secret(answer: dict[str, Any]) -> None:
    console.print(f"secret:  [bold]{answer['secret']}[/bold]  (shown once: store it now)")


@app.command("add")
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

    def human(created: dict[str, Any]) -> None:
        console.print(f"endpoint [bold]{created['id']}[/bold] → {created['url']}")
        console.print(f"events:  {', '.join(created['events'])}")
        _print_secret(created)

    _show(call_api("POST", url, key, "/v1/webhooks", {"url": endpoint_url, "events": event}), as_json, human)


@app.command("list")
def list_(key: Key, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """The account's endpoints (never their secrets)."""

    def human(answer: dict[str, Any]) -> None:
        table = Table("id", "url", "events", "state", "created (UTC)")
        for w in answer["webhooks"]:
            state = f"disabled: {w['disabled_reason']}" if w["disabled"] else "active"
            table.add_row(w["id"], w["url"], ", ".join(w["events"]), state, _when(w["created_at"]))
        console.print(table)

    _show(call_api("GET", url, key, "/v1/webhooks"), as_json, human)


@app.command("rm")
def rm(webhook_id: WebhookId, key: Key, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """Remove an endpoint with its pending deliveries and its log."""
    call_api("DELETE", url, key, f"/v1/webhooks/{webhook_id}")
    _show({"id": webhook_id, "deleted": True}, as_json, lambda _: console.print(f"removed {webhook_id}"))


@app.command("rotate")
def rotate(webhook_id: WebhookId, key: Key, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """A new signing secret; the old one keeps signing too until the overlap ends."""

    def human(answer: dict[str, Any]) -> None:
        _print_secret(answer)
        until = _when(answer["previous_secret_expires_at"])
        console.print(f"the previous secret also signs until {until} UTC")

    _show(call_api("POST", url, key, f"/v1/webhooks/{webhook_id}/rotate"), as_json, human)


@app.command("deliveries")
def deliveries(
    webhook_id: WebhookId,
    key: Key,
    url: Url = DEFAULT_URL,
    limit: Annotated[int, typer.Option(help="messages, newest first")] = 20,
    status: Annotated[str | None, typer.Option(help="pending / succeeded / failed")] = None,
    as_json: Json = False,
) -> None:
    """Every attempt of the endpoint's recent messages: time, code, latency, error, next retry."""

    def human(answer: dict[str, Any]) -> None:
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

    path = f"/v1/webhooks/{webhook_id}/deliveries"
    _show(call_api("GET", url, key, path, limit=limit, status=status), as_json, human)


@app.command("replay")
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
        fail("name a MESSAGE_ID or pass --failed-since ISO_TIME (one of the two)", 1)
    if message_id is not None:
        answer = call_api("POST", url, key, f"/v1/webhooks/deliveries/{message_id}/replay")
        _show(answer, as_json, lambda a: console.print(f"queued {a['message_id']} for delivery now"))
        return

    def human(answer: dict[str, Any]) -> None:
        console.print(f"queued {answer['replayed']} failed deliveries again")
        for mid in answer["message_ids"]:
            console.print(f"  {mid}")

    body = {"since": failed_since, "status": "failed", "endpoint_id": endpoint}
    _show(call_api("POST", url, key, "/v1/webhooks/replay", body), as_json, human)
