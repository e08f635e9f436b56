"""Exceptions a user of callstream's Python clients can catch and act on.

Every failure carries a machine-readable ``code`` (the same codes the server uses on the wire,
PROTOCOL.md §3, plus a few client-side ones) so callers branch on the code, not on the message.
"""

from __future__ import annotations


class CallstreamError(Exception):
    """Base class of every error raised by callstream's client-side API."""


class PublishError(CallstreamError):
    """An event was not stored, or may not have been.

    ``code`` is a server error code (``invalid_message``, ``unknown_type``, ``forbidden``, …) when
    the server refused the event, or one of the client-side codes:

    - ``unauthorized``: the server refused the API key at the handshake; not retried.
    - ``backpressure``: too many events are waiting for an ack (``max_in_flight``).
    - ``closed``: the publisher was closed before the server acknowledged the event.
    - ``internal``: the publisher itself failed; the message says why.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
