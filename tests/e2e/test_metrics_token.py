"""`/metrics` behind a bearer token: scrapers present it, anyone else gets the project's 401."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import ServerProcess

TOKEN = "scrape-me-0123456789abcdef"


@pytest.fixture(scope="module", params=["flag", "env"])
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server started with `--metrics-token` or with `CALLSTREAM_METRICS_TOKEN`."""
    tmp_path = tmp_path_factory.mktemp("metrics")
    if request.param == "flag":
        server = ServerProcess(tmp_path, "--metrics-token", TOKEN)
    else:
        server = ServerProcess(tmp_path, env={"CALLSTREAM_METRICS_TOKEN": TOKEN})
    yield server.start()
    server.stop()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer ünïcode".encode()},
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "no-scheme", "non-ascii"],
)
def test_metrics_without_the_token_is_401(guarded: ServerProcess, headers: dict[str, str | bytes]) -> None:
    response = httpx.get(f"{guarded.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert "callstream_" not in response.text
    assert httpx.get(f"{guarded.url}/healthz", timeout=10).status_code == 200  # the node serves on


def test_metrics_with_the_token_answers_prometheus_text(guarded: ServerProcess) -> None:
    response = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "callstream_tasks" in response.text


def test_the_token_is_not_taken_from_the_query(guarded: ServerProcess) -> None:
    """A query string ends up in logs and proxies; the metrics token goes in the header only."""
    assert httpx.get(f"{guarded.url}/metrics?token={TOKEN}", timeout=10).status_code == 401


def test_without_a_token_metrics_stay_open(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 200
