"""The pages tests/docs/test_snippets.py reads, and what each page's reader did before it.

A path is read from nothing (the getting-started pages, the quickstart, README); a page in the
middle of the docs (client.md, control.md …) gets a prelude: the server, the exported `KEY` and
the calls its reader already has. One server per page at most, started by the prelude.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTED = "export PATH=$PWD/.venv/bin:$PATH\n"


def _server(key_options: str = "") -> str:
    """A server of the reader's, with an API key of account acme exported as KEY."""
    return STARTED + (
        "callstream serve --data-dir ./data > .snippets/server.log 2>&1 &\n"
        f"export KEY=$(callstream keys create --account acme{key_options} --json --data-dir ./data | jq -r .key)\n"
        "until curl -sf localhost:8080/healthz > /dev/null; do sleep 0.1; done\n"
    )


SERVER = _server()
# a reader with a key, whose page starts the server it needs (webhooks.md: one that may deliver
# to this machine; recordings.md: one that records)
KEY_ONLY = (
    STARTED + "export KEY=$(callstream keys create --account acme --json --data-dir ./data | jq -r .key)\n"
)


def _publish(call_id: str, events: list[dict[str, object]]) -> str:
    body = json.dumps(events).replace("'", "'\\''")
    return f"curl -sf -X POST localhost:8080/v1/calls/{call_id}/events -H \"Authorization: Bearer $KEY\" -d '{body}' > /dev/null\n"


def _final(speaker: str, text: str) -> dict[str, object]:
    return {"type": "transcript.final", "data": {"speaker": speaker, "text": text}}


ENDED = {"type": "call.ended", "data": {"status": "completed", "duration_ms": 41000}}

# the quickstart's call, which client.md's reader has
CALL_42 = [
    _final("user", "Hi, I need to move my appointment."),
    {"type": "agent.state", "data": {"state": "thinking"}},
    {"type": "function.call", "data": {"name": "find_booking", "args": {"phone": "+15550100"}, "tool_call_id": "t1"}},
    {"type": "function.result", "data": {"name": "find_booking", "result": {"id": "B-7"}, "tool_call_id": "t1"}},
    _final("agent", "Sure, I found your booking for Friday. What day works better?"),
    ENDED,
]
# calls with something to find (search.md) and to erase (privacy.md)
LATE_FEE = [
    {"type": "call.started", "data": {"metadata": {"campaign": "spring"}}},
    _final("user", "Hi, I was charged a late fee twice. Can I get a refund?"),
    _final("agent", "I am sorry about that, I can see the two charges."),
    ENDED,
]
SHORT = [_final("user", "Hello?"), ENDED]

# control.md: a supervisor's key (named, as tail shows it), and a voice agent that holds call_42
# live and carries out say, transfer and end
SUPERVISOR = _server(" --name Dana")
AGENT = (
    f"python {ROOT / 'tests/docs/control_agent.py'} > .snippets/agent.log 2>&1 &\n"
    "until grep -q holding .snippets/agent.log; do sleep 0.1; done\n"
)

# name: (the pages, read in this order in one terminal; what the reader did before)
PATHS: dict[str, tuple[list[str], str]] = {
    "getting-started": (["docs/getting-started/run.md", "docs/getting-started/watch.md", "docs/getting-started/publish.md"], ""),
    "quickstart": (["docs/quickstart.md"], ""),
    "readme": (["README.md"], ""),
    "client": (["docs/client.md"], SERVER + _publish("call_42", CALL_42)),
    "control": (["docs/control.md"], SUPERVISOR + AGENT),
    "dashboard": (["docs/dashboard.md"], STARTED),  # login works on the store itself: no server
    "operations": (["docs/operations.md"], STARTED),
    "privacy": (["docs/privacy.md"], SERVER + _publish("call_42", SHORT) + _publish("call_43", SHORT)),
    "protocol": (["docs/protocol.md"], STARTED),
    "search": (["docs/search.md"], SERVER + _publish("call_42", LATE_FEE)),
    "webhooks": (["docs/webhooks.md"], KEY_ONLY),
    "audio": (["docs/audio.md"], SERVER),
    "recordings": (["docs/recordings.md"], KEY_ONLY),
}
