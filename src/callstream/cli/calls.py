"""`callstream calls …`: a server's calls as records (docs/privacy.md).

Like `webhooks`, the commands talk to a running server over its REST API, never to the database,
so an erasure reaches every node of a cluster (their replay logs and caches too).
"""

from __future__ import annotations

from typing import Annotated

import typer

from callstream.cli.common import DEFAULT_URL, Url, call_api, console, fail
from callstream.cli.common import AdminKey as Key
from callstream.events import is_valid_call_id

app = typer.Typer(help="Calls as records: erase an ended call.", no_args_is_help=True)


@app.command("delete")
def delete(
    call_id: Annotated[str, typer.Argument(metavar="CALL_ID", help="an ended call")],
    key: Key,
    url: Url = DEFAULT_URL,
) -> None:
    """Erase an ended call everywhere: events, transcript, metadata, replay history, pending
    webhooks. Exits 1 when the server refuses (a live call, no such call) or cannot be reached."""
    if not is_valid_call_id(call_id):
        fail("CALL_ID must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    call_api("DELETE", url, key, f"/v1/calls/{call_id}")
    console.print(f"call {call_id} erased")
