"""Call metadata, without I/O: what a patch may hold, how it merges, and the live `where` filter.

A call's metadata is a flat object of scalars (agent, from, to, direction, campaign, customer, or
the producer's own keys). Producers set it with `data.metadata` on any event (`call.started`
first of all) and `PATCH /v1/calls/{id}`; each patch merges into what the call holds, a key set
to null removes it. The limits hold for the merged result, so they are checked where the merge
happens (the broker, atomically with sequencing) and a patch that would pass them changes
nothing. Keys are restricted to the characters of a call id: they travel in URLs
(`GET /v1/calls?metadata.K=V`) and in JSON paths of the store's queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

MAX_KEYS: Final = 32
MAX_KEY_CHARS: Final = 64
MAX_BYTES: Final = 4096  # the merged metadata as compact JSON (`encoded_size`)
_INT64: Final = 2**63
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")

Scalar = str | int | float | bool
Metadata = dict[str, Scalar]
Patch = dict[str, Scalar | None]


class MetadataError(ValueError):
    """A patch or a filter breaks the metadata's rules; the message says which key and why."""


def _check_key(key: object, path: str) -> str:
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        raise MetadataError(f"{path}: keys must be 1-{MAX_KEY_CHARS} characters of A-Z a-z 0-9 _ . : -")
    return key


def _is_scalar(value: object) -> bool:
    """A string, a boolean, a 64-bit integer or a finite number."""
    if isinstance(value, str | bool):
        return "\x00" not in value if isinstance(value, str) else True
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    return isinstance(value, float) and math.isfinite(value)


def check_patch(value: object, path: str = "metadata") -> Patch:
    """`value` as a patch: an object of at most `MAX_KEYS` keys whose values are scalars or null
    (null removes the key); raises MetadataError."""
    if not isinstance(value, dict):
        raise MetadataError(f"{path} must be an object")
    if len(value) > MAX_KEYS:
        raise MetadataError(f"{path} holds at most {MAX_KEYS} keys, not {len(value)}")
    for key, item in value.items():
        _check_key(key, path)
        if item is not None and not _is_scalar(item):
            raise MetadataError(
                f"{path}.{key}: values must be strings, finite numbers or booleans (null removes the key)"
            )
    return value


def encoded_size(metadata: Mapping[str, Any]) -> int:
    """Bytes of the metadata as compact JSON: what `MAX_BYTES` bounds."""
    return len(orjson.dumps(metadata))


def merge(current: Mapping[str, Scalar] | None, patch: Patch) -> Metadata:
    """A new object: `current` with `patch` applied (null removes). Raises MetadataError when the
    result would pass `MAX_KEYS` or `MAX_BYTES`; `current` is never changed."""
    merged: Metadata = dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_KEYS:
        raise MetadataError(f"the call's metadata would hold {len(merged)} keys; at most {MAX_KEYS}")
    size = encoded_size(merged)
    if size > MAX_BYTES:
        raise MetadataError(f"the call's metadata would take {size} bytes as JSON; at most {MAX_BYTES}")
    return merged


# ---- the live filter: `{"type":"subscribe","call_id":"*","where":{"metadata":{…}}}` ----------


def check_where(value: object) -> Metadata:
    """A subscription's `where`: `{"metadata": {K: V, …}}` with 1 to `MAX_KEYS` scalar values.
    Returns the metadata to match; raises MetadataError."""
    if not isinstance(value, dict) or set(value) != {"metadata"}:
        raise MetadataError('where must be {"metadata": {key: value, ...}}')
    wanted = value["metadata"]
    if not isinstance(wanted, dict) or not wanted:
        raise MetadataError("where.metadata must be a non-empty object")
    if len(wanted) > MAX_KEYS:
        raise MetadataError(f"where.metadata holds at most {MAX_KEYS} keys")
    for key, item in wanted.items():
        _check_key(key, "where.metadata")
        if not _is_scalar(item):
            raise MetadataError(f"where.metadata.{key}: values must be strings, finite numbers or booleans")
    return wanted


def matches(wanted: Mapping[str, Scalar], metadata: Mapping[str, Scalar] | None) -> bool:
    """Whether `metadata` holds every key of `wanted` with an equal value (a boolean equals only
    a boolean: `true` is not `1`)."""
    if metadata is None:
        return False
    for key, value in wanted.items():
        held = metadata.get(key)
        if held is None or held != value or isinstance(held, bool) is not isinstance(value, bool):
            return False
    return True


# ---- `GET /v1/calls?metadata.K=V` --------------------------------------------------------------

QUERY_PREFIX: Final = "metadata."


def query_filter(params: list[tuple[str, str]]) -> dict[str, str]:
    """The `metadata.K=V` pairs of a query string (every one must match: AND); raises
    MetadataError for a bad key or the same key twice."""
    wanted: dict[str, str] = {}
    for name, value in params:
        if not name.startswith(QUERY_PREFIX):
            continue
        key = _check_key(name[len(QUERY_PREFIX) :], "metadata filter")
        if key in wanted and wanted[key] != value:
            raise MetadataError(f"metadata.{key} is given twice with different values; no call matches both")
        wanted[key] = value
    if len(wanted) > MAX_KEYS:
        raise MetadataError(f"at most {MAX_KEYS} metadata filters")
    return wanted
