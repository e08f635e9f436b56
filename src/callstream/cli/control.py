"""`callstream control CALL_ID ACTION [TEXT|TO]`: act on a live call from the terminal, and say
how it went (docs/control.md)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import orjson
import typer

from callstream.cli.common import DEFAULT_URL, Json, Key, Url, call_api, console, fail
from callstream.control import ACTIONS

# The action's one positional value: what `say`/`instruct` say, where `transfer` goes.
_VALUE = {"say": "text", "instruct": "text", "transfer": "to"}
_POLL_S = 0.25


def control(
    call_id: Annotated[str, typer.Argument(help="the live call")],
    action: Annotated[str, typer.Argument(help=" | ".join(ACTIONS))],
    key: Key,
    value: Annotated[str | None, typer.Argument(help="say/instruct: the text; transfer: +E.164 or sip: URI")] = None,
    url: Url = DEFAULT_URL,
    interrupt: Annotated[bool, typer.Option("--interrupt", help="say: at once, cutting the agent off")] = False,
    reason: Annotated[str | None, typer.Option(help="transfer/end: why (kept in the call's history)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the producer's result")] = True,
    as_json: Json = False,
) -> None:
    """Ask the producer of a live call to act; exits 1 when refused or when the action failed."""
    if action not in ACTIONS:
        fail(f"ACTION must be one of {', '.join(ACTIONS)}")
    args: dict[str, Any] = {}
    if action in _VALUE:
        if value is None:
            fail(f"{action} needs its {_VALUE[action]}: callstream control {call_id} {action} VALUE")
        args[_VALUE[action]] = value
    elif value is not None:
        fail(f"{action} takes no value")
    if interrupt:
        args["interrupt"] = True
    if reason is not None:
        args["reason"] = reason
    ack = call_api("POST", url, key, f"/v1/calls/{call_id}/control", {"action": action, "args": args})
    outcome: dict[str, Any] = {"request_id": ack["request_id"], "seq": ack["seq"]}
    if wait:
        outcome |= _result(url, key, call_id, ack["request_id"], ack["seq"])
    if as_json:
        sys.stdout.write(orjson.dumps(outcome).decode() + "\n")
    elif not wait:
        console.print(f"{action} requested ({outcome['request_id']}, seq {outcome['seq']})")
    elif outcome["ok"]:
        console.print(f"{action}: done ({outcome['request_id']})")
    else:
        console.print(f"{action}: [red]failed[/red]: {outcome.get('error')} ({outcome['request_id']})")
    if wait and not outcome["ok"]:
        raise typer.Exit(1)


def _result(url: str, key: str, call_id: str, request_id: str, since: int, wait_s: float = 60.0) -> dict[str, Any]:
    """The request's `control.result`, read from the call's events (the server answers every
    request within its control timeout)."""
    deadline = time.monotonic() + wait_s
    while True:
        if time.monotonic() > deadline:
            fail(f"no result for {request_id} within {wait_s:g} s", 1)
        page = call_api("GET", url, key, f"/v1/calls/{call_id}/events", since=since)
        for event in page["events"]:
            since = max(since, event["seq"])
            if event["type"] == "control.result" and event["data"].get("request_id") == request_id:
                return {k: event["data"][k] for k in ("ok", "error") if k in event["data"]}
        time.sleep(_POLL_S)
