"""Fixtures of the tests that run several real nodes on Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.services import REDIS_HOST, REDIS_PORT, fresh_database, require
from tests.helpers import ServerProcess


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh PostgreSQL database shared by the nodes of this module, as a user-facing URL."""
    require("Redis", REDIS_HOST, REDIS_PORT)
    with fresh_database() as fresh:
        yield fresh.url


class Cluster:
    def __init__(self, root: Path, database: str, broker: str) -> None:
        self.root, self.database, self.broker = root, database, broker
        self.nodes: list[ServerProcess] = []

    def start(self, count: int) -> list[ServerProcess]:
        for _ in range(count):
            data_dir = self.root / f"node{len(self.nodes)}"
            data_dir.mkdir()
            node = ServerProcess(data_dir, "--broker", self.broker, "--database", self.database)
            self.nodes.append(node)
        for node in self.nodes[-count:]:
            node.start()
        return self.nodes[-count:]

    def key(self, account: str) -> str:
        return self.nodes[0].create_key(account)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def cluster(tmp_path: Path, database: str) -> Iterator[Cluster]:
    """Nodes on the machine's Redis (database 3; call ids and accounts are unique per test)."""
    nodes = Cluster(tmp_path, database, f"redis://{REDIS_HOST}:{REDIS_PORT}/3")
    yield nodes
    nodes.stop()


