"""`callstream token`: a short-lived browser JWT, minted by the server (it holds the signing secret)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from callstream.cli.common import DEFAULT_URL, ControlScope, Key, ListenScope, SessionName, Url, call_api


def token(
    key: Key,
    url: Url = DEFAULT_URL,
    ttl: Annotated[int | None, typer.Option(help="lifetime in seconds (max 86400)")] = None,
    calls: Annotated[str | None, typer.Option(help="comma-separated call ids it may see")] = None,
    control: ControlScope = False,
    listen: ListenScope = False,
    name: SessionName = None,
) -> None:
    """Mint a short-lived browser JWT from an API key (asks the server: it holds the secret)."""
    scopes = ["subscribe"] + ["control"] * control + ["listen"] * listen
    body: dict[str, Any] = {"scope": scopes} if len(scopes) > 1 else {}
    if name is not None:
        body["name"] = name  # checked by the server, whose answer says what is wrong
    if ttl is not None:
        body["ttl_s"] = ttl
    if calls:
        body["calls"] = [c.strip() for c in calls.split(",") if c.strip()]
    sys.stdout.write(call_api("POST", url, key, "/v1/tokens", body)["token"] + "\n")
