"""Which of an account's calls `GET /v1/calls` lists, sans-I/O: the query string's filters,
checked, as one value the store reads (docs/protocol.md, Listing and searching calls).

Every filter is optional and they combine with AND. A value that is not what its filter takes is
a `FilterError` naming the parameter (REST answers 422): a hostile query string changes nothing
and costs one parse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from callstream.events import MAX_INT64
from callstream.search import Query, QueryError, parse_query

__all__ = ["FILTERS", "STATUSES", "CallFilter", "FilterError", "parse_filters"]

_T = TypeVar("_T")

STATUSES = ("live", "ended")
FILTERS = ("status", "started_after", "started_before", "sentiment_below", "q")


class FilterError(ValueError):
    """A filter's value cannot be used; the message names the parameter and says why."""


@dataclass(frozen=True, slots=True)
class CallFilter:
    """What a listed call must be. `None`: no condition.

    `started_after`/`started_before` are exclusive bounds (ms since the epoch) on `started_at`;
    `sentiment_below`: the mean score of the call's finals is below it (calls with no score are
    left out); `q`: a final of the call matches (`callstream.search`).
    """

    status: str | None = None
    started_after: int | None = None
    started_before: int | None = None
    sentiment_below: float | None = None
    q: Query | None = None
    # `metadata.K=V` (exact match) is given to `list_calls` beside these (`store.metadata_query`).

    @property
    def searching(self) -> bool:
        return self.q is not None


def parse_filters(params: Mapping[str, str]) -> CallFilter:
    """The filters of a query string (one value a name; the caller refuses repeated names)."""
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise FilterError("status must be live or ended")
    q = params.get("q")
    try:
        query = parse_query(q) if q is not None else None  # `q=` searches for nothing: refused
    except QueryError as exc:
        raise FilterError(str(exc)) from None
    return CallFilter(
        status=status,
        started_after=_ms(params, "started_after"),
        started_before=_ms(params, "started_before"),
        sentiment_below=_score(params, "sentiment_below"),
        q=query,
    )


def _ms(params: Mapping[str, str], name: str) -> int | None:
    wanted = f"a time in ms since the Unix epoch (an integer from 0 to {MAX_INT64})"
    return _given(params, name, int, lambda ms: 0 <= ms <= MAX_INT64, wanted)


def _score(params: Mapping[str, str], name: str) -> float | None:
    return _given(params, name, float, lambda x: math.isfinite(x) and -1 <= x <= 1, "a number from -1 to 1")


def _given(
    params: Mapping[str, str], name: str, parse: Callable[[str], _T], fits: Callable[[_T], bool], wanted: str
) -> _T | None:
    """`params[name]` parsed, None when absent or empty; `FilterError` when it is not `wanted`."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = parse(raw)
    except ValueError:
        raise FilterError(f"{name} must be {wanted}") from None
    if not fits(value):
        raise FilterError(f"{name} must be {wanted}")
    return value
