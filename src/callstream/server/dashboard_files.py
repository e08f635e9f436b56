"""The dashboard's static files, served with headers that confine what the page may do.

The page is the one place a browser holds a callstream credential, so a script injected into it
(a call id or a transcript rendered as markup by mistake) must not run, and a foreign site must
not frame it to trick a user into clicks. The policy allows exactly what index.html and its
modules use: their own scripts (and the listen-in AudioWorklet and the recording player's Service
Worker) and styles, the data: favicon, recordings played from the page's own origin (through that
worker, which adds the credential) or from Blob URLs, and fetch/WebSocket to the page's own origin (CSP 3 `'self'` covers `ws:`/`wss:` to the same host). No inline script, no inline
style attribute, no eval.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "DashboardFiles"]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "media-src 'self' blob:",  # a recording: streamed through recording-sw.js, or a Blob URL
        "worker-src 'self'",  # recording-sw.js, the recording player's Service Worker
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP 2
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a login link's one-time code stays out of Referer
}


class DashboardFiles(StaticFiles):
    """`StaticFiles` whose every answer (200, 304, HEAD) carries `SECURITY_HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response
