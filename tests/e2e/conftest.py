"""End-to-end fixtures: a real server on each store, and several real nodes sharing Redis and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.services import NODES_REDIS_URL, REDIS_HOST, REDIS_PORT, fresh_database, require
from tests.helpers import Cluster, ServerProcess


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
    with fresh_database() as database:
        server = ServerProcess(data_dir, "--database", database.url).start()
        yield server
        server.stop()


@pytest.fixture(scope="module")
def cluster_database() -> Iterator[str]:
    """A fresh PostgreSQL database the cluster nodes of one module share (Redis must be up too)."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    with fresh_database() as database:
        yield database.url


@pytest.fixture
def cluster(tmp_path: Path, cluster_database: str) -> Iterator[Cluster]:
    """Nodes (not started) on the machine's Redis (`NODES_REDIS_URL`) and the module's database."""
    nodes = Cluster(tmp_path, cluster_database, NODES_REDIS_URL)
    yield nodes
    nodes.stop()


@pytest.fixture
def account() -> str:
    """An account of the test's own (the cluster's nodes share Redis and the database)."""
    return f"acct_{secrets.token_hex(5)}"
