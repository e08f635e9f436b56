"""End-to-end fixtures: a real server on each store, and several real nodes sharing Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.broker.services import (
    NODES_REDIS_URL,
    PG_HOST,
    PG_PORT,
    REDIS_HOST,
    REDIS_PORT,
    create_database,
    database_name,
    drop_database,
    require,
)
from tests.helpers import Cluster, ServerProcess, run_async


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database as a user gives it to `--database`; dropped afterwards."""
    require("PostgreSQL", PG_HOST, PG_PORT)
    name = database_name()
    url = run_async(create_database(name)).replace("+asyncpg", "")
    try:
        yield url
    finally:
        run_async(drop_database(name))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per module on each store: the embedded SQLite, then a fresh PostgreSQL database.
    Tests keep apart by using accounts of their own."""
    data_dir = tmp_path_factory.mktemp(f"node-{request.param}")
    if request.param == "sqlite":
        server = ServerProcess(data_dir).start()
        yield server
        server.stop()
        return
    with postgres_database() as url:
        server = ServerProcess(data_dir, "--database", url).start()
        yield server
        server.stop()


@pytest.fixture(scope="module")
def cluster_database() -> Iterator[str]:
    """A fresh PostgreSQL database the cluster nodes of one module share (Redis must be up too)."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    with postgres_database() as url:
        yield url


@pytest.fixture
def cluster(tmp_path: Path, cluster_database: str) -> Iterator[Cluster]:
    """Nodes (not started) on the machine's Redis (`NODES_REDIS_URL`) and the module's database."""
    nodes = Cluster(tmp_path, cluster_database, NODES_REDIS_URL)
    yield nodes
    nodes.stop()
