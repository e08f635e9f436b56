"""`GET /v1/calls?metadata.K=V` in SQL: conditions on the calls row's metadata (JSON text).

A query string carries text, the metadata holds strings, numbers and booleans: V matches the
string V, the number V reads as, or the boolean `true` / `false`. Keys are checked to
`metadata.KEY_PATTERN` before they get here, so they sit in a JSON path as they are. No index:
the conditions narrow the account's calls in the order of `started_at` (the list's own index),
which the list pages through anyway.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from callstream.store import tables as t


def metadata_filters(dialect: str, wanted: dict[str, str]) -> list[Any]:
    """`wanted` (key → text) as conditions on the calls row, one per key (AND)."""
    column = t.calls.c["metadata"]
    out: list[Any] = []
    for key, text in wanted.items():
        number = _number_of(text)
        if dialect == "postgresql":
            value = sa.cast(column, JSONB)[key]
            candidates = [sa.cast(sa.literal(orjson.dumps(text).decode()), JSONB)]
            if number is not None:
                candidates.append(sa.cast(sa.literal(orjson.dumps(number).decode()), JSONB))
            if text in ("true", "false"):
                candidates.append(sa.cast(sa.literal(text), JSONB))
            out.append(sa.or_(*(value == candidate for candidate in candidates)))
            continue
        path = f'$."{key}"'
        kind, value = sa.func.json_type(column, path), sa.func.json_extract(column, path)
        options = [sa.and_(kind == "text", value == text)]
        if number is not None:
            options.append(sa.and_(kind.in_(["integer", "real"]), value == number))
        if text in ("true", "false"):
            options.append(kind == text)
        out.append(sa.or_(*options))
    return out


def _number_of(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
