"""The docs' terminal gives a block one budget of time per command it holds, so a slow machine
fails no block of several quick commands, while one command that hangs still fails its block."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs import shell
from tests.docs.shell import Shell


@pytest.fixture
def terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shell:
    monkeypatch.setattr(shell, "COMMAND_TIMEOUT_S", 2.0)
    return Shell(tmp_path, dict(os.environ))


def test_a_block_of_several_commands_has_the_time_of_all_of_them(terminal: Shell) -> None:
    try:
        ran = terminal.run("# three commands: 3 s in all, 2 s each at most\nsleep 1\n\nsleep 1\nsleep 1 && echo done\n")
    finally:
        terminal.close()
    assert ran.status == 0
    assert ran.output() == "done\n"


def test_a_command_that_hangs_fails_its_block(terminal: Shell) -> None:
    try:
        with pytest.raises(TimeoutError, match="did not finish within 4 s"):
            terminal.run("echo started\nsleep 30\n")
    finally:
        terminal.close()


def test_a_command_continued_over_lines_is_one_command(terminal: Shell) -> None:
    try:
        with pytest.raises(TimeoutError, match="did not finish within 2 s"):
            terminal.run("sleep \\\n  30\n")
    finally:
        terminal.close()
