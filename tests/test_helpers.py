"""The test harness's own promises: a server that fails to start leaves no process behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ServerProcess


def test_a_server_that_misses_its_start_deadline_is_stopped(tmp_path: Path) -> None:
    """A start that times out kills and reaps its process: left running, a later test of the
    worker failed on the leaked `Popen`'s ResourceWarning, and the node held its port."""
    server = ServerProcess(tmp_path)
    with pytest.raises(RuntimeError, match="did not become healthy"):
        server.start(timeout=0.01)
    assert server.proc is not None
    assert server.proc.returncode is not None
