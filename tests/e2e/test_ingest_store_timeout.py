"""A hung database must not hang the producer: an event whose commit does not come within
`CALLSTREAM_STORE_TIMEOUT_S` gets an `internal` error with its `ref` ("not confirmed"), the
socket stays open, and once the database answers again later events are acked as before.

PostgreSQL is the store that can hang (the embedded one commits to a local file): a second
session holds an exclusive lock on the tables the node writes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect

from tests.broker.services import Database
from tests.helpers import ServerProcess, final, recv

pytestmark = pytest.mark.postgres


async def test_a_commit_that_hangs_gets_a_clear_error_and_the_socket_goes_on(
    tmp_path: Path, pg_database: Database, call_id: str
) -> None:
    server = ServerProcess(tmp_path, "--database", pg_database.url, env={"CALLSTREAM_STORE_TIMEOUT_S": "1"})
    await asyncio.to_thread(server.start)
    locker = create_async_engine(pg_database.driver_url)
    try:
        key = await asyncio.to_thread(server.create_key, "acme")
        headers = {"Authorization": f"Bearer {key}"}
        async with await connect(f"{server.ws_url}/v1/ingest", additional_headers=headers) as ws:
            await ws.send(orjson.dumps({"call_id": call_id, **final("first"), "ref": "first"}).decode())
            assert await recv(ws, timeout=10) == {"type": "ack", "ref": "first", "seq": 1}

            async with locker.connect() as conn:
                transaction = await conn.begin()
                await conn.execute(sa.text("LOCK TABLE event_chunks, calls IN ACCESS EXCLUSIVE MODE"))
                started = time.monotonic()
                await ws.send(orjson.dumps({"call_id": call_id, **final("stuck"), "ref": "stuck"}).decode())
                error = await recv(ws, timeout=10)
                waited = time.monotonic() - started
                await transaction.rollback()  # the database answers again

            assert (error["type"], error["ref"], error["data"]["code"]) == ("error", "stuck", "internal")
            assert "not confirmed" in error["data"]["message"]
            assert 0.9 <= waited < 5, waited  # the timeout, not the lock, decided when

            await ws.send(orjson.dumps({"call_id": call_id, **final("after"), "ref": "after"}).decode())
            ack = await recv(ws, timeout=10)  # the stuck event's late commit sends nothing
            assert (ack["type"], ack["ref"]) == ("ack", "after")
            assert ack["seq"] == 3  # "stuck" took seq 2 (and may be stored: a retry may duplicate it)
    finally:
        await locker.dispose()
        await asyncio.to_thread(server.kill)
