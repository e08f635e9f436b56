"""`callstream demo` (docs/dashboard.md, Simulated campaigns): the login link it prints opens a
session that may act on calls and hear them, so a user hears the demo from the dashboard."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from tests.helpers import free_port


def test_the_demo_link_opens_a_session_that_may_listen(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CALLSTREAM_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "callstream", "demo", "--port", str(port), "--calls", "1", "--audio"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as demo:
        try:
            assert demo.stdout is not None
            deadline = time.monotonic() + 60
            link = None
            while link is None and time.monotonic() < deadline:
                line = demo.stdout.readline()
                assert line, "the demo exited before printing its link"
                link = re.search(r"\?login=(\S+)", line)
            assert link is not None
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/login", json={"code": link[1]}, timeout=10)
            assert answer.status_code == 200, answer.text
            scopes = set(
                jwt.decode(answer.json()["token"], options={"verify_signature": False})["scope"].split()
            )
            assert scopes == {"subscribe", "control", "listen"}
        finally:
            demo.terminate()
            demo.wait(20)


def run_demo_until_ready(env: dict[str, str], *flags: str) -> tuple[subprocess.Popen[str], Path]:
    """A demo started as a user starts it, once it serves; and the data folder it says it uses."""
    port = free_port()
    command = [sys.executable, "-m", "callstream", "demo", "--port", str(port), "--calls", "1", *flags]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert demo.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        assert line, "the demo exited before saying where its data is"
        if found := re.search(r"data: (\S+)", line):
            return demo, Path(found[1])
    demo.kill()
    raise AssertionError("the demo never said where its data is")


def stop_with_ctrl_c(demo: subprocess.Popen[str]) -> None:
    demo.send_signal(signal.SIGINT)
    assert demo.wait(30) is not None


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_demo_removes_its_temporary_data_when_it_stops(tmp_path: Path, stop: signal.Signals) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_DATA_DIR"} | {"TMPDIR": str(tmp_path)}
    demo, data = run_demo_until_ready(env, "--record")
    with demo:
        assert data.parent == tmp_path
        assert data.name.startswith("callstream-demo-")
        assert any(data.iterdir())
        demo.send_signal(stop)
        demo.wait(30)
    assert not data.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_demo_keeps_a_data_dir_it_was_given(tmp_path: Path) -> None:
    given = tmp_path / "kept"
    env = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_DATA_DIR"}
    demo, data = run_demo_until_ready(env, "--data-dir", str(given))
    with demo:
        assert data == given
        stop_with_ctrl_c(demo)
    assert any(given.iterdir())


def test_the_demo_says_its_data_is_removed_unless_given_a_data_dir() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "callstream", "demo", "--help"], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"}, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "removed when the demo stops" in " ".join(shown.split())
