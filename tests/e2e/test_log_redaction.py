"""A real server's log file never holds a credential sent in a query string, whatever its spelling.

The server reads `%74oken=` as `token=` (it decodes names), so a log filter that matched the raw
text would let a working API key through; other names a client may use for a secret (`api_key`,
`access_token`, `password`, …) are refused by the server but still logged, and must not leak either.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.helpers import ServerProcess

# Each spelling a client may use, as it appears in the request target.
NAMES = [
    "token",
    "Token",
    "TOKEN",
    "%74oken",
    "api_key",
    "Access_Token",
    "code",
    "password",
    "jwt",
    "authorization",
]


def _secret() -> str:
    return f"cs_leak{uuid.uuid4().hex}"


async def _rest(server: ServerProcess, probe: str, name: str, secret: str) -> int:
    url = f"{server.url}/v1/calls?probe={probe}&{name}={secret}&limit=1"
    response = await asyncio.to_thread(httpx.get, url, timeout=10)
    return response.status_code


async def _socket(server: ServerProcess, path: str, probe: str, name: str, secret: str) -> bool:
    """Open and close a socket with the credential in its query: True when it was accepted."""
    try:
        async with connect(f"{server.ws_url}{path}?probe={probe}&{name}={secret}"):
            return True
    except InvalidStatus:
        return False


async def test_query_credentials_are_redacted_in_access_and_websocket_logs(server: ServerProcess) -> None:
    key = await asyncio.to_thread(server.create_key, f"logs_{uuid.uuid4().hex[:8]}")
    sent: dict[str, str] = {}  # probe -> secret
    for i, name in enumerate(NAMES):
        sent[f"rest{i}"] = _secret()
        sent[f"events{i}"] = _secret()
        sent[f"ingest{i}"] = _secret()
        assert await _rest(server, f"rest{i}", name, sent[f"rest{i}"]) == 401
        assert not await _socket(server, "/v1/events", f"events{i}", name, sent[f"events{i}"])
        assert not await _socket(server, "/v1/ingest", f"ingest{i}", name, sent[f"ingest{i}"])
    # A real key under an encoded name works on the server, so it is exactly what must not leak.
    sent["keyrest"] = sent["keyevents"] = key
    assert await _rest(server, "keyrest", "%74oken", key) == 200
    assert await _socket(server, "/v1/events", "keyevents", "%74oken", key)
    await asyncio.sleep(0.3)  # let the server flush its log lines

    log = server.log_path.read_text(errors="replace")
    leaked = [probe for probe, secret in sent.items() if secret in log or secret[3:] in log]
    assert not leaked, f"credentials in the log for {leaked}"
    lines = log.splitlines()
    for probe in sent:
        mine = [line for line in lines if f"probe={probe}&" in line]
        assert mine, f"no log line for {probe}"
        assert all("=[redacted]" in line for line in mine), mine
    accepted = [line for line in lines if "probe=keyevents&" in line and "[accepted]" in line]
    assert accepted == [accepted[0]], lines[-40:]
    assert "WebSocket /v1/events?probe=keyevents&token=[redacted]" in accepted[0]
