"""`callstream demo` (docs/dashboard.md, Simulated campaigns): the login link it prints opens a
session that may act on calls and hear them, so a user hears the demo from the dashboard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt

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
