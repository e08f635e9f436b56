"""Runs the browser client's unit tests (tests/js) under Node's built-in test runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers import missing

ROOT = Path(__file__).resolve().parent.parent
JS_TEST = ROOT / "tests" / "js" / "callstream.test.mjs"


def test_callstream_js_unit_tests() -> None:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed")
    proc = subprocess.run(
        [node, "--test", str(JS_TEST)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout
