"""Hypothesis strategies for a hostile tenant: what a broken or malicious producer puts on the wire.

An example is a short list of `Action`s, each one REST request or one ingest frame, made of
events that are valid, valid but for one hostile field, or hostile through and through, mixed in
batches, with `call.ended` followed by more events. Values are extreme numbers, number literals
no float holds, deep and wide nesting, megabyte strings, lone surrogates, U+0000, bidi marks,
emoji and non-characters, and every JSON type in every field.

Bodies are encoded here, to the byte (`encode`), never by a JSON library that would refuse or
normalise them. Calls are named by `Pool` indices, resolved per example to fresh call ids (and
one index to the other tenant's call id, reused in the hostile account), so that a call ends and
then gets more events within one example. Shared by tests/e2e/test_hostile_tenant.py and
bench/hostile.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from hypothesis import strategies as st

from callstream.events import AGENT_STATES, END_STATUSES, PUBLISHABLE_TYPES

# Bodies stay under the 1 MiB REST body cap and the ingest frame cap; `encode`d sizes vary with
# escaping, so a huge string is at most a third of it.
MAX_BODY = 1024 * 1024
HUGE = 300_000
POOL_SIZE = 4  # fresh calls per example; index POOL_SIZE is the other tenant's call id
FIELDS = (
    "type",
    "data",
    "speaker",
    "text",
    "state",
    "name",
    "args",
    "result",
    "status",
    "duration_ms",
    "reason",
    "sentiment",
    "utterance_id",
    "tool_call_id",
    "is_final",
)


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: number literals no float holds, deep or wide nesting, bad JSON."""

    text: bytes


@dataclass(frozen=True)
class Pool:
    """The i-th call id of the example (`POOL_SIZE`: the other tenant's call id)."""

    index: int


@dataclass(frozen=True)
class Action:
    """One REST request (`call` in the URL, `body`) or one ingest frame (`body`, call ids inside)."""

    channel: Literal["rest", "ingest"]
    body: Any
    call: Pool | str = Pool(0)
    # Strings as raw UTF-8 (lone surrogates then make bytes that are not UTF-8) or as \u escapes;
    # ingest frames fall back to escapes, as a text frame must be UTF-8 (RFC 6455 §5.6).
    utf8: bool = True


def encode(value: Any, calls: list[str], utf8: bool = True) -> bytes:
    """`value` as JSON bytes, with `Raw` written verbatim and `Pool` resolved against `calls`.

    With `utf8`, strings go as raw UTF-8 and a lone surrogate becomes bytes that are not UTF-8;
    without, every non-ASCII character is a `\\u` escape (a lone surrogate: `"\\ud800"`).
    """
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:  # iterative: hostile nesting costs no stack here either
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, Raw):
            out.append(item.text)
        elif isinstance(item, Pool):
            out.append(json.dumps(calls[item.index]).encode())
        elif isinstance(item, str):
            out.append(json.dumps(item, ensure_ascii=not utf8).encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            parts: list[Any] = [b"{"]
            for i, (key, member) in enumerate(item.items()):
                parts += [b"," if i else b"", key, b":", member]
            stack.extend(reversed([*parts, b"}"]))
        elif isinstance(item, list):
            parts = [b"["]
            for i, member in enumerate(item):
                parts += [b"," if i else b"", member]
            stack.extend(reversed([*parts, b"]"]))
        else:  # None, bool, int (any size), float
            out.append(json.dumps(item).encode())
    return b"".join(out)


def url_path(call: Pool | str, calls: list[str]) -> str:
    """The publish path with the call id percent-encoded (any string, lone surrogates too)."""
    call_id = calls[call.index] if isinstance(call, Pool) else call
    return f"/v1/calls/{quote(call_id.encode('utf-8', 'surrogatepass'), safe='')}/events"


# ---- values ------------------------------------------------------------------------------------

EXTREME_NUMBERS = st.sampled_from(
    [
        1e308,
        -1e308,
        1.7976931348623157e308,
        5e-324,
        -5e-324,
        0.0,
        -0.0,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**30,
        -(10**30),
    ]
)
NUMBER_LITERALS = st.sampled_from(
    [
        b"1e400",
        b"-1e400",
        b"1e-400",
        b"1E+308",
        b"-0",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"0.1e999999999",
        b"1" * 400,
        b"-" + b"9" * 400,
        b"01",
        b"1.",
        b".5",
        b"+1",
        b"0x10",
    ]
).map(Raw)
# Characters that break naive text handling: NUL and controls, bidi overrides and marks, BOM,
# non-characters, lone surrogates (as escapes or as bytes that are not UTF-8), emoji (with
# joiners and skin tones: one glyph, many code points), combining marks, and plain letters.
ODD_CHARACTERS = (
    "\x00\x01\x1f\x7f\u0085\u200b\u200d\u200e\u200f\u202a\u202e\u2066\u2069\u2028\u2029\ufeff"
    "\ufffe\uffff\U0001fffe\U0010ffff\ud800\udbff\udc00\udfff\U0001f600\U0001f469\u200d\U0001f4bb"
    "\U0001f3fd\u0301\u0336\ufdd0é中aZ9 \"\\/\n\t"
)
odd_text = st.text(st.sampled_from(ODD_CHARACTERS) | st.characters(), max_size=24)


def _repeat(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


huge_sizes = st.sampled_from([10_000, 100_000, HUGE]) | st.integers(1_000, HUGE)
# Long speech: what VADER's rules (run on every final) cost most on: words, emojis, "but".
long_speech = st.builds(
    _repeat,
    st.sampled_from(["good ", "é bad but ", "\U0001f600 ", "not so great, but fine! ", "x y z good ", "טוב \u200f"]),
    huge_sizes,
)
huge_text = long_speech | st.builds(_repeat, st.text(st.sampled_from(ODD_CHARACTERS), min_size=1, max_size=6), huge_sizes)


def _deep(depth: int, kind: str) -> Raw:
    open_, close = (b'{"a":', b"}") if kind == "object" else (b"[", b"]")
    return Raw(open_ * depth + b"1" + close * depth)


deep_values = st.builds(
    _deep, st.sampled_from([31, 32, 33, 64, 255, 256, 1023, 1024, 1025, 5000]), st.sampled_from(["object", "array"])
)


def _wide(width: int, kind: str) -> Raw:
    if kind == "object":
        return Raw(b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(width)) + b"}")
    return Raw(b"[" + b",".join(b"%d" % i for i in range(width)) + b"]")


wide_values = st.builds(_wide, st.sampled_from([1_000, 20_000, 60_000]), st.sampled_from(["object", "array"]))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    EXTREME_NUMBERS,
    NUMBER_LITERALS,
    odd_text,
)
# Any JSON value, small, built of hostile scalars (and keys).
small_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=8,
)
hostile_values = st.one_of(small_values, deep_values, wide_values, huge_text)


# ---- events -------------------------------------------------------------------------------------

speakers = st.sampled_from(["user", "agent"])
short_text = st.text(max_size=30)
valid_events = st.one_of(
    st.builds(
        lambda kind, speaker, text: {"type": kind, "data": {"speaker": speaker, "text": text}},
        st.sampled_from(["transcript.partial", "transcript.final"]),
        speakers,
        short_text,
    ),
    st.builds(lambda state: {"type": "agent.state", "data": {"state": state}}, st.sampled_from(sorted(AGENT_STATES))),
    st.builds(
        lambda name, args: {"type": "function.call", "data": {"name": name, "args": args, "tool_call_id": "t1"}},
        short_text,
        st.dictionaries(st.text(max_size=6), st.integers(-1000, 1000) | short_text, max_size=3),
    ),
    st.builds(
        lambda name, result: {"type": "function.result", "data": {"name": name, "result": result}},
        short_text,
        st.none() | short_text | st.integers(-1000, 1000),
    ),
    st.builds(
        lambda status, duration: {"type": "call.ended", "data": {"status": status, "duration_ms": duration}},
        st.sampled_from(sorted(END_STATUSES)),
        st.integers(0, 10**9),
    ),
)


def _with(event: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    """`event` with one field hostile (`type` and `data` at the top, the others inside `data`)."""
    if field in ("type", "data"):
        return {**event, field: value}
    return {**event, "data": {**event["data"], field: value}}


one_bad_field = st.builds(_with, valid_events, st.sampled_from(FIELDS), hostile_values)
# Valid, and still hostile: a transcript as long as a body may carry, in any script.
long_transcripts = st.builds(
    lambda kind, text: {"type": kind, "data": {"speaker": "user", "text": text}},
    st.sampled_from(["transcript.final", "transcript.final", "transcript.partial"]),
    long_speech | huge_text,
)
wholly_hostile = st.fixed_dictionaries(
    {
        "type": st.sampled_from(sorted(PUBLISHABLE_TYPES | {"error", "subscribed", "ack", ""})) | small_values,
        "data": small_values,
    }
)
any_event = st.one_of(valid_events, valid_events, long_transcripts, one_bad_field, one_bad_field, wholly_hostile)
refs = st.one_of(st.none(), st.integers(0, 10**6), small_values)
pool_calls = st.integers(0, POOL_SIZE).map(Pool)
calls = st.one_of(
    pool_calls,
    pool_calls,
    odd_text,
    st.sampled_from(["", ".", "..", "a/b", "a?b", "a#b", "%00", "x" * 128, "x" * 129, "*"]),
)


def _ended_then_more(before: list[dict[str, Any]], ended: dict[str, Any], after: list[dict[str, Any]]) -> Any:
    return [*before, ended, *after]


ended_status = st.sampled_from(sorted(END_STATUSES))
ended_event = st.builds(lambda s: {"type": "call.ended", "data": {"status": s, "duration_ms": 1}}, ended_status)
# A batch that ends its call and goes on (or, split over actions, a call ended then written to).
ended_then_more = st.builds(
    _ended_then_more, st.lists(valid_events, max_size=2), ended_event, st.lists(any_event, min_size=1, max_size=2)
)
rest_bodies = st.one_of(
    long_transcripts,
    any_event,
    st.lists(any_event, min_size=1, max_size=6),
    ended_then_more,
    st.lists(any_event, max_size=0),
    hostile_values,
    st.binary(max_size=64).map(Raw),
)


def _framed(event: Any, call: Any, ref: Any, with_ref: bool) -> Any:
    """An ingest item: the event with its `call_id` (and a `ref`, maybe hostile)."""
    if not isinstance(event, dict):
        return event
    framed = {**event, "call_id": call}
    if with_ref:
        framed["ref"] = ref
    return framed


ingest_items = st.builds(_framed, any_event | small_values, calls, refs, st.booleans())
ingest_bodies = st.one_of(
    ingest_items,
    st.lists(ingest_items, min_size=1, max_size=6),
    st.builds(
        lambda events, call: [_framed(e, call, f"r{i}", True) for i, e in enumerate(events)],
        ended_then_more,
        pool_calls,
    ),
    st.lists(ingest_items, max_size=0),
    hostile_values,
)
actions = st.one_of(
    st.builds(Action, st.just("rest"), long_transcripts, pool_calls, st.booleans()),
    st.builds(Action, st.just("rest"), rest_bodies, calls, st.booleans()),
    st.builds(Action, st.just("ingest"), ingest_bodies, st.just(Pool(0)), st.booleans()),
)
examples = st.lists(actions, min_size=1, max_size=4)
