"""Searching calls over REST and the command line against real servers, on SQLite and PostgreSQL
(docs/protocol.md, Listing and searching calls)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import ServerProcess, ended, final, key_of, partial, publish


def calls(server: ServerProcess, key: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/calls", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [call["call_id"] for call in response.json()["calls"]]


def speak(server: ServerProcess, key: str, call_id: str, *events: dict[str, Any]) -> None:
    assert publish(server, key, call_id, list(events)).status_code == 202


def test_q_finds_calls_by_their_final_transcript_with_a_snippet(any_store: ServerProcess) -> None:
    key = key_of(any_store)
    speak(any_store, key, "billing", final("Hi, I was charged a late fee twice."), final("Can I get a refund?", "user"))
    speak(any_store, key, "billing", ended())
    time.sleep(0.01)  # each call starts later than the one before
    speak(any_store, key, "clinic", final("I'd like to book an appointment", "user"), partial("refund typed"))
    time.sleep(0.01)
    speak(any_store, key, "solar", final("Your refund is on its way", "agent"), ended())

    assert ids(calls(any_store, key, q="refund")) == ["solar", "billing"]
    assert ids(calls(any_store, key, q="refund", status="ended")) == ["solar", "billing"]
    assert ids(calls(any_store, key, q='"late fee"')) == ["billing"]
    assert ids(calls(any_store, key, q="appoint*")) == ["clinic"]
    hit = calls(any_store, key, q="REFUND", status="ended").json()["calls"][1]
    assert hit["snippet"] == "Can I get a refund?"
    assert hit["match"] == {"seq": 2, "speaker": "user", "marks": [[12, 18]]}
    assert hit["status"] == "ended"


def test_filters_combine_and_bad_values_are_422_with_a_reason(any_store: ServerProcess) -> None:
    key = key_of(any_store)
    speak(any_store, key, "happy", final("This is wonderful, thank you so much!"))
    time.sleep(0.01)  # a later start
    speak(any_store, key, "angry", final("This is terrible, I am furious and disappointed."), ended())
    angry = calls(any_store, key, q="this", sentiment_below="-0.2").json()["calls"]
    assert [c["call_id"] for c in angry] == ["angry"]
    started = angry[0]["started_at"]
    assert ids(calls(any_store, key, started_before=started)) == ["happy"]
    assert ids(calls(any_store, key, started_after=started - 1, status="ended")) == ["angry"]

    for params, reason in [
        ({"status": "dead"}, "status"),
        ({"started_after": "yesterday"}, "started_after"),
        ({"sentiment_below": "5"}, "sentiment_below"),
        ({"q": "!!!"}, "no word"),
        ({"q": ""}, "no word"),
        ({"q": " "}, "no word"),
        ({"q": "x" * 300}, "longer"),
    ]:
        response = calls(any_store, key, **params)
        assert response.status_code == 422, params
        assert reason in response.json()["error"]["message"]
    twice = httpx.get(f"{any_store.url}/v1/calls?q=a&q=b", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert twice.status_code == 422
    assert ids(calls(any_store, key)) == ["angry", "happy"]  # and the server goes on serving


def test_another_accounts_calls_never_appear_in_a_search(any_store: ServerProcess) -> None:
    mine, theirs = key_of(any_store), key_of(any_store)
    speak(any_store, theirs, "shared", final("the pineapple invoice"))
    speak(any_store, theirs, "theirs", final("pineapple again"))
    speak(any_store, mine, "shared", final("an apple invoice"))
    assert ids(calls(any_store, mine, q="pineapple")) == []
    assert ids(calls(any_store, mine, q="invoice")) == ["shared"]
    assert calls(any_store, mine, q="invoice").json()["calls"][0]["snippet"] == "an apple invoice"


def test_paging_a_search_holds_while_calls_are_inserted(any_store: ServerProcess) -> None:
    """Pages of 4 of a search while a producer starts matching calls all along: every call that
    matched at the first page comes once, none twice."""
    key = key_of(any_store)
    for n in range(18):
        speak(any_store, key, f"old{n:02}", final(f"my parcel number {n} is late"))
    first = ids(calls(any_store, key, q="parcel", limit=100))
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            speak(any_store, key, f"new{n:03}", final("another parcel"))
            speak(any_store, key, f"old{n % 18:02}", final("parcel still late"))
            n += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        seen: list[str] = []
        cursor = None
        while True:
            body = calls(any_store, key, q="parcel", limit=4, **({"cursor": cursor} if cursor else {})).json()
            seen += [c["call_id"] for c in body["calls"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        producer.join()
    assert len(seen) == len(set(seen))
    assert set(first) <= set(seen)
    assert {c for c in seen if c.startswith("old")} == set(first)


def test_the_command_line_searches_and_lists(any_store: ServerProcess) -> None:
    key = key_of(any_store)
    call_id = f"call_{uuid.uuid4().hex[:8]}"
    speak(any_store, key, call_id, final("Please waive the late fee"), ended())
    env = {"CALLSTREAM_URL": any_store.url, "CALLSTREAM_KEY": key, "COLUMNS": "200"}
    shown = any_store.cli("calls", "search", "late fee", "--status", "ended", env=env).stdout
    assert call_id in shown
    assert "Please waive the late fee" in shown
    as_json = orjson.loads(any_store.cli("calls", "search", "waive", "--json", env=env).stdout)
    assert [c["call_id"] for c in as_json["calls"]] == [call_id]
    assert as_json["calls"][0]["snippet"] == "Please waive the late fee"
    listed = orjson.loads(any_store.cli("calls", "list", "--json", env=env).stdout)
    assert [c["call_id"] for c in listed["calls"]] == [call_id]
    refused = any_store.cli("calls", "search", "!!!", env=env, check=False)
    assert refused.returncode == 1
    assert "no word" in refused.stderr
    for blank in ("", " "):
        nothing = any_store.cli("calls", "search", blank, env=env, check=False)
        assert nothing.returncode == 1, nothing.stdout
        assert len(nothing.stderr.strip().splitlines()) == 1
        assert "no word" in nothing.stderr
    bad = any_store.cli("calls", "search", "x", "--metadata", "novalue", env=env, check=False)
    assert bad.returncode == 2
    assert "K=V" in bad.stderr


@pytest.mark.parametrize("limit", ["0", "501"])
def test_a_search_limit_out_of_range_is_422(any_store: ServerProcess, limit: str) -> None:
    assert calls(any_store, key_of(any_store), q="x", limit=limit).status_code == 422
