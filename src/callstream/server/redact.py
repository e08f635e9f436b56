"""Keep credentials out of logs: the values of credential parameters in a URL's query string.

Access and WebSocket log lines carry the request target, and a client may put a secret in its
query (`?token=…`, as EventSource must). The query is parsed the way the server parses it
(`urllib.parse.parse_qsl`), so a name the server would read as `token` (`%74oken`, `Token`) is
read as one here too, and a value is redacted however it is encoded. What counts as a
credential (`is_credential`) errs on the side of hiding: a log loses nothing it needs.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode

__all__ = ["REDACTED", "RedactCredentials", "is_credential", "redact_query", "redact_target"]

REDACTED = "[redacted]"

# Compared after case folding and dropping `-` and `_`: `api_key`, `API-Key` and `apikey` are one.
CREDENTIAL_NAMES = frozenset(
    {"auth", "authorization", "bearer", "code", "credential", "credentials", "jwt", "login",
     "passwd", "pwd", "session", "sig", "signature"}
)  # fmt: skip
CREDENTIAL_SUFFIXES = ("token", "key", "secret", "password")
# Where a query string starts and ends inside a log line; what is in it is left to the parser.
_QUERY = re.compile(r"\?([^\s\"'<>]*)")


def is_credential(name: str) -> bool:
    """True for a query parameter name that may carry a secret (`token`, `api_key`, `code`, …)."""
    folded = name.casefold().replace("-", "").replace("_", "").strip()
    return folded in CREDENTIAL_NAMES or folded.endswith(CREDENTIAL_SUFFIXES)


def redact_query(query: str) -> str:
    """The query with every credential's value replaced by `[redacted]`; unchanged without one.

    A query holding a credential is written back from its parsed pairs (names decoded), so the
    log shows `token=[redacted]` even for `%74oken=…`.
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_credential(name) for name, _ in pairs):
        return query
    cleaned = [(name, REDACTED if is_credential(name) else value) for name, value in pairs]
    return urlencode(cleaned, safe="[]")


def redact_target(text: str) -> str:
    """Text holding request targets (`/path?query`) or URLs, with their queries redacted."""
    return _QUERY.sub(lambda m: "?" + redact_query(m.group(1)), text) if "?" in text else text


class RedactCredentials(logging.Filter):
    """Redacts the query strings in a record's arguments (or in its message when it has none).

    uvicorn passes the request target as an argument (`"GET %s"`, `"WebSocket %s"`), httpx a
    URL object: any argument whose text has a query is rewritten, numbers are left as they are
    so `%d` still formats.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif not record.args and isinstance(record.msg, str):
            record.msg = redact_target(record.msg)
        return True


def _redact_arg(arg: object) -> object:
    if isinstance(arg, int | float | bytes) or arg is None:
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    redacted = redact_target(text)
    return arg if redacted == text else redacted
