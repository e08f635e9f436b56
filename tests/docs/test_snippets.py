"""Every snippet is a test: the pages a newcomer follows are run as the newcomer would run them.

Each page (or path of pages, read in one terminal) runs in a fresh folder laid out like a checkout
(its `.venv`, `Makefile`, `examples/` are the repository's own), against servers it starts itself
on a port of its own; the paths are read side by side. A page that is not a path from nothing
gets a prelude: what its reader has already done (tests/docs/pages.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from unittest import SkipTest

import pytest

from tests.docs.pages import PATHS, ROOT
from tests.docs.shell import Shell
from tests.docs.snippets import SYBIL, Page
from tests.helpers import free_port

CHECKOUT = (".venv", "Makefile", "pyproject.toml", "src", "examples")


TOOLS = ("bash", "curl", "jq", "timeout", "node")


@pytest.fixture(scope="module")
def readings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BaseException | None]:
    """Every path the session selected (`-k webhooks` reads one) read at once, each by a reader
    of its own (its own folder, terminal and server): most of a reading is waiting for servers
    and calls, so side by side they take about as long as the longest one. What went wrong in
    each, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        _missing(f"the pages' readers have {', '.join(missing)}; this machine does not")
    if subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT, check=False).returncode != 0:
        pytest.fail("`.venv` is not installed from the current pyproject.toml: run `make .venv/.installed`")
    selected = {item.callspec.params["path"] for item in request.session.items if _reads_a_path(item)}
    with ThreadPoolExecutor(len(selected)) as pool:
        futures = {name: pool.submit(_read, name, tmp_path_factory.mktemp(name)) for name in sorted(selected)}
    return {name: future.exception() for name, future in futures.items()}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_snippet_of_the_page_runs_and_prints_what_it_shows(
    path: str, readings: dict[str, BaseException | None]
) -> None:
    failure = readings[path]
    if failure is not None:
        raise failure


def _reads_a_path(item: pytest.Item) -> bool:
    """A test of this file's that reads a path: the session selected that path."""
    return (
        isinstance(item, pytest.Function)
        and item.module.__name__ == __name__
        and "path" in item.callspec.params
    )


def _read(path: str, folder: Path) -> None:
    """One reader follows the path's pages in order, in one terminal, from a fresh checkout."""
    files, prelude = PATHS[path]
    with _terminal(_checkout(folder)) as page:
        if prelude:
            ran = page.shell.run(page.localize(prelude))
            assert ran.status == 0, ran.output()
        for name in files:
            document = SYBIL.parse(ROOT / name)
            document.namespace["page"] = page
            for example in document:
                try:
                    example.evaluate()
                except SkipTest:  # a block marked `<!-- skip: next "why" -->`
                    continue
                except Exception as exc:
                    raise AssertionError(f"{name}, line {example.line}: {exc}") from exc


def _checkout(folder: Path) -> Path:
    """A folder a reader would work in: the repository's installed `.venv` and files beside it."""
    for name in CHECKOUT:
        (folder / name).symlink_to(ROOT / name)
    return folder


@contextmanager
def _terminal(folder: Path) -> Iterator[Page]:
    port = free_port()
    # A reader's shell: none of the suite's own settings, nor those of the `make test` it may run in
    # (make would announce "Entering directory" for a `make` a page runs).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLSTREAM_", "VIRTUAL_ENV", "MAKE", "MFLAGS"))}
    env |= {"CALLSTREAM_PORT": str(port), "CALLSTREAM_URL": f"http://127.0.0.1:{port}"}
    # curl draws no progress meter when its output is a terminal, as the reader's is; here it is a file
    (folder / ".curlrc").write_text("no-progress-meter\n")
    env["CURL_HOME"] = str(folder)
    if _node_major() < 22:  # the pages' reader has Node ≥ 22, or this (as they say); quietly
        env["NODE_OPTIONS"] = "--experimental-websocket --no-warnings"
    shell = Shell(folder, env)
    try:
        yield Page(shell, port, free_port())
    finally:
        shell.close()


def _missing(what: str) -> NoReturn:
    """Skip locally, fail under CI=true (as for the services: tests/broker/services.py)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: these tests must run)")
    pytest.skip(what)


def _node_major() -> int:
    node = shutil.which("node")
    if node is None:
        return 0
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(version.strip().lstrip("v").split(".")[0])
