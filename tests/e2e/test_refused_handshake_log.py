"""A refused WebSocket handshake is one INFO line in the server's log, with its reason.

An operator reads an ERROR (or a traceback) as a fault of the server; a client with a wrong key,
a refused Origin or too many sockets is not one. Each refusal below is a real handshake against
a real server process, and its log is read as an operator would read it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.helpers import ServerProcess


async def _refused(url: str, **headers: str) -> int:
    """Open a socket that the server must refuse; the HTTP status it answered."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=10):
            raise AssertionError(f"{url} was accepted")
    except InvalidStatus as exc:
        return exc.response.status_code


def _lines_of(log: str, probe: str) -> list[str]:
    return [line for line in log.splitlines() if f"probe={probe}" in line]


async def test_refused_handshakes_are_one_info_line_with_the_reason_and_no_error(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path, "--allowed-origins", "https://app.example", env={"CALLSTREAM_MAX_CONNECTIONS_PER_KEY": "1"}
    )
    server.start()
    try:
        key = await asyncio.to_thread(server.create_key, f"refused_{uuid.uuid4().hex[:8]}")
        publish_only = await asyncio.to_thread(server.create_key, "refused_pub", "publish")
        events = f"{server.ws_url}/v1/events"
        assert await _refused(f"{events}?probe=a401&token=cs_wrong") == 401
        assert await _refused(f"{events}?probe=b403&token={key}", Origin="https://evil.example") == 403
        assert await _refused(f"{events}?probe=c403&token={publish_only}") == 403
        async with connect(f"{events}?probe=open&token={key}"):  # the key's one socket
            assert await _refused(f"{events}?probe=d429&token={key}") == 429
        await asyncio.sleep(0.3)  # let the server flush its log lines
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()

    assert "ERROR" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "connection rejected" not in log, log[-3000:]  # websockets' echo of the same refusal
    expected = {
        "a401": " 401 refused: unauthorized: ",
        "b403": " 403 refused: forbidden: this Origin is not allowed",
        "c403": " 403 refused: forbidden: this credential lacks the subscribe scope",
        "d429": " 429 refused: rate_limited: ",
    }
    for probe, reason in expected.items():
        lines = _lines_of(log, probe)
        assert len(lines) == 1, lines
        assert " INFO " in lines[0], lines[0]
        assert reason in lines[0], lines[0]
        assert "token=[redacted]" in lines[0], lines[0]
