"""Exceptions a user of callstream's Python clients can catch and act on, and the server's one
error for an outage (`UnavailableError`).

Every client failure carries a machine-readable ``code`` (the same codes the server uses on the wire,
docs/protocol.md, Server → client, plus a few client-side ones) so callers branch on the code, not on the message.
"""

from __future__ import annotations


class CallstreamError(Exception):
    """Base class of every error raised by callstream's client-side API: a ``code`` and a ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PublishError(CallstreamError):
    """An event was not stored, or may not have been.

    ``code`` is a server error code (``invalid_message``, ``unknown_type``, ``forbidden``, …) when
    the server refused the event, or one of the client-side codes:

    - ``unauthorized``: the server refused the API key at the handshake; not retried.
    - ``backpressure``: too many events are waiting for an ack (``max_in_flight``).
    - ``closed``: the publisher was closed before the server acknowledged the event.
    - ``internal``: the publisher itself failed; the message says why.
    """


class ClientError(CallstreamError):
    """The subscriber client (:class:`callstream.Client`) cannot go on.

    Raised from ``async with Client(...)`` or from the ``events()`` iterator when retrying would
    not help. Transient trouble (a dropped socket, a restarting server, a slow-consumer close) is
    never raised: the client reconnects and resumes with ``since`` by itself.

    ``code`` is a server error code or one of the client-side codes:

    - ``closed``: the client was closed; make a new one.
    - ``internal``: the client itself failed; the message says why.
    """


class AuthError(ClientError):
    """The server refused the credential, and a fresh one could not be had.

    ``code`` is ``unauthorized`` (HTTP 401 at the handshake, or the key was revoked: close code
    4001 with no ``token_provider`` to ask), ``forbidden`` (HTTP 403: the credential lacks the
    ``subscribe`` scope, or the ``Origin`` is not allowed), or ``token_expired`` (the JWT expired
    and no ``token_provider`` was given, or it kept returning refused tokens).
    """


class ControlError(ClientError):
    """A control request (:meth:`callstream.Client.control`) was refused or could not be made.

    ``code`` is the server's: ``forbidden`` (no ``control`` scope, or not this call),
    ``call_not_live``, ``no_producer`` (nobody connected holds the call),
    ``unsupported_action`` (its producer did not declare the action), ``invalid_message`` (the
    arguments), ``rate_limited``; or a client-side one: ``closed`` (no connection to send it on,
    or it dropped before the answer), ``timeout`` (no answer in time).
    """


class UnavailableError(Exception):
    """The node's store or broker cannot serve right now (server side).

    The store (`StoreUnavailableError`) and the broker (`BrokerUnavailableError`) raise it in
    place of their drivers' errors, at their boundary; its message says what failed and never
    holds SQL or data, so it may be logged and answered. REST answers it with 503 `unavailable`
    and `Retry-After`, a handshake likewise, an open socket with an `error`.
    """
