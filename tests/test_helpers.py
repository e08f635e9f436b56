"""The test harness's own promises: a server that fails to start leaves no process behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import ServerProcess, final, free_port, key_of, publish


def test_a_server_that_misses_its_start_deadline_is_stopped(tmp_path: Path) -> None:
    """A start that times out kills and reaps its process: left running, a later test of the
    worker failed on the leaked `Popen`'s ResourceWarning, and the node held its port."""
    server = ServerProcess(tmp_path)
    with pytest.raises(RuntimeError, match="did not become healthy"):
        server.start(timeout=0.01)
    assert server.proc is not None
    assert server.proc.returncode is not None


def test_a_server_handed_a_port_another_server_holds_starts_on_a_port_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing holds a `free_port` while a node starts (up to half a minute under CI's load), so
    two test workers can be handed the same one. The start must not take the other node's
    /healthz for its own: it did, and every test of a module then talked to another worker's
    server, whose store never held their keys (7 `[sqlite]` tests of test_search.py, 401)."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = ServerProcess(tmp_path / "first").start()
    try:
        handed = iter([first.port])
        monkeypatch.setattr(helpers, "free_port", lambda: next(handed, None) or free_port())
        second = ServerProcess(tmp_path / "second")
        assert second.port == first.port  # the collision, staged
        second.start()
        try:
            assert publish(second, key_of(second), "call_port", final("hello")).status_code == 202
            assert second.port != first.port
        finally:
            second.stop()
    finally:
        first.stop()
