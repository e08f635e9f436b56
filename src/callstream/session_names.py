"""A session's own name: who a browser token or a dashboard login acts as, in words.

A control request's audit event says who asked (`control.requested`'s `by: {key_id, name}`).
Many people may share one key (every dashboard session of an account hangs off its
`dashboard-control` key), so a session may carry a name of its own: a JWT's `name` claim, given
when the token is minted (`POST /v1/tokens {"name": …}`, `callstream token --name`) or when the
login link is made (`callstream login --name`). It is a label, never a credential, and is
checked the same way wherever it enters.

A login link's name travels inside its one-time code (after a `.`, base64url): the whole code is
what the store hashes, so the name can be neither changed nor added once the link is made, and
the store needs no place of its own for it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

__all__ = ["MAX_NAME", "check_session_name", "code_with_name", "name_in_code"]

MAX_NAME: Final = 64
_SEPARATOR: Final = "."  # never in a code's random part (base64url: A-Z a-z 0-9 - _)


def check_session_name(value: object) -> str:
    """`value` if it is a session name: 1-64 printable characters, not only spaces; else
    ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("a session name must be a string")
    if not 1 <= len(value) <= MAX_NAME:
        raise ValueError(f"a session name must be 1-{MAX_NAME} characters (it has {len(value)})")
    if not value.isprintable():
        raise ValueError("a session name must be printable characters only (no control characters nor line breaks)")
    if not value.strip():
        raise ValueError("a session name must not be blank")
    return value


def code_with_name(code: str, name: str | None) -> str:
    """A one-time login code that carries the session's name (checked), or the code as it is."""
    if name is None:
        return code
    encoded = base64.urlsafe_b64encode(check_session_name(name).encode()).decode().rstrip("=")
    return code + _SEPARATOR + encoded


def name_in_code(code: str) -> str | None:
    """The session name a login code carries, or None (none, or not one `code_with_name` made)."""
    _, separator, encoded = code.partition(_SEPARATOR)
    if not separator:
        return None
    try:
        name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        return check_session_name(name)
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        return None
