"""The docs' terminal gives each command of a block its own time, so a slow machine fails no
block of several quick commands, while one command that hangs still fails its block."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs import shell
from tests.docs.shell import Shell


@pytest.fixture
def terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shell:
    monkeypatch.setattr(shell, "COMMAND_TIMEOUT_S", 1.0)
    return Shell(tmp_path, dict(os.environ))


def test_each_command_of_a_block_has_a_budget_of_its_own(terminal: Shell) -> None:
    try:
        ran = terminal.run("# three commands, each within its time\nsleep 0.6\n\nsleep 0.6\nsleep 0.6 && echo done\n")
    finally:
        terminal.close()
    assert ran.status == 0
    assert ran.output() == "done\n"


def test_a_command_that_hangs_fails_its_block(terminal: Shell) -> None:
    try:
        with pytest.raises(TimeoutError, match="did not finish within 2 s"):
            terminal.run("echo started\nsleep 30\n")
    finally:
        terminal.close()
