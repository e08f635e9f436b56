"""The docs' terminal gives a block one budget of time per command it holds, so a slow machine
fails no block of several quick commands, while one command that hangs still fails its block."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs import shell
from tests.docs.shell import Shell


@pytest.fixture
def terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shell]:
    monkeypatch.setattr(shell, "COMMAND_TIMEOUT_S", 2.0)
    opened = Shell(tmp_path, dict(os.environ))
    yield opened
    opened.close()


def test_a_block_of_several_commands_has_the_time_of_all_of_them(terminal: Shell) -> None:
    ran = terminal.run("# three commands: 3 s in all, 2 s each at most\nsleep 1\n\nsleep 1\nsleep 1 && echo done\n")
    assert ran.status == 0
    assert ran.output() == "done\n"


@pytest.mark.parametrize(
    ("block", "budget"),
    [("echo started\nsleep 30\n", "4 s"), ("sleep \\\n  30\n", "2 s")],  # the second: one command over two lines
    ids=["two-commands", "a-continued-line"],
)
def test_a_command_that_hangs_fails_its_block(terminal: Shell, block: str, budget: str) -> None:
    with pytest.raises(TimeoutError, match=f"did not finish within {budget}"):
        terminal.run(block)
