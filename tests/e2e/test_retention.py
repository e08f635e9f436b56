"""The retention sweep (docs/protocol.md, Retention and erasure; docs/privacy.md) in a real server process, on SQLite and
PostgreSQL: calls the test ages in the database by two days are erased by a node that keeps one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.broker.services import fresh_database
from tests.e2e.test_erasure import assert_never_existed, ended_call, get, wait_for
from tests.helpers import ServerProcess, final, key_of, publish, run_async

TWO_DAYS_MS = 2 * 86_400_000
SWEEPING = {"CALLSTREAM_RETENTION_SWEEP_S": "0.3"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def keeping_one_day(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """A node with `--retention-days 1` that sweeps often, and its database for the test's engine."""
    data_dir = tmp_path_factory.mktemp(f"retention-{request.param}")
    if request.param == "sqlite":
        server = ServerProcess(data_dir, "--retention-days", "1", env=SWEEPING).start()
        yield server, f"sqlite+aiosqlite:///{data_dir / 'callstream.db'}"
        server.stop()
        return
    with fresh_database() as database:
        server = ServerProcess(data_dir, "--retention-days", "1", "--database", database.url, env=SWEEPING).start()
        yield server, database.driver_url
        server.stop()


async def age(database: str, call_ids: list[str], by_ms: int) -> None:
    """Move the calls' start and end `by_ms` into the past, as if they had ended that long ago."""
    engine = create_async_engine(database, connect_args={"timeout": 30} if database.startswith("sqlite") else {})
    calls = sa.table("calls", sa.column("call_id"), sa.column("started_at"), sa.column("ended_at"))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                calls.update()
                .where(calls.c.call_id.in_(call_ids))
                .values(started_at=calls.c.started_at - by_ms, ended_at=calls.c.ended_at - by_ms)
            )
    finally:
        await engine.dispose()


def test_calls_that_ended_more_than_the_retention_ago_are_erased(keeping_one_day: tuple[ServerProcess, str]) -> None:
    server, database = keeping_one_day
    key = key_of(server)
    old, recent, live = (f"call_{uuid.uuid4().hex[:12]}" for _ in range(3))
    ended_call(server, key, old)
    ended_call(server, key, recent)
    assert publish(server, key, live, [final("still talking")]).status_code == 202

    run_async(age(database, [old], TWO_DAYS_MS))

    wait_for(lambda: get(server, key, f"/v1/calls/{old}").status_code == 404)
    assert_never_existed(server, key, old)
    time.sleep(1.0)  # a few more sweeps
    assert get(server, key, f"/v1/calls/{recent}").status_code == 200
    assert get(server, key, f"/v1/calls/{live}").json()["status"] == "live"
    assert "retention sweep: 1 ended call(s) erased (retention: 1 day(s))" in server.log()
    assert publish(server, key, old, [final("a new call")]).json()["seq"] == [1]
