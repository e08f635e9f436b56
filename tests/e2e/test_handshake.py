"""The WebSocket opening handshake, byte for byte on a raw socket: what RFC 6455 and docs/protocol.md (Connecting)
promise a client before the first frame."""

from __future__ import annotations

import base64
import hashlib
import socket

from tests.helpers import ServerProcess
from tests.rawws import upgrade_request

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def exchange(port: int, request: bytes, wait_s: float = 5.0) -> bytes:
    """Send `request`, return everything the server sends until the headers end or it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def accept_of(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode(), usedforsecurity=False).digest()).decode()


def test_a_plain_handshake_is_switched_with_the_rfc_accept_key(server: ServerProcess, api_key: str) -> None:
    request, key = upgrade_request(server.port, f"/v1/events?token={api_key}")
    response = exchange(server.port, request)
    assert status_of(response) == 101, response
    headers = response.lower()
    assert f"sec-websocket-accept: {accept_of(key)}".lower().encode() in headers
    assert b"upgrade: websocket" in headers


def test_a_bad_key_or_version_is_answered_400(server: ServerProcess, api_key: str) -> None:
    bad_key, _ = upgrade_request(server.port, f"/v1/events?token={api_key}", key="not-a-key")
    assert status_of(exchange(server.port, bad_key)) == 400
    request, _ = upgrade_request(server.port, f"/v1/events?token={api_key}")
    bad_version = request.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8")
    response = exchange(server.port, bad_version)
    assert status_of(response) == 400, response


def test_an_upgrade_with_a_body_is_refused(server: ServerProcess, api_key: str) -> None:
    request, _ = upgrade_request(server.port, f"/v1/events?token={api_key}", "Content-Length: 5")
    assert status_of(exchange(server.port, request + b"hello")) != 101


def test_a_bad_credential_is_answered_401_without_an_upgrade(server: ServerProcess) -> None:
    request, _ = upgrade_request(server.port, "/v1/events?token=cs_wrong")
    response = exchange(server.port, request)
    assert status_of(response) == 401, response
    assert b"upgrade: websocket" not in response.lower()
    assert b"cs_wrong" not in response  # never echoed back
