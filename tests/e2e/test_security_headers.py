"""The dashboard's files carry a strict Content-Security-Policy, framing and sniffing protections.

Over plain HTTP against a real server; that the dashboard still works under the policy is checked
in Chromium (`test_dashboard.py::test_dashboard_works_under_its_content_security_policy`).
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import ServerProcess

ASSETS = {
    "/": "text/html",
    "/index.html": "text/html",
    "/app.js": "text/javascript",
    "/callstream.js": "text/javascript",
    "/recording-sw.js": "text/javascript",  # a Service Worker must come as JavaScript
    "/style.css": "text/css",
}


def _directives(policy: str) -> dict[str, str]:
    pairs = (d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


@pytest.mark.parametrize("path", list(ASSETS))
def test_dashboard_files_carry_the_security_headers(server: ServerProcess, path: str) -> None:
    response = httpx.get(server.url + path, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(ASSETS[path])
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = _directives(response.headers["content-security-policy"])
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"  # REST and the events socket, same origin only
    assert policy["worker-src"] == "'self'"  # the recording player's Service Worker
    assert policy["media-src"] == "'self' blob:"  # a recording: streamed from the origin, or a Blob
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"


def test_a_revalidated_file_keeps_the_headers(server: ServerProcess) -> None:
    first = httpx.get(server.url + "/app.js", timeout=10)
    again = httpx.get(server.url + "/app.js", headers={"If-None-Match": first.headers["etag"]}, timeout=10)
    assert again.status_code == 304
    assert again.headers["content-security-policy"] == first.headers["content-security-policy"]
    assert again.headers["x-frame-options"] == "DENY"
