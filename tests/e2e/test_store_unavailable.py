"""While the database refuses connections, every request that needs it answers 503 `unavailable`
with `Retry-After` in the project's error shape, never a 500 (docs/protocol.md, Outages); the
node keeps serving and answers as before once the database is back.

The outage is real: the node's PostgreSQL database stops taking connections
(`ALLOW_CONNECTIONS false`, which binds superusers too) and its open sessions are ended.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.broker.services import PG_ADMIN_URL, Database
from tests.helpers import ServerProcess, final, publish

pytestmark = pytest.mark.postgres


async def _admit(name: str, allowed: bool) -> None:
    """Let the database take connections again, or refuse them and end the ones it has."""
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                query = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                await conn.execute(sa.text(query), {"name": name})
    finally:
        await engine.dispose()


def _get(server: ServerProcess, key: str, path: str) -> httpx.Response:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=15)


async def test_reads_answer_503_unavailable_while_the_database_refuses_connections(
    tmp_path: Path, pg_database: Database, call_id: str
) -> None:
    server = ServerProcess(tmp_path, "--database", pg_database.url)
    await asyncio.to_thread(server.start)
    try:
        key = await asyncio.to_thread(server.create_key, "acme")
        assert (await asyncio.to_thread(publish, server, key, call_id, final("hello"))).status_code == 202
        reads = [
            f"/v1/calls/{call_id}",
            "/v1/calls",
            f"/v1/calls/{call_id}/events",
            f"/v1/calls/{call_id}/transcript",
        ]
        for path in reads:
            assert (await asyncio.to_thread(_get, server, key, path)).status_code == 200, path

        await _admit(pg_database.name, False)
        for path in reads:
            started = time.monotonic()
            answer = await asyncio.to_thread(_get, server, key, path)
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.json()["error"]["code"] == "unavailable", (path, answer.text)
            assert answer.json()["error"]["message"], path
            assert answer.headers["retry-after"] == "1", path
            assert time.monotonic() - started < 10, path

        # A key the node has not seen cannot be checked: the handshake answers 503 (not 401) in the
        # same shape, with no upgrade.
        unknown = {"Authorization": "Bearer cs_not_a_key_the_node_has_seen"}
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws_url}/v1/events", additional_headers=unknown)
        assert refused.value.response.status_code == 503
        assert b'"code":"unavailable"' in refused.value.response.body

        await _admit(pg_database.name, True)
        deadline = time.monotonic() + 15
        while (answer := await asyncio.to_thread(_get, server, key, f"/v1/calls/{call_id}")).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            await asyncio.sleep(0.25)
        assert answer.json()["call_id"] == call_id
    finally:
        await asyncio.to_thread(server.kill)
