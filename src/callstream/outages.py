"""One log line when a background loop's store or broker starts failing, one when it works again.

Loops that retry on every tick (the revocation poll, the webhook claims, the store's writer)
would otherwise log a line, or a traceback, per tick for as long as the store or the broker is
down, burying everything else in the log. `/healthz` is where an outage shows while it lasts;
the log says when it began and when it ended.
"""

from __future__ import annotations

import logging
import time

from callstream.errors import UnavailableError


def reason(error: BaseException) -> str:
    """What to log of an error: the project's own errors say what failed in their message (no
    SQL, no parameters); of anything else, only its class."""
    if isinstance(error, UnavailableError):
        return f"{error.__class__.__name__}: {error}"
    return error.__class__.__name__


class OutageLog:
    """The state of one loop's dependency: `failed` on every failure, `recovered` on every success.

    Only the first failure of an outage and the first success after it are logged.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        self._failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s failed (%s); no more of these lines until it works again", self._what, reason(error))

    def recovered(self) -> None:
        if self._since is None:
            return
        lasted = time.monotonic() - self._since
        self._log.warning(
            "%s works again after %.1f s (%d failed attempts)", self._what, lasted, self._failures
        )
        self._since, self._failures = None, 0
