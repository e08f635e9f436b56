"""docs/protocol.md, REST "Bodies" against a real server: every REST body is capped at 1 MiB, whether it is
sent with Content-Length or chunked; past the cap the answer is 413 at once, nothing is applied,
the connection is closed rather than read to its end, and the node's memory does not grow."""

from __future__ import annotations

import http.client
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.test_rest import assert_error
from tests.helpers import ServerProcess, final

CAP = 1024 * 1024  # the default CALLSTREAM_MAX_BODY_BYTES
MiB = 1024 * 1024


@dataclass
class Route:
    """One route that takes a body: a valid request for it, and how to see whether it took effect."""

    path: str
    credential: str | None
    document: object
    ok_status: int
    applied: Callable[[], bool] | None = None  # None: the answer itself is the only effect

    def body(self, size: int) -> bytes:
        """The valid document, padded with JSON whitespace to exactly `size` bytes."""
        raw = orjson.dumps(self.document)
        return raw + b" " * (size - len(raw))

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.credential:
            headers["Authorization"] = f"Bearer {self.credential}"
        return headers


def _login_code(server: ServerProcess, account: str) -> str:
    return server.login_url(account).split("?login=")[1].strip()


def _new_route(server: ServerProcess, name: str) -> Route:
    """A fresh account and a fresh target per use, so 'nothing applied' is about this request alone."""
    account = f"acct_{uuid.uuid4().hex[:10]}"
    key = server.create_key(account)
    auth = {"Authorization": f"Bearer {key}"}
    if name == "publish":
        call_id = f"call_{uuid.uuid4().hex[:12]}"

        def call_exists() -> bool:
            return httpx.get(f"{server.url}/v1/calls/{call_id}", headers=auth, timeout=10).status_code == 200

        return Route(f"/v1/calls/{call_id}/events", key, final("hello"), 202, call_exists)
    if name == "tokens":
        return Route("/v1/tokens", key, {"ttl_s": 60}, 200)
    if name == "webhooks":

        def webhook_exists() -> bool:
            listed = httpx.get(f"{server.url}/v1/webhooks", headers=auth, timeout=10).json()
            return bool(listed["webhooks"])

        return Route("/v1/webhooks", key, {"url": "http://127.0.0.1:9/hook"}, 201, webhook_exists)
    if name == "login":
        code = _login_code(server, account)

        def code_used() -> bool:
            again = httpx.post(f"{server.url}/v1/login", json={"code": code}, timeout=10)
            return again.status_code == 401  # one time only: a 200 here means it was still unused

        return Route("/v1/login", None, {"code": code}, 200, code_used)
    assert name == "refresh"
    login = httpx.post(f"{server.url}/v1/login", json={"code": _login_code(server, account)}, timeout=10)
    return Route("/v1/login/refresh", login.json()["token"], {}, 200)


ROUTES = ["publish", "tokens", "webhooks", "login", "refresh"]


def _post_chunked_raw(
    server: ServerProcess, route: Route, total: int, *, finish: bool, piece: int = 64 * 1024
) -> tuple[socket.socket, int]:
    """POST `total` bytes of body chunked over a raw socket; the closing chunk only if `finish`.

    Returns the socket (its answer not yet read) and how many body bytes went out before the
    server closed the connection (sending stops there, as a client's would).
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = [f"POST {route.path} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked"]
    head += [f"{name}: {value}" for name, value in route.headers().items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0
    first = orjson.dumps(route.document)
    try:
        while sent < total:
            data = first if sent == 0 else b" " * min(piece, total - sent)
            sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))
            sent += len(data)
        if finish:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed the connection
    return sock, sent


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """The status, headers and body of the answer, and whether the server then closed the connection."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    sock.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body, closed


def _as_response(status: int, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.Response(status, headers=headers, content=body)


# ---- Content-Length ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROUTES)
def test_declared_length_over_the_cap_is_413_and_applies_nothing(server: ServerProcess, name: str) -> None:
    route = _new_route(server, name)
    response = httpx.post(server.url + route.path, content=route.body(CAP + 1), headers=route.headers(), timeout=10)
    error = assert_error(response, 413, "message_too_large")
    assert str(CAP) in error["message"]
    assert response.headers["connection"] == "close"
    if route.applied is not None:
        assert not route.applied()


@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("mode", ["content-length", "chunked"])
def test_a_body_of_exactly_the_cap_is_accepted(server: ServerProcess, name: str, mode: str) -> None:
    route = _new_route(server, name)
    body = route.body(CAP)
    content: bytes | Iterator[bytes] = body if mode == "content-length" else iter([body[:1000], body[1000:]])
    response = httpx.post(server.url + route.path, content=content, headers=route.headers(), timeout=10)
    assert response.status_code == route.ok_status, response.text
    if route.applied is not None:
        assert route.applied()


# ---- chunked ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROUTES)
def test_chunked_body_past_the_cap_is_refused_while_the_client_is_still_sending(
    server: ServerProcess, name: str
) -> None:
    """The client sends 2 MiB and never ends its body: the 413 must come without the end."""
    route = _new_route(server, name)
    sock, _ = _post_chunked_raw(server, route, 2 * MiB, finish=False)
    status, headers, body, closed = _read_answer(sock)
    assert_error(_as_response(status, headers, body), 413, "message_too_large")
    assert closed, "the server kept the connection open (reading the rest of the body)"
    if route.applied is not None:
        assert not route.applied()


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def test_a_150_mib_chunked_publish_does_not_grow_the_node(fresh_server: ServerProcess) -> None:
    key = fresh_server.create_key("acme")
    fresh_server.start()
    assert fresh_server.proc is not None
    pid = fresh_server.proc.pid
    route = Route(f"/v1/calls/call_{uuid.uuid4().hex[:12]}/events", key, final("hello"), 202)
    httpx.post(fresh_server.url + route.path, content=route.body(1000), headers=route.headers(), timeout=10)
    time.sleep(0.5)  # let start-up and the first request settle
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) restarts from now
    before = _memory_kib(pid)["VmRSS"]

    sock, sent = _post_chunked_raw(fresh_server, route, 150 * MiB, finish=True, piece=MiB)
    status, headers, body, closed = _read_answer(sock)
    after = _memory_kib(pid)

    print(
        f"\nRSS of the node: before {before / 1024:.1f} MiB, peak during {after['VmHWM'] / 1024:.1f} MiB, "
        f"after {after['VmRSS'] / 1024:.1f} MiB; the client sent {sent / MiB:.1f} of 150 MiB before the close"
    )
    assert_error(_as_response(status, headers, body), 413, "message_too_large")
    assert closed
    assert after["VmHWM"] - before < 20 * 1024
    assert httpx.get(fresh_server.url + "/healthz", timeout=10).status_code == 200
