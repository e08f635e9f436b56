"""What `callstream.broker.redis` relies on inside redis-py, checked on the installed version.

The broker's pub/sub reader takes over the connection's `_reader` (redis-py's private asyncio
stream) once redis-py has connected, and parses it with hiredis itself. An upgrade that renames
it, or that reads ahead of the replies it asked for, fails here, naming it.
"""

from __future__ import annotations

import asyncio

import hiredis
import pytest
import redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from tests.broker.services import REDIS_HOST, REDIS_PORT, REDIS_URL, require

pytestmark = pytest.mark.redis

REDIS_PY = f"redis-py {redis.__version__}"
RELIES = "which callstream.broker.redis relies on"


async def test_a_connected_connection_hands_its_stream_over() -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)
    pool = ConnectionPool.from_url(REDIS_URL, protocol=2)
    conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    assert "_reader" in dir(conn), f"{REDIS_PY} no longer has Connection._reader, {RELIES}"
    assert conn._reader is None, f"{REDIS_PY}: Connection._reader is no longer None before connect, {RELIES}"
    await conn.connect()  # type: ignore[no-untyped-call]
    try:
        stream = conn._reader
        assert isinstance(stream, asyncio.StreamReader), (
            f"{REDIS_PY} made Connection._reader a {type(stream).__name__}, not an asyncio.StreamReader, "
            f"{RELIES}"
        )
        # Commands still go out through redis-py; every byte of the reply is left on the stream.
        await conn.send_command("PING", check_health=False)
        parser = hiredis.Reader()
        reply: object = False
        while reply is False:
            parser.feed(await asyncio.wait_for(stream.read(1024), 5))
            reply = parser.gets()
        assert reply == b"PONG", f"{REDIS_PY} read ahead of Connection._reader: got {reply!r}, {RELIES}"
    finally:
        await conn.disconnect(nowait=True)
        await pool.disconnect()
