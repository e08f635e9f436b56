"""Call metadata without I/O: what a patch may hold, how it merges, the `where` filter and the
list filter's query string."""

from __future__ import annotations

import math

import orjson
import pytest

from callstream import protocol as p
from callstream.events import EventInvalidError, check_payload
from callstream.metadata import (
    MAX_BYTES,
    MAX_KEYS,
    Metadata,
    MetadataError,
    check_patch,
    check_where,
    encoded_size,
    matches,
    merge,
    query_filter,
)


def test_a_patch_merges_and_null_removes_a_key() -> None:
    current: Metadata = {"agent": "ada", "campaign": "spring", "vip": True}
    merged = merge(current, {"campaign": "summer", "vip": None, "customer": "cus_1", "score": 4.5})
    assert merged == {"agent": "ada", "campaign": "summer", "customer": "cus_1", "score": 4.5}
    assert current == {"agent": "ada", "campaign": "spring", "vip": True}  # never changed in place


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ([], "must be an object"),
        ({"": "x"}, "keys must be 1-64 characters"),
        ({"a b": "x"}, "keys must be 1-64 characters"),
        ({"k" * 65: "x"}, "keys must be 1-64 characters"),
        ({"agent": {"name": "ada"}}, "values must be strings, finite numbers or booleans"),
        ({"tags": ["a"]}, "values must be strings, finite numbers or booleans"),
        ({"score": math.inf}, "values must be strings, finite numbers or booleans"),
        ({"score": math.nan}, "values must be strings, finite numbers or booleans"),
        ({"big": 2**64}, "values must be strings, finite numbers or booleans"),
        ({f"k{i}": i for i in range(MAX_KEYS + 1)}, f"at most {MAX_KEYS} keys"),
    ],
)
def test_a_bad_patch_is_refused_with_its_reason(patch: object, reason: str) -> None:
    with pytest.raises(MetadataError, match=reason):
        check_patch(patch)


def test_limits_hold_for_the_merged_metadata() -> None:
    full = {f"k{i}": i for i in range(MAX_KEYS)}
    assert merge(full, {"k0": None, "new": 1}).keys() == {*full, "new"} - {"k0"}  # one out, one in
    with pytest.raises(MetadataError, match=f"would hold {MAX_KEYS + 1} keys"):
        merge(full, {"one_more": 1})
    big = {"a": "x" * (MAX_BYTES - 20)}
    assert encoded_size(big) <= MAX_BYTES
    with pytest.raises(MetadataError, match=f"at most {MAX_BYTES}"):
        merge(big, {"b": "y" * 30})


def test_the_size_is_the_compact_json_the_call_keeps() -> None:
    metadata = {"agent": "ada", "n": 1.5, "vip": True}
    assert encoded_size(metadata) == len(orjson.dumps(metadata)) == len('{"agent":"ada","n":1.5,"vip":true}')


def test_any_event_may_carry_a_patch_and_call_started_needs_nothing_else() -> None:
    check_payload("call.started", {"metadata": {"agent": "ada", "from": "+15550100"}})
    check_payload("call.started", {})
    check_payload("agent.state", {"state": "thinking", "metadata": {"campaign": None}})
    with pytest.raises(EventInvalidError, match=r"data\.metadata\.agent: values must be"):
        check_payload("transcript.final", {"speaker": "user", "text": "hi", "metadata": {"agent": [1]}})
    with pytest.raises(EventInvalidError, match=r"data\.metadata must be an object"):
        check_payload("call.started", {"metadata": "spring"})


def test_the_server_s_own_metadata_event_cannot_be_published() -> None:
    with pytest.raises(EventInvalidError, match="cannot be published"):
        check_payload("call.metadata", {"metadata": {"a": 1}})


def test_where_matches_every_given_key_with_an_equal_value() -> None:
    wanted = check_where({"metadata": {"campaign": "spring", "tier": 2}})
    assert matches(wanted, {"campaign": "spring", "tier": 2, "agent": "ada"})
    assert matches(wanted, {"campaign": "spring", "tier": 2.0})
    assert not matches(wanted, {"campaign": "spring"})
    assert not matches(wanted, {"campaign": "summer", "tier": 2})
    assert not matches(wanted, None)
    assert not matches({"vip": True}, {"vip": 1})  # a boolean equals only a boolean
    assert not matches({"tier": 1}, {"tier": True})
    assert matches({"vip": True}, {"vip": True})


@pytest.mark.parametrize(
    "where",
    [
        {"metadata": {}},
        {"metadata": "spring"},
        {"metadata": {"campaign": None}},
        {"metadata": {"campaign": ["spring"]}},
        {"metadata": {"a b": "x"}},
        {"metadata": {"campaign": "spring"}, "status": "live"},
        {"campaign": "spring"},
        "campaign=spring",
    ],
)
def test_a_bad_where_is_an_invalid_message_on_the_socket(where: object) -> None:
    raw = orjson.dumps({"type": "subscribe", "call_id": "*", "where": where})
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_client_message(raw)
    assert caught.value.code == p.ErrorCode.INVALID_MESSAGE
    assert "where" in caught.value.message


def test_where_is_for_the_wildcard_subscription_only() -> None:
    good = p.parse_client_message(b'{"type":"subscribe","call_id":"*","where":{"metadata":{"campaign":"spring"}}}')
    assert isinstance(good, p.Subscribe)
    assert good.where == {"campaign": "spring"}
    with pytest.raises(p.ProtocolError, match="only allowed with call_id"):
        p.parse_client_message(b'{"type":"subscribe","call_id":"c1","where":{"metadata":{"campaign":"spring"}}}')


def test_the_list_filter_reads_metadata_pairs_of_the_query_string() -> None:
    params = [("status", "live"), ("metadata.campaign", "spring"), ("metadata.tier", "2"), ("limit", "5")]
    assert query_filter(params) == {"campaign": "spring", "tier": "2"}
    assert query_filter([("metadata.campaign", "a"), ("metadata.campaign", "a")]) == {"campaign": "a"}
    with pytest.raises(MetadataError, match="given twice"):
        query_filter([("metadata.campaign", "a"), ("metadata.campaign", "b")])
    with pytest.raises(MetadataError, match="keys must be"):
        query_filter([("metadata.", "a")])
