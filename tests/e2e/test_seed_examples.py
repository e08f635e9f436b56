"""The product page's JavaScript examples (seed/events-api.txt), unchanged, under Node 20.

Each test writes an .mjs file: a small harness prelude, then the page's snippets copied verbatim
(only the host `wss://api.call2me.app` becomes the test server's `ws://127.0.0.1:PORT`), and runs
it with `node --experimental-websocket` (Node's built-in WebSocket, no npm package). The harness
wraps the global WebSocket class to print every socket's open/message/close as JSON lines, captures
the snippets' own `console.log` output, defines `apiKey` and `activeSubscriptions`, and runs the
snippets that are statements about an open socket (`ws.send(...)`) when the test asks on stdin.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, ended, final, missing, partial, publish

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "events-api.txt"
HOST = "wss://api.call2me.app"

# ---- the snippets, verbatim from the product page ------------------------------------------------

CONNECTING = """\
const url = `wss://api.call2me.app/v1/events?token=${apiKey}`;
const ws = new WebSocket(url);
ws.onopen = () => {
ws.send(JSON.stringify({ type: 'subscribe', call_id: 'call_xyz789' }));
};
ws.onmessage = (event) => {
const msg = JSON.parse(event.data);
console.log(msg.type, msg.data);
};"""

TWO_CALLS = """\
ws.send(JSON.stringify({ type: 'subscribe', call_id: 'call_a' }));
ws.send(JSON.stringify({ type: 'subscribe', call_id: 'call_b' }));"""

UNSUBSCRIBE = """\
ws.send(JSON.stringify({ type: 'unsubscribe', call_id: 'call_a' }));"""

RECONNECT = """\
let reconnectDelay = 1000;
function connect() {
const ws = new WebSocket(url);
ws.onopen = () => {
reconnectDelay = 1000;
activeSubscriptions.forEach(id =>
ws.send(JSON.stringify({ type: 'subscribe', call_id: id }))
);
};
ws.onclose = () => setTimeout(connect, Math.min(reconnectDelay *= 2, 30000));
}
connect();"""

# ---- the harness around them ---------------------------------------------------------------------

PRELUDE = """\
import readline from 'node:readline';
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\\n');
const NativeWebSocket = globalThis.WebSocket;
let socketCount = 0;
globalThis.WebSocket = class HarnessWebSocket extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    const id = socketCount++;
    let opened = false;
    let closed = false;
    this.addEventListener('open', () => { opened = true; emit({ ev: 'open', socket: id }); });
    this.addEventListener('message', (e) => emit({ ev: 'message', socket: id, msg: JSON.parse(e.data) }));
    this.addEventListener('close', (e) => { closed = true; emit({ ev: 'close', socket: id, code: e.code }); });
    this.addEventListener('error', () => {
      emit({ ev: 'error', socket: id });
      // Browsers (and the WHATWG spec) fire `close` after a failed handshake; Node 20's undici
      // does not (nodejs/undici#3546), which would end the page's reconnect loop for good.
      if (!opened) setTimeout(() => { if (!closed) { emit({ ev: 'shim_close', socket: id }); this.dispatchEvent(new Event('close')); } }, 50);
    });
  }
};
console.log = (...args) => emit({ ev: 'log', args });
const apiKey = process.env.CALLSTREAM_TEST_CREDENTIAL;
const activeSubscriptions = JSON.parse(process.env.CALLSTREAM_TEST_SUBSCRIPTIONS || '[]');
const actions = {};
"""

EPILOGUE = """
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  actions[line.trim()]();
  emit({ ev: 'ran', action: line.trim() });
});
emit({ ev: 'ready' });
"""


def build_script(port: int, *, connecting: bool = True, reconnect: bool = False) -> str:
    parts = [PRELUDE]
    if connecting:
        parts.append(CONNECTING)
        parts.append("actions.two_calls = () => {\n" + TWO_CALLS + "\n};")
        parts.append("actions.unsubscribe = () => {\n" + UNSUBSCRIBE + "\n};")
    else:  # the reconnect example needs `url` from the connecting example: its first line alone
        parts.append(CONNECTING.splitlines()[0])
    if reconnect:
        parts.append(RECONNECT)
    parts.append(EPILOGUE)
    return "\n".join(parts).replace(HOST, f"ws://127.0.0.1:{port}")


def test_snippets_are_verbatim_copies_of_the_product_page() -> None:
    if not SEED.exists():
        pytest.skip(f"{SEED} is not available here")
    page = SEED.read_text()
    for snippet in (CONNECTING, TWO_CALLS, UNSUBSCRIBE, RECONNECT):
        assert snippet in page


# ---- running node --------------------------------------------------------------------------------


class NodeClient:
    def __init__(self, script: Path, credential: str, subscriptions: list[str]) -> None:
        node = shutil.which("node") or "/usr/bin/node"
        env = {
            **os.environ,
            "CALLSTREAM_TEST_CREDENTIAL": credential,
            "CALLSTREAM_TEST_SUBSCRIPTIONS": json.dumps(subscriptions),
        }
        self.proc = subprocess.Popen(
            [node, "--experimental-websocket", "--no-warnings", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        stdout = self.proc.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                self.lines.put(json.loads(line))

        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                stderr = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                raise AssertionError(f"node never printed the expected line; saw {self.seen[-15:]} {stderr}")
            try:
                item = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.seen.append(item)
            if predicate(item):
                return item

    def message(self, kind: str, call_id: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        def match(item: dict[str, Any]) -> bool:
            msg = item.get("msg") or {}
            return (
                item["ev"] == "message" and msg.get("type") == kind and call_id in (None, msg.get("call_id"))
            )

        return self.wait_for(match, timeout)

    def run(self, action: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(action + "\n")
        self.proc.stdin.flush()
        self.wait_for(lambda item: item == {"ev": "ran", "action": action})

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def run_node(tmp_path: Path) -> Iterator[Callable[..., NodeClient]]:
    if shutil.which("node") is None and not Path("/usr/bin/node").exists():
        missing("node is not installed")
    clients: list[NodeClient] = []

    def start(script: str, credential: str, subscriptions: list[str] | None = None) -> NodeClient:
        path = tmp_path / f"example_{len(clients)}.mjs"
        path.write_text(script)
        client = NodeClient(path, credential, subscriptions or [])
        clients.append(client)
        client.wait_for(lambda item: item["ev"] == "ready")
        return client

    yield start
    for client in clients:
        client.close()


def account_key(server: ServerProcess) -> str:
    """The examples hard-code call ids (call_xyz789, call_a, call_b): one account per test."""
    return server.create_key(f"seed_{uuid.uuid4().hex[:10]}")


def browser_token(server: ServerProcess, key: str) -> str:
    response = httpx.post(f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    token: str = response.json()["token"]
    return token


# ---- the examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("credential_kind", ["api_key", "browser_jwt"])
def test_connecting_example_subscribes_and_receives_events(
    server: ServerProcess, run_node: Callable[..., NodeClient], credential_kind: str
) -> None:
    key = account_key(server)
    credential = key if credential_kind == "api_key" else browser_token(server, key)
    node = run_node(build_script(server.port), credential)
    subscribed = node.message("subscribed", "call_xyz789")
    assert subscribed["msg"]["data"]["call_id"] == "call_xyz789"

    batch = [partial("I need"), final("I need to reschedule"), final("Of course", speaker="agent"), ended()]
    assert publish(server, key, "call_xyz789", batch).status_code == 202
    got = [node.message(kind, "call_xyz789")["msg"] for kind in ("transcript.partial", "transcript.final")]
    got.append(node.message("transcript.final", "call_xyz789")["msg"])
    got.append(node.message("call.ended", "call_xyz789")["msg"])
    assert [m["seq"] for m in got] == [1, 2, 3, 4]
    assert [m["data"]["text"] for m in got[:3]] == ["I need", "I need to reschedule", "Of course"]
    # the example's own handler saw them: console.log(msg.type, msg.data)
    node.wait_for(lambda item: item["ev"] == "log" and item["args"][0] == "call.ended")
    logged = [item["args"] for item in node.seen if item["ev"] == "log"]
    assert logged[0][0] == "subscribed"
    assert [args[0] for args in logged[1:]] == [
        "transcript.partial",
        "transcript.final",
        "transcript.final",
        "call.ended",
    ]
    assert logged[2][1]["is_final"] is True
    assert logged[2][1]["speaker"] == "user"
    assert logged[4][1] == {"status": "completed", "duration_ms": 1000}


def test_two_calls_on_one_socket(server: ServerProcess, run_node: Callable[..., NodeClient]) -> None:
    key = account_key(server)
    node = run_node(build_script(server.port), key)
    node.message("subscribed", "call_xyz789")
    node.run("two_calls")
    node.message("subscribed", "call_a")
    node.message("subscribed", "call_b")
    publish(server, key, "call_a", final("for a"))
    publish(server, key, "call_b", final("for b"))
    a = node.message("transcript.final", "call_a")["msg"]
    b = node.message("transcript.final", "call_b")["msg"]
    assert (a["data"]["text"], b["data"]["text"]) == ("for a", "for b")
    assert {item["socket"] for item in node.seen if item["ev"] == "message"} == {0}  # one socket


def test_unsubscribe_stops_one_call_only(server: ServerProcess, run_node: Callable[..., NodeClient]) -> None:
    key = account_key(server)
    node = run_node(build_script(server.port), key)
    node.message("subscribed", "call_xyz789")
    node.run("two_calls")
    node.message("subscribed", "call_a")
    node.message("subscribed", "call_b")
    node.run("unsubscribe")
    assert node.message("unsubscribed", "call_a")["msg"]["data"] == {"call_id": "call_a"}
    publish(server, key, "call_a", final("unheard"))
    publish(server, key, "call_b", final("heard"))
    heard = node.wait_for(lambda item: item["ev"] == "message" and item["msg"].get("seq") is not None)
    assert (heard["msg"]["call_id"], heard["msg"]["data"]["text"]) == ("call_b", "heard")


def test_reconnect_loop_survives_a_server_restart(
    fresh_server: ServerProcess, run_node: Callable[..., NodeClient]
) -> None:
    """Slow-ish: a server restart plus the example's 2 s reconnect delay."""
    fresh_server.start()
    key = fresh_server.create_key("acme")
    live = "call_live_1"
    node = run_node(build_script(fresh_server.port, connecting=False, reconnect=True), key, [live])
    first = node.message("subscribed", live)
    publish(fresh_server, key, live, final("before the restart"))
    before = node.message("transcript.final", live)
    assert (before["socket"], before["msg"]["seq"]) == (first["socket"], 1)

    fresh_server.restart()
    closed = node.wait_for(lambda item: item["ev"] == "close" and item["socket"] == first["socket"])
    assert closed["code"] == 1001  # going away: clients reconnect

    again = node.message("subscribed", live, timeout=20.0)  # reconnected and resubscribed on its own
    assert again["socket"] > first["socket"]
    assert again["msg"]["data"]["seq"] == 1  # the server kept the call across the restart
    publish(fresh_server, key, live, final("after the restart"))
    after = node.message("transcript.final", live)
    assert after["socket"] == again["socket"]
    assert (after["msg"]["seq"], after["msg"]["data"]["text"]) == (2, "after the restart")
