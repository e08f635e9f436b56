"""Under CI=true a test whose tool is missing fails instead of skipping (CONTRIBUTING.md, What the
test suite needs), so CI cannot pass with the browser or Node tests silently skipped. Each case
runs pytest on one test file, in a process of its own, with the tool taken away."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_on(test_file: str, ci: bool, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    environ |= {"CI": "true"} if ci else {}
    environ |= env
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs", test_file],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )


NO_CHROMIUM = {"CALLSTREAM_TEST_CHROMIUM": "/nonexistent/chromium"}
SUBPROCESS_TIMEOUT_S = 120  # each case runs two: the test's own timeout is set above both


@pytest.mark.timeout(2 * SUBPROCESS_TIMEOUT_S + 30)
@pytest.mark.parametrize(("test_file", "env", "reason"), [
    ("tests/e2e/test_dashboard.py", NO_CHROMIUM, "needs Debian chromium at /nonexistent/chromium"),
    ("tests/test_callstream_js.py", {"PATH": "/nonexistent"}, "node is not installed"),  # no node on PATH
])
def test_a_missing_tool_fails_under_ci_and_is_skipped_locally(test_file: str, env: dict[str, str], reason: str) -> None:
    under_ci = pytest_on(test_file, ci=True, **env)
    assert under_ci.returncode != 0, under_ci.stdout
    assert "CI=true: these tests must run" in under_ci.stdout
    local = pytest_on(test_file, ci=False, **env)
    assert local.returncode in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), local.stdout  # a module skipped whole
    assert "skipped" in local.stdout
    assert reason in local.stdout  # skipped for the tool taken away, not for another reason
