"""schemathesis against the live server's OpenAPI schema: no 5xx, answers conform to the schema.

Runs schemathesis' own engine (its CLI; its pytest plugin does not load under pytest 9) with the
examples, coverage and fuzzing phases, bounded to a few dozen examples per operation (< 60 s).
`positive_data_acceptance` is left out on purpose: a schema cannot say that an event after
`call.ended` is refused, nor which opaque cursor this server issued, so "schema-valid" does not
mean "acceptable" there. The report (ndjson, with the seed) lands in the test's tmp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
        "ignored_auth",
        "unsupported_method",
    ]
)
ST = Path(sys.executable).parent / "st"


@pytest.mark.skipif(not ST.exists(), reason="schemathesis is not installed (pip install -e '.[dev]')")
@pytest.mark.timeout(180)
def test_api_conforms_to_its_schema(server: ServerProcess, tmp_path: Path) -> None:
    key = server.create_key(f"schemathesis_{uuid.uuid4().hex[:8]}")  # an account of its own
    # A body over the server's limit is refused with 413 (documented on every route), which
    # schemathesis does not count as a refusal unless told.
    config = tmp_path / "schemathesis.toml"
    refusals = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
    config.write_text(f"[checks.negative_data_rejection]\nexpected-statuses = {refusals!r}\n".replace("'", '"'))
    command = [
        str(ST),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        # An event stream never ends: a request/response fuzzer can only time out on it
        # (tests/e2e/test_event_stream.py checks its refusals and its stream).
        "--exclude-path",
        "/v1/events/stream",
        "--max-examples",
        os.environ.get("CALLSTREAM_SCHEMATHESIS_EXAMPLES", "25"),
        "--generation-database",
        "none",
        "--request-timeout",
        "15",
        "--warnings",
        "off",
        "--no-color",
        "--report",
        "ndjson",
        "--report-dir",
        str(tmp_path),
    ]
    if seed := os.environ.get("CALLSTREAM_SCHEMATHESIS_SEED"):
        command += ["--seed", seed]
    done = subprocess.run(command, capture_output=True, text=True, timeout=170, check=False, cwd=tmp_path)
    summary = done.stdout[-6000:]
    print(summary)
    assert done.returncode == 0, summary
