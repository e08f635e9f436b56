"""Fixtures: a real server process per test session (and fresh ones for restart tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server; tests keep apart by using their own call ids and accounts."""
    proc = ServerProcess(tmp_path_factory.mktemp("server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for restarts, kills and tight limits (not started)."""
    proc = ServerProcess(tmp_path)
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def api_key(server: ServerProcess) -> str:
    """Account 'acme', every scope."""
    return server.create_key("acme")


@pytest.fixture(scope="session")
def other_key(server: ServerProcess) -> str:
    """Account 'globex', every scope: the other tenant."""
    return server.create_key("globex")


@pytest.fixture
def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"
