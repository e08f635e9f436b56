"""docs/protocol.md, Command line: the `callstream` command, run as a user runs it (subprocesses)."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import (
    ServerProcess,
    ended,
    final,
    free_port,
    open_events,
    partial,
    publish,
    recv,
    recv_until,
    send,
)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # COLUMNS: rich wraps long messages at the terminal width; make the width generous for matching.
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "callstream", *args],
        capture_output=True,
        text=True,
        check=False,
        env=full_env,
        timeout=timeout,
    )


def flat(text: str) -> str:
    return " ".join(text.split())


# ---- keys -----------------------------------------------------------------------------------------


def test_keys_create_json_list_and_revoke(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = cli("keys", "create", "--account", "acme", "--scope", "subscribe", "--json", *data)
    assert created.returncode == 0, created.stderr
    key = orjson.loads(created.stdout)
    assert set(key) == {"key", "id", "account"}
    assert key["account"] == "acme"
    assert key["id"].startswith("key_")
    assert key["key"]
    assert key["key"] != key["id"]

    default = orjson.loads(cli("keys", "create", "--account", "globex", "--json", *data).stdout)

    listed = cli("keys", "list", "--json", *data)
    assert listed.returncode == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {key["id"], default["id"]}
    assert by_id[key["id"]]["account"] == "acme"
    assert by_id[key["id"]]["scopes"] == ["subscribe"]
    assert by_id[default["id"]]["scopes"] == ["admin", "control", "listen", "publish", "subscribe"]  # all of them by default
    assert by_id[key["id"]]["revoked_at"] is None
    assert key["key"] not in listed.stdout  # secrets are shown once
    assert default["key"] not in listed.stdout

    only_acme = orjson.loads(cli("keys", "list", "--account", "acme", "--json", *data).stdout)
    assert [r["id"] for r in only_acme] == [key["id"]]

    revoked = cli("keys", "revoke", key["id"], *data)
    assert revoked.returncode == 0, revoked.stderr
    assert key["id"] in revoked.stdout
    rows = {r["id"]: r for r in orjson.loads(cli("keys", "list", "--json", *data).stdout)}
    assert isinstance(rows[key["id"]]["revoked_at"], int)
    assert rows[default["id"]]["revoked_at"] is None

    again = cli("keys", "revoke", key["id"], *data)
    assert again.returncode == 1
    assert key["id"] in flat(again.stderr)


def test_keys_revoke_unknown_id_exits_1_with_a_message(tmp_path: Path) -> None:
    result = cli("keys", "revoke", "key_doesnotexist", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "key_doesnotexist" in flat(result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("scope", ["bogus", "publish,root", "", ","])
def test_keys_create_bad_scope_exits_2_and_creates_nothing(tmp_path: Path, scope: str) -> None:
    data = ["--data-dir", str(tmp_path)]
    result = cli("keys", "create", "--account", "acme", "--scope", scope, "--json", *data)
    assert result.returncode == 2
    message = flat(result.stderr)
    assert "--scope" in message
    for scope_name in ("publish", "subscribe", "control", "admin"):
        assert scope_name in message
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert orjson.loads(cli("keys", "list", "--json", *data).stdout) == []


def test_keys_create_bad_account_exits_2(tmp_path: Path) -> None:
    result = cli("keys", "create", "--account", "no spaces please", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--account" in flat(result.stderr)
    assert orjson.loads(cli("keys", "list", "--json", "--data-dir", str(tmp_path)).stdout) == []


def test_keys_create_takes_data_dir_from_the_environment(tmp_path: Path) -> None:
    env = {"CALLSTREAM_DATA_DIR": str(tmp_path)}
    key = orjson.loads(cli("keys", "create", "--account", "acme", "--json", env=env).stdout)
    listed = orjson.loads(cli("keys", "list", "--json", "--data-dir", str(tmp_path)).stdout)
    assert [r["id"] for r in listed] == [key["id"]]


# ---- serve: configuration errors --------------------------------------------------------------


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("args", "env", "flag", "variable"),
    [
        ([], {"CALLSTREAM_PORT": "notaport"}, "--port", "CALLSTREAM_PORT"),
        (["--port", "99999"], {}, "--port", "CALLSTREAM_PORT"),
        (["--port", "{port}"], {"CALLSTREAM_BROKER": "ftp://x"}, "--broker", "CALLSTREAM_BROKER"),
        (["--port", "{port}", "--broker", "http://nope"], {}, "--broker", "CALLSTREAM_BROKER"),
        (["--port", "{port}"], {"CALLSTREAM_DATABASE": "mysql://x"}, "--database", "CALLSTREAM_DATABASE"),
        (["--port", "{port}", "--log-level", "loud"], {}, "--log-level", "CALLSTREAM_LOG_LEVEL"),
        (["--port", "{port}"], {"CALLSTREAM_LISTEN_BACKLOG": "0"}, None, "CALLSTREAM_LISTEN_BACKLOG"),
    ],
)
def test_serve_with_invalid_config_exits_naming_option_and_variable(
    tmp_path: Path, args: list[str], env: dict[str, str], flag: str | None, variable: str
) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    argv = [a.replace("{port}", str(port)) for a in args]
    result = cli("serve", "--data-dir", str(data_dir), *argv, env=env)
    assert result.returncode != 0
    message = flat(result.stderr + result.stdout)
    assert variable in message, message
    if flag is not None:
        assert flag in message, message
    else:  # an option `serve` takes from the environment only: no flag to name
        assert f"--{variable.removeprefix('CALLSTREAM_').lower().replace('_', '-')}" not in message, message
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
    assert not data_dir.exists()  # nothing was started or created
    assert port_is_closed(port)


@pytest.mark.parametrize(
    "shown",
    ["(env CALLSTREAM_HOST; 127.0.0.1)", "(env CALLSTREAM_LATENCY_WARN_MS; 1500)", "(env CALLSTREAM_SENTIMENT)"],
)
def test_serve_help_names_the_variable_and_default_of_each_setting(shown: str) -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert shown in flat(result.stdout), result.stdout


@pytest.mark.parametrize("group", [[], ["calls"], ["keys"], ["webhooks"]], ids=["callstream", "calls", "keys", "webhooks"])
def test_each_command_is_summed_up_in_one_line_of_its_groups_help(group: list[str]) -> None:
    """A wide terminal shows each command's summary on its own row: a summary that goes on to a
    second line was cut mid-sentence (rich keeps the docstring's own line breaks there)."""
    result = cli(*group, "--help")
    assert result.returncode == 0, result.stderr
    panel = result.stdout.split("Commands")[1].splitlines()[1:]
    rows = [line.strip("│ ") for line in panel if line.startswith("│")]
    assert rows
    continued = [row for row in rows if not re.match(r"[a-z-]+ {2,}\S", row)]
    assert not continued, result.stdout


# ---- token ----------------------------------------------------------------------------------------


async def test_token_command_prints_a_jwt_that_works_on_events(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    result = await asyncio.to_thread(cli, "token", "--key", api_key, "--url", server.url, "--calls", call_id)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2
    assert token.startswith("eyJ")
    assert api_key not in result.stdout
    async with await open_events(server, token) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id})
        assert (await recv(ws))["type"] == "subscribed"
        publish(server, api_key, call_id, final("via token"))
        message = await recv(ws)
        assert (message["call_id"], message["data"]["text"]) == (call_id, "via token")
        await send(ws, {"type": "subscribe", "call_id": "some_other_call"})
        error = await recv(ws)
        assert (error["type"], error["data"]["code"]) == ("error", "forbidden")


def test_token_command_with_a_bad_key_exits_1(server: ServerProcess) -> None:
    result = cli("token", "--key", "cs_wrong", "--url", server.url)
    assert result.returncode == 1
    assert "401" in flat(result.stderr)
    assert result.stdout == ""


# ---- tail -----------------------------------------------------------------------------------------


class LineReader:
    """Reads a subprocess's stdout lines on a thread so the test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        self.thread = threading.Thread(target=lambda: [self.lines.put(ln) for ln in stdout], daemon=True)
        self.thread.start()

    def next(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None


def test_tail_json_prints_ndjson_of_what_was_published(
    server: ServerProcess, api_key: str, call_id: str
) -> None:
    warm = call_id + "_warm"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callstream",
            "tail",
            "--json",
            "--url",
            server.url,
            "--key",
            api_key,
            call_id,
            warm,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reader = LineReader(proc)
        # tail prints events only; publish to a warm-up call until it shows that it is subscribed
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "tail never printed anything"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            publish(server, api_key, warm, final("warm-up"))
            line = reader.next(0.3)
            if line is not None:
                break
        batch = [
            partial("hel"),
            final("hello there"),
            {"type": "agent.state", "data": {"state": "thinking"}},
            {"type": "function.call", "data": {"name": "lookup", "args": {"id": 7}}},
            ended("completed", 2500),
        ]
        assert publish(server, api_key, call_id, batch).json()["seq"] == [1, 2, 3, 4, 5]
        printed: list[dict[str, Any]] = []
        while len(printed) < len(batch):
            line = reader.next(5)
            assert line is not None, f"tail printed only {printed}"
            message = orjson.loads(line)  # every line is one JSON object
            if message["call_id"] == call_id:
                printed.append(message)
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert [(m["type"], m["seq"]) for m in printed] == [(e["type"], i) for i, e in enumerate(batch, 1)]
    for message, event in zip(printed, batch, strict=True):
        assert isinstance(message["ts"], int)
        for field, value in event["data"].items():
            assert message["data"][field] == value


def test_tail_without_calls_or_all_is_a_usage_error(server: ServerProcess, api_key: str) -> None:
    result = cli("tail", "--url", server.url, "--key", api_key)
    assert result.returncode == 2
    assert "--all" in flat(result.stderr)


# ---- serve: shutdown and logs -------------------------------------------------------------------


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await recv(ws, timeout=10)


async def test_sigterm_closes_event_sockets_with_1001(fresh_server: ServerProcess, call_id: str) -> None:
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    async with await open_events(fresh_server, key) as first, await open_events(fresh_server, key) as second:
        for ws in (first, second):
            await send(ws, {"type": "subscribe", "call_id": call_id})
            await recv_until(ws, "subscribed")
        stopping = asyncio.create_task(asyncio.to_thread(fresh_server.stop))
        for ws in (first, second):
            with pytest.raises(ConnectionClosed):
                await read_until_closed(ws)
            assert ws.close_code == 1001
        # uvicorn re-raises the SIGTERM it handled once shutdown is done: -15 is a graceful exit
        assert await stopping in (0, -15)
    assert port_is_closed(fresh_server.port)
    assert "Application shutdown complete" in fresh_server.log()


async def test_sigterm_closes_ingest_sockets_with_1001(fresh_server: ServerProcess, call_id: str) -> None:
    await asyncio.to_thread(fresh_server.start)
    key = await asyncio.to_thread(fresh_server.create_key, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(f"{fresh_server.ws_url}/v1/ingest", additional_headers=headers) as ws:
        await ws.send(orjson.dumps({"call_id": call_id, **final("x"), "ref": 1}).decode())
        assert orjson.loads(await ws.recv())["type"] == "ack"
        stopping = asyncio.create_task(asyncio.to_thread(fresh_server.stop))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1001
        await stopping


async def test_access_logs_never_contain_a_credential(server: ServerProcess, call_id: str) -> None:
    secret = server.create_key(f"logs_{call_id}")
    wrong = "cs_WRONG_" + call_id
    async with await open_events(server, secret) as ws:  # ?token=<the API key>
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"
    with pytest.raises(InvalidStatus):
        await open_events(server, wrong)
    response = await asyncio.to_thread(httpx.get, f"{server.url}/v1/calls?token={secret}&limit=1")
    assert response.status_code == 200  # the query credential works for REST too, and is logged
    publish(server, secret, call_id, final("x"))
    await asyncio.sleep(0.3)  # let the server flush its log lines
    log = server.log_path.read_text(errors="replace")
    assert secret not in log
    assert wrong not in log
    assert re.search(r"/v1/events\?token=\[redacted\]", log), log[-2000:]
    assert re.search(r"/v1/calls\?token=\[redacted\]", log), log[-2000:]


def test_serve_prints_a_one_time_dashboard_link_for_its_only_account(fresh_server: ServerProcess) -> None:
    """As Jupyter does: the operator opens the printed link; the browser never sees an API key."""
    fresh_server.create_key("solo")
    fresh_server.start()
    deadline = time.monotonic() + 10
    while "?login=" not in fresh_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(x for x in fresh_server.log().splitlines() if "?login=" in x)
    assert "dashboard for solo" in line
    code = line.split("?login=")[1].split()[0]
    first = httpx.post(f"{fresh_server.url}/v1/login", json={"code": code}, timeout=10)
    assert first.status_code == 200
    assert first.json()["token"].startswith("eyJ")
    again = httpx.post(f"{fresh_server.url}/v1/login", json={"code": code}, timeout=10)
    assert again.status_code == 401  # one time only


def test_serve_with_several_accounts_says_how_to_get_a_link(fresh_server: ServerProcess) -> None:
    fresh_server.create_key("one")
    fresh_server.create_key("two")
    fresh_server.start()
    deadline = time.monotonic() + 10
    while "dashboard:" not in fresh_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "callstream login --account" in fresh_server.log()
    assert "?login=" not in fresh_server.log()


UNREACHABLE = ["--database", "postgresql://user:hunter2@127.0.0.1:1/nothing"]


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--port", "0", *UNREACHABLE],
        ["keys", "list", *UNREACHABLE],
        ["migrate", *UNREACHABLE],
        ["keys", "list", "--data-dir", "/proc/no-such-dir"],
    ],
)
def test_an_unreachable_database_ends_the_command_in_one_line(command: list[str]) -> None:
    result = cli(*command)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "cannot open the database" in flat(result.stderr)
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:hunter2@127.0.0.1:no-port/nothing",  # not a port
        "postgresql://user:hunter2@127.0.0.1:5432/nothing?sslmode=require",  # libpq's option, not asyncpg's
        "postgresql+psycopg2://user:hunter2@127.0.0.1:1/nothing",  # a driver callstream does not use
    ],
)
def test_a_database_url_that_cannot_be_used_ends_the_command_in_one_line(url: str) -> None:
    result = cli("migrate", "--database", url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "cannot open the database" in flat(result.stderr)
    assert "hunter2" not in result.stderr + result.stdout


# ---- serve: a failed start is one line, never a traceback; the start prints callstream's lines


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    printed = result.stdout + result.stderr
    assert result.returncode == code, printed
    assert "Traceback" not in printed, printed
    assert "never retrieved" not in printed, printed
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert says in errors[0], result.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port), "--data-dir", str(tmp_path), timeout=60)
    assert_one_line_error(result, 1, f"cannot listen on 127.0.0.1:{port}: address already in use")


def test_serve_on_a_host_that_is_not_one_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = cli("serve", "--host", "999.1.1.1", "--port", str(port), "--data-dir", str(tmp_path), timeout=60)
    assert_one_line_error(result, 1, f"cannot listen on 999.1.1.1:{port}:")


def test_serve_with_a_broker_that_does_not_answer_says_so_in_one_line(tmp_path: Path) -> None:
    args = ["--port", str(free_port()), "--data-dir", str(tmp_path), "--broker", "redis://127.0.0.1:1"]
    result = cli("serve", *args, timeout=60)
    assert_one_line_error(result, 1, "cannot reach the broker")
    assert "127.0.0.1:1" in result.stderr


def test_serve_prints_only_its_own_lines_as_it_starts(fresh_server: ServerProcess) -> None:
    """What the docs show `serve` printing (getting-started/run.md): no line per alembic plugin or
    migration context, no uvicorn start-up lines repeating where it listens."""
    fresh_server.start()
    deadline = time.monotonic() + 10
    while "dashboard:" not in fresh_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in fresh_server.log().splitlines() if "uvicorn.access" not in line]
    assert lines == [
        f"callstream listening on {fresh_server.url}  (docs: {fresh_server.url}/docs)",
        f"dashboard: {fresh_server.url}/ (a login link: callstream login --account A)",
    ]


# ---- tail and simulate: a bad argument is a usage error; a tail says why it waits, ends when refused


@pytest.mark.parametrize("command", [["tail", "--all"], ["simulate", "--calls", "1", "--quiet"]])
def test_a_url_that_is_not_one_is_a_usage_error(command: list[str]) -> None:
    result = cli(*command, "--key", "cs_whatever", "--url", "notaurl")
    assert_one_line_error(result, 2, "expected an http(s):// or ws(s):// URL, got 'notaurl'")


@pytest.mark.parametrize("command", [["tail", "--all"], ["simulate", "--calls", "1", "--quiet"]])
def test_a_url_with_a_port_out_of_range_is_a_usage_error(command: list[str]) -> None:
    result = cli(*command, "--key", "cs_whatever", "--url", "http://127.0.0.1:99999")
    assert_one_line_error(result, 2, "invalid port in 'http://127.0.0.1:99999' (expected 1-65535)")


def test_tail_of_an_invalid_call_id_is_a_usage_error(server: ServerProcess, api_key: str) -> None:
    result = cli("tail", "--url", server.url, "--key", api_key, "bad id!")
    assert_one_line_error(result, 2, "invalid call id 'bad id!'")


@pytest.mark.parametrize("output", [[], ["--json"]])
def test_tail_of_calls_the_credential_may_not_see_ends_with_the_refusal(
    server: ServerProcess, api_key: str, call_id: str, output: list[str]
) -> None:
    token = cli("token", "--key", api_key, "--url", server.url, "--calls", call_id).stdout.strip()
    result = cli("tail", *output, "--url", server.url, "--key", token, call_id + "_other")
    assert_one_line_error(result, 1, "forbidden")


def test_tail_that_cannot_reach_the_server_says_why_on_stderr() -> None:
    """Piped (not a terminal), a tail has no header to show its state: stderr says why it waits."""
    port = free_port()  # nothing listens there
    command = [sys.executable, "-m", "callstream", "tail", "--key", "cs_x", "--url", f"http://127.0.0.1:{port}", "--all"]
    tail = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(tail.stderr.readline() if tail.stderr else ""), daemon=True).start()
        first = lines.get(timeout=60)  # its start: seconds on a loaded CI (4 workers on 2 cores)
        assert tail.poll() is None  # it keeps trying
    finally:
        tail.kill()
        tail.communicate()  # reaps it and closes its stderr
    assert first == f"reconnecting… (cannot reach 127.0.0.1:{port}: connection refused)\n"
