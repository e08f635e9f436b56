"""Live control on a real embedded node (docs/protocol.md, Live control): a supervisor's request
is checked, recorded in the call's history, relayed to the producer socket holding the call, and
answered by exactly one `control.result`: the producer's, the server's timeout, or the call's end.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from callstream import Client, ControlError, Publisher
from callstream.control import ControlRequest
from tests.e2e.test_tail import Tail
from tests.helpers import (
    ServerProcess,
    ended,
    final,
    history,
    no_message,
    open_events,
    publish,
    recv,
    recv_until,
    send,
)

TIMEOUT_S = 1.5  # the server's control timeout here (10 s by default)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CALLSTREAM_CONTROL_TIMEOUT_S": str(TIMEOUT_S)}
    proc = ServerProcess(tmp_path_factory.mktemp("control"), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def key(node: ServerProcess) -> str:
    return node.create_key("ctl")


async def producer(node: ServerProcess, key: str, controls: str | None = "say,instruct,end") -> ClientConnection:
    query = "" if controls is None else f"?controls={controls}"
    return await connect(f"{node.ws_url}/v1/ingest{query}", additional_headers={"Authorization": f"Bearer {key}"})


async def hold(ws: ClientConnection, call_id: str, text: str = "hello") -> None:
    """Publish an event of the call on the producer socket (which then holds the call)."""
    await send(ws, {"call_id": call_id, **final(text), "ref": 1})
    assert (await recv(ws))["type"] == "ack"


@pytest.fixture
async def agent(node: ServerProcess, key: str, call_id: str) -> AsyncIterator[ClientConnection]:
    """A producer socket that declared say, instruct and end, holding the test's call."""
    async with await producer(node, key) as ws:
        await hold(ws, call_id)
        yield ws


@pytest.fixture
async def supervisor(node: ServerProcess, key: str) -> AsyncIterator[ClientConnection]:
    async with await open_events(node, key) as ws:
        yield ws


async def control(ws: ClientConnection, call_id: str, action: str, ref: Any = "r1", **args: Any) -> dict[str, Any]:
    await send(ws, {"type": "control", "call_id": call_id, "action": action, "args": args, "ref": ref})
    return await recv(ws)


async def ask(supervisor: ClientConnection, agent: ClientConnection, call_id: str, action: str, **args: Any) -> str:
    """A request the producer socket received; its request_id."""
    request_id = str((await control(supervisor, call_id, action, **args))["data"]["request_id"])
    assert (await recv(agent))["request_id"] == request_id
    return request_id


def results(node: ServerProcess, key: str, call_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in history(node, key, call_id) if e["type"] == "control.result"]


async def test_a_request_reaches_the_producer_and_its_result_comes_back(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection
) -> None:
    async with await producer(node, key) as agent:
        await hold(agent, call_id)
        await send(supervisor, {"type": "subscribe", "call_id": call_id})
        await recv_until(supervisor, "subscribed")
        await send(supervisor, {"type": "control", "call_id": call_id, "action": "say", "ref": "r1", "args": {"text": "One moment please.", "interrupt": True}})
        seen = await recv_until(supervisor, "control_ack")  # the subscriber sees the request too
        ack = seen.pop()
        assert (ack["ref"], ack["call_id"]) == ("r1", call_id)
        request_id, seq = ack["data"]["request_id"], ack["data"]["seq"]
        relayed = await recv(agent)
        # The request alone: nothing of who asked, nor of their credential.
        assert relayed == {
            "type": "control",
            "call_id": call_id,
            "request_id": request_id,
            "action": "say",
            "args": {"text": "One moment please.", "interrupt": True},
        }
        await send(agent, {"call_id": call_id, "type": "control.result", "data": {"request_id": request_id, "ok": True}, "ref": 2})
        assert (await recv(agent))["type"] == "ack"
        seen += await recv_until(supervisor, "control.result")
    requested = next(m for m in seen if m["type"] == "control.requested")
    assert requested["seq"] == seq
    assert requested["data"]["by"]["key_id"].startswith("key_")
    assert key not in orjson.dumps(seen).decode()
    assert seen[-1]["data"] == {"request_id": request_id, "ok": True}
    types = [(e["type"], e["seq"]) for e in history(node, key, call_id)]
    assert types == [("transcript.final", 1), ("control.requested", 2), ("control.result", 3)]


async def test_every_check_answers_its_code_with_ref_and_call_id_and_records_nothing(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection
) -> None:
    reader = node.create_key("ctl", "subscribe")
    async with await open_events(node, reader) as watcher:
        refused = await control(watcher, call_id, "say", text="hi")
    assert (refused["data"]["code"], refused["ref"], refused["data"]["call_id"]) == ("forbidden", "r1", call_id)

    assert (await control(supervisor, call_id, "say", text="hi"))["data"]["code"] == "call_not_live"
    assert publish(node, key, call_id, final("over REST")).status_code == 202
    assert (await control(supervisor, call_id, "say", text="hi"))["data"]["code"] == "no_producer"
    async with await producer(node, key, "say") as agent:
        await hold(agent, call_id)
        unsupported = await control(supervisor, call_id, "end", ref=7)
        assert (unsupported["data"]["code"], unsupported["ref"]) == ("unsupported_action", 7)
        for args in ({"text": ""}, {"text": "x" * 2001}, {}, {"text": "hi", "volume": 3}, {"text": 5}):
            invalid = await control(supervisor, call_id, "say", **args)
            assert invalid["data"]["code"] == "invalid_message", args
            assert invalid["data"]["call_id"] == call_id
        assert (await control(supervisor, call_id, "dance"))["data"]["code"] == "invalid_message"
        assert await no_message(agent)
    assert publish(node, key, call_id, ended()).status_code == 202
    assert (await control(supervisor, call_id, "say", text="hi"))["data"]["code"] == "call_not_live"
    assert [e["type"] for e in history(node, key, call_id)] == ["transcript.final", "transcript.final", "call.ended"]


async def test_unanswered_requests_time_out_once_and_a_late_result_is_refused(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection, agent: ClientConnection
) -> None:
    request_id = await ask(supervisor, agent, call_id, "instruct", text="Offer the discount.")
    await asyncio.sleep(TIMEOUT_S + 1.0)
    late = {"call_id": call_id, "type": "control.result", "data": {"request_id": request_id, "ok": True}, "ref": 9}
    await send(agent, late)
    refusal = await recv(agent)
    assert (refusal["type"], refusal["ref"], refusal["data"]["code"]) == ("error", 9, "invalid_message")
    assert results(node, key, call_id) == [{"request_id": request_id, "ok": False, "error": "timeout"}]


async def test_a_holder_that_disconnects_mid_request_leaves_one_result_and_no_producer(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection, agent: ClientConnection
) -> None:
    request_id = await ask(supervisor, agent, call_id, "say", text="Are you there?")
    await agent.close()
    gone = await control(supervisor, call_id, "say", text="again", ref="r2")
    assert (gone["data"]["code"], gone["ref"]) == ("no_producer", "r2")
    await asyncio.sleep(TIMEOUT_S + 1.0)
    assert results(node, key, call_id) == [{"request_id": request_id, "ok": False, "error": "timeout"}]
    async with await producer(node, key) as again:  # the call's producer is back once it publishes
        assert (await control(supervisor, call_id, "say", text="hi"))["data"]["code"] == "no_producer"
        await hold(again, call_id)
        assert (await control(supervisor, call_id, "say", text="hi"))["type"] == "control_ack"


async def test_hello_declares_what_the_producer_does(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection
) -> None:
    async with await producer(node, key, controls=None) as agent:
        await send(agent, {"type": "hello", "controls": ["pause", "resume"]})
        await hold(agent, call_id)
        assert (await control(supervisor, call_id, "pause"))["type"] == "control_ack"
        assert (await recv(agent))["action"] == "pause"
        assert (await control(supervisor, call_id, "say", text="hi"))["data"]["code"] == "unsupported_action"
        await send(agent, {"type": "hello", "controls": ["say"]})
        assert (await recv(agent))["data"]["code"] == "invalid_message"  # only as the first message
    async with await producer(node, key, controls=None) as agent:
        await send(agent, {"type": "hello", "controls": ["fly"]})
        assert (await recv(agent))["data"]["code"] == "invalid_message"


async def test_a_call_that_ends_settles_what_waits(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection, agent: ClientConnection
) -> None:
    say = await ask(supervisor, agent, call_id, "say", text="Bye now")
    end = await ask(supervisor, agent, call_id, "end", reason="done")
    await send(agent, {"call_id": call_id, **ended(), "ref": 3})  # ends it without answering
    assert (await recv(agent))["type"] == "ack"
    events = history(node, key, call_id)
    assert [e["type"] for e in events][-3:] == ["control.result", "control.result", "call.ended"]
    assert sorted((r["request_id"], r["ok"]) for r in results(node, key, call_id)) == sorted([(say, False), (end, True)])
    await asyncio.sleep(TIMEOUT_S + 0.5)
    assert len(results(node, key, call_id)) == 2  # no timeout after the end


async def test_control_messages_are_limited_per_connection(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection
) -> None:
    for i in range(12):
        await send(supervisor, {"type": "control", "call_id": call_id, "action": "pause", "ref": i})
    codes = [(await recv(supervisor))["data"]["code"] for _ in range(12)]
    assert codes[:10] == ["call_not_live"] * 10
    assert codes[10:] == ["rate_limited"] * 2
    async with await open_events(node, key) as other:  # another connection has its own budget
        assert (await control(other, call_id, "pause"))["data"]["code"] == "call_not_live"


async def test_publisher_runs_handlers_and_publishes_their_outcome(
    node: ServerProcess, key: str, call_id: str, supervisor: ClientConnection
) -> None:
    said: list[str] = []

    async def say(request: ControlRequest) -> None:
        said.append(request.args["text"])

    async def end(request: ControlRequest) -> None:
        raise RuntimeError("the line is busy")

    async with Publisher(node.url, key, controls={"say": say, "end": end, "pause": None}) as pub:
        await pub.publish(call_id, "agent.state", {"state": "listening"})
        ok = (await control(supervisor, call_id, "say", text="Hold on"))["data"]["request_id"]
        failed = (await control(supervisor, call_id, "end"))["data"]["request_id"]
        waiting = (await control(supervisor, call_id, "pause"))["data"]["request_id"]
        request = await asyncio.wait_for(anext(aiter(pub.control_requests())), 5)
        assert (request.request_id, request.action, request.call_id) == (waiting, "pause", call_id)
        assert await pub.control_result(request, ok=True)
        assert not await pub.control_result(request, ok=True)  # one result per request
        for _ in range(50):
            if len(results(node, key, call_id)) == 3:
                break
            await asyncio.sleep(0.1)
    assert said == ["Hold on"]
    by_id = {r["request_id"]: r for r in results(node, key, call_id)}
    assert by_id == {
        ok: {"request_id": ok, "ok": True},
        failed: {"request_id": failed, "ok": False, "error": "the line is busy"},
        waiting: {"request_id": waiting, "ok": True},
    }


async def test_rest_answers_202_and_the_codes_as_statuses(node: ServerProcess, key: str, call_id: str) -> None:
    reader = node.create_key("ctl", "subscribe")
    url = f"{node.url}/v1/calls/{call_id}/control"

    def post(credential: str, body: Any) -> httpx.Response:
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {credential}"}, timeout=10)

    assert post(reader, {"action": "pause"}).status_code == 403
    refused = post(key, {"action": "pause"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "call_not_live")
    async with await producer(node, key, "pause,say") as agent:
        await hold(agent, call_id)
        assert post(key, {"action": "end"}).json()["error"]["code"] == "unsupported_action"
        invalid = post(key, {"action": "say", "args": {"text": ""}})
        assert (invalid.status_code, invalid.json()["error"]["code"]) == (422, "invalid_message")
        assert post(key, {"nope": 1}).status_code == 422
        extra = post(key, {"action": "pause", "args": {}, "bogus": 1})
        assert (extra.status_code, extra.json()["error"]["code"]) == (422, "invalid_message")
        assert "bogus" in extra.json()["error"]["message"]
        accepted = post(key, {"action": "pause"})
        assert accepted.status_code == 202
        assert (await recv(agent))["request_id"] == accepted.json()["request_id"]
    requested = [e for e in history(node, key, call_id) if e["type"] == "control.requested"]
    assert [(e["seq"], e["data"]["request_id"]) for e in requested] == [(accepted.json()["seq"], accepted.json()["request_id"])]


async def test_a_browser_token_carries_control_only_from_a_key_that_has_it(
    node: ServerProcess, key: str, call_id: str
) -> None:
    def mint(credential: str, scope: list[str]) -> httpx.Response:
        return httpx.post(f"{node.url}/v1/tokens", json={"scope": scope}, headers={"Authorization": f"Bearer {credential}"})

    reader = node.create_key("ctl", "subscribe")
    assert mint(reader, ["subscribe", "control"]).status_code == 403
    assert mint(key, ["publish"]).status_code == 422
    plain, controlling = mint(key, ["subscribe"]).json()["token"], mint(key, ["subscribe", "control"]).json()["token"]
    async with await open_events(node, plain) as ws:
        assert (await control(ws, call_id, "pause"))["data"]["code"] == "forbidden"
    async with await open_events(node, controlling) as ws:
        assert (await control(ws, call_id, "pause"))["data"]["code"] == "call_not_live"


def test_the_openapi_page_shows_the_control_route_with_examples(node: ServerProcess) -> None:
    spec = httpx.get(f"{node.url}/openapi.json").json()
    route = spec["paths"]["/v1/calls/{call_id}/control"]["post"]
    examples = route["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {"say", "instruct", "pause", "resume", "transfer", "end"}
    assert "202" in route["responses"]



# ---- clients: Client.control, `callstream control`, `tail`, `login --control` -----------------------


@pytest.fixture
async def saying_agent(node: ServerProcess, key: str, call_id: str) -> AsyncIterator[list[str]]:
    """A Publisher holding the test's call that says what it is asked to (and refuses to end)."""
    said: list[str] = []

    async def say(request: ControlRequest) -> None:
        said.append(request.args["text"])

    async def end(request: ControlRequest) -> None:
        raise RuntimeError("not while the caller is speaking")

    async with Publisher(node.url, key, controls={"say": say, "end": end}) as pub:
        await pub.publish(call_id, "agent.state", {"state": "listening"})
        yield said


async def test_client_control_returns_the_ack_with_the_result(
    node: ServerProcess, key: str, call_id: str, saying_agent: list[str]
) -> None:
    async with Client(node.url, key) as client:
        outcome = await client.control(call_id, "say", text="Over REST", result_timeout=10)
        assert (outcome.ok, outcome.error, outcome.request_id.startswith("ctl_")) == (True, None, True)
        await client.subscribe(call_id)  # now the result comes on the socket
        failed = await client.control(call_id, "end", result_timeout=10)
        assert (failed.ok, failed.error, failed.seq > outcome.seq) == (False, "not while the caller is speaking", True)
        with pytest.raises(ControlError) as refused:
            await client.control(call_id, "pause")
        assert refused.value.code == "unsupported_action"
        with pytest.raises(ControlError) as invalid:
            await client.control(call_id, "say", text="")
        assert invalid.value.code == "invalid_message"
    assert saying_agent == ["Over REST"]


def control_cli(node: ServerProcess, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return node.cli("control", *args, "--key", key, "--url", node.url, check=False)


async def test_the_control_command_acts_and_says_how_it_went(
    node: ServerProcess, key: str, call_id: str, saying_agent: list[str]
) -> None:
    done = await asyncio.to_thread(control_cli, node, key, call_id, "say", "From the terminal", "--interrupt", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["ok"] is True
    failed = await asyncio.to_thread(control_cli, node, key, call_id, "end", "--reason", "done")
    assert failed.returncode == 1
    assert "end: failed: not while the caller is speaking" in failed.stdout
    for args, code in ((("transfer", "+14155550100"), "unsupported_action"), (("say", ""), "invalid_message")):
        refused = await asyncio.to_thread(control_cli, node, key, call_id, *args)
        assert (refused.returncode, code in refused.stderr) == (1, True), refused.stderr
    assert saying_agent == ["From the terminal"]


async def test_tail_shows_who_asked_what_and_how_it_went(
    node: ServerProcess, key: str, call_id: str, saying_agent: list[str]
) -> None:
    created = node.cli("keys", "create", "--account", "ctl", "--name", "Dana", "--json", *node.database_args())
    dana = orjson.loads(created.stdout)["key"]
    async with Client(node.url, dana) as client:
        await client.control(call_id, "say", text="I can help with that", result_timeout=10)
    tail = Tail(node, key, call_id)
    try:
        lines = [tail.next(10) or "" for _ in range(2)]
    finally:
        tail.close()
    assert f"{call_id}   ⚑ supervisor (Dana) say: “I can help with that”" in lines[0]
    assert f"{call_id}     ↳ done" in lines[1]


async def test_a_control_login_makes_a_session_that_may_control(node: ServerProcess, call_id: str) -> None:
    def session(*flags: str) -> str:
        link = node.cli("login", "--account", "ctl", "--url", node.url, *flags, *node.database_args()).stdout
        code = link.strip().rsplit("login=", 1)[1]
        return str(httpx.post(f"{node.url}/v1/login", json={"code": code}).json()["token"])

    watching, controlling = session(), session("--control")
    refreshed = httpx.post(f"{node.url}/v1/login/refresh", headers={"Authorization": f"Bearer {controlling}"})
    for token, code in ((watching, "forbidden"), (controlling, "call_not_live"), (refreshed.json()["token"], "call_not_live")):
        async with await open_events(node, token) as ws:
            assert (await control(ws, call_id, "pause"))["data"]["code"] == code


# ---- who asked: a session's own name (JWT `name`, `login --name`) -----------------------------


def mint(node: ServerProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{node.url}/v1/tokens", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


async def asked_by(node: ServerProcess, credential: str, call_id: str) -> dict[str, Any]:
    """`by` of a request made with `credential`, as a subscriber sees it live and on replay (the
    same event), once its producer answered it."""
    async with await open_events(node, credential) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id})
        await recv_until(ws, "subscribed")
        await send(ws, {"type": "control", "call_id": call_id, "action": "say", "args": {"text": "Hi"}, "ref": 1})
        seen = await recv_until(ws, "control.result")  # the producer has acted on it by then
        live = next(m for m in seen if m["type"] == "control.requested")
    async with await open_events(node, credential) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": live["seq"] - 1})
        replayed = (await recv_until(ws, "control.requested"))[-1]
    assert replayed == live
    by: dict[str, Any] = live["data"]["by"]
    return by


async def test_a_token_with_a_name_asks_under_that_name_live_and_on_replay(
    node: ServerProcess, call_id: str, saying_agent: list[str]
) -> None:
    created = node.cli("keys", "create", "--account", "ctl", "--name", "backend", "--json", *node.database_args())
    key_id, backend = orjson.loads(created.stdout)["id"], orjson.loads(created.stdout)["key"]
    named = mint(node, backend, scope=["subscribe", "control"], name="Dana Ortiz (supervisor) ✓")
    assert named.status_code == 200, named.text
    assert await asked_by(node, named.json()["token"], call_id) == {"key_id": key_id, "name": "Dana Ortiz (supervisor) ✓"}
    unnamed = mint(node, backend, scope=["subscribe", "control"]).json()["token"]
    assert await asked_by(node, unnamed, call_id) == {"key_id": key_id, "name": "backend"}  # the key's
    minted = await asyncio.to_thread(node.cli, "token", "--key", backend, "--url", node.url, "--control", "--name", "Sam")
    assert (await asked_by(node, minted.stdout.strip(), call_id))["name"] == "Sam"
    assert saying_agent == ["Hi", "Hi", "Hi"]  # the producer got the requests, never who asked


async def test_a_login_link_with_a_name_makes_sessions_of_that_name(
    node: ServerProcess, call_id: str, saying_agent: list[str]
) -> None:
    link = node.cli("login", "--account", "ctl", "--control", "--name", "Dana", "--url", node.url, *node.database_args())
    code = link.stdout.strip().rsplit("login=", 1)[1]
    forged = code.rsplit(".", 1)[0] + ".TWFsbG9yeQ"  # another name ("Mallory") in the same code
    assert httpx.post(f"{node.url}/v1/login", json={"code": forged}).status_code == 401
    token = httpx.post(f"{node.url}/v1/login", json={"code": code}).json()["token"]
    assert (await asked_by(node, token, call_id))["name"] == "Dana"
    refreshed = httpx.post(f"{node.url}/v1/login/refresh", headers={"Authorization": f"Bearer {token}"}).json()["token"]
    assert (await asked_by(node, refreshed, call_id))["name"] == "Dana"  # a refresh keeps the name


@pytest.mark.parametrize("name", ["", "x" * 65, "Dana\nOrtiz", "tab\there", "   ", 5, ["Dana"]])
def test_a_session_name_that_is_not_1_to_64_printable_characters_is_refused(
    node: ServerProcess, key: str, name: Any
) -> None:
    refused = mint(node, key, name=name)
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_request")
    assert "name" in refused.json()["error"]["message"]
    if isinstance(name, str):
        login = node.cli("login", "--account", "ctl", "--name", name, *node.database_args(), check=False)
        assert (login.returncode, "--name: a session name must" in login.stderr) == (2, True), login.stderr
        token = node.cli("token", "--key", key, "--url", node.url, "--name", name, check=False)
        assert (token.returncode, "a session name must" in token.stderr) == (1, True), token.stderr
