"""Long histories, page by page (docs/protocol.md: `since` under Order, replay and what can be lost; `GET /v1/calls/{id}/events` under REST), against
real server processes on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, final, key_of, open_events, partial, publish, recv, send


def page(server: ServerProcess, key: str, call_id: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{server.url}/v1/calls/{call_id}/events",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def publish_all(server: ServerProcess, key: str, call_id: str, events: list[dict[str, Any]], batch: int = 200) -> None:
    for start in range(0, len(events), batch):
        response = publish(server, key, call_id, events[start : start + batch])
        assert response.status_code == 202, response.text


# ---- GET /v1/calls/{id}/events ------------------------------------------------------------------


def test_events_come_in_pages_that_follow_next_since(any_store: ServerProcess) -> None:
    """3,600 events, a third of them partials: pages of at most `limit` stored events in seq order,
    each naming the seq to ask from next, null on the last; the default page is 1,000."""
    key, call_id = key_of(any_store), f"call_{uuid.uuid4().hex[:12]}"
    events: list[dict[str, Any]] = []
    for i in range(1_200):
        events += [partial(f"wor {i}"), final(f"words {i}"), {"type": "agent.state", "data": {"state": "thinking"}}]
    publish_all(any_store, key, call_id, events)
    stored = [seq for seq in range(1, 3_601) if seq % 3 != 1]  # every seq but the partials'

    first = page(any_store, key, call_id).json()
    assert [e["seq"] for e in first["events"]] == stored[:1_000]
    assert first["next_since"] == stored[999]

    seen: list[int] = []
    since: int | None = 0
    pages = 0
    while since is not None:
        body = page(any_store, key, call_id, since=since, limit=700).json()
        seqs = [e["seq"] for e in body["events"]]
        assert 0 < len(seqs) <= 700
        assert all(e["type"] != "transcript.partial" and e["call_id"] == call_id for e in body["events"])
        assert body["next_since"] in (seqs[-1], None)
        seen += seqs
        since = body["next_since"]
        pages += 1
    assert seen == stored
    assert pages == 4  # 700 + 700 + 700 + 300

    everything = page(any_store, key, call_id, limit=10_000).json()
    assert ([e["seq"] for e in everything["events"]], everything["next_since"]) == (stored, None)
    exact = page(any_store, key, call_id, since=stored[-3], limit=2).json()  # ends on the last event
    assert ([e["seq"] for e in exact["events"]], exact["next_since"]) == (stored[-2:], None)
    past = page(any_store, key, call_id, since=stored[-1]).json()
    assert (past["events"], past["next_since"]) == ([], None)


@pytest.mark.parametrize("limit", ["0", "-1", "10001", "x", "1.5", ""])
def test_a_limit_out_of_range_is_refused(any_store: ServerProcess, limit: str) -> None:
    key, call_id = key_of(any_store), f"call_{uuid.uuid4().hex[:12]}"
    publish(any_store, key, call_id, final("hello"))
    response = page(any_store, key, call_id, limit=limit)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"]
    assert page(any_store, key, call_id, limit=1).status_code == 200  # and the node goes on


def test_another_accounts_call_answers_404_like_a_missing_one(any_store: ServerProcess) -> None:
    mine, theirs, call_id = key_of(any_store), key_of(any_store), f"call_{uuid.uuid4().hex[:12]}"
    publish(any_store, mine, call_id, final("secret"))
    foreign = page(any_store, theirs, call_id, limit=10)
    missing = page(any_store, theirs, call_id + "_nope", limit=10)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


# ---- a `since` replay of a long call, from the store --------------------------------------------


HISTORY = 20_000


def peak_rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_since_replay_of_a_long_call_streams_from_the_store_then_goes_live(
    fresh_server: ServerProcess, call_id: str
) -> None:
    """20,000 events of 1 KB (20 MB) that only the store holds (a fresh server process over the
    same data): `since=0` replays every one in order, while events published meanwhile follow with
    no gap and no duplicate; and the node reads the call a page at a time, never whole."""
    fresh_server.start()
    key = fresh_server.create_key("acme")
    note = "x" * 1_000
    old = [{"type": "agent.state", "data": {"state": "thinking", "note": f"{i} {note}"}} for i in range(HISTORY)]
    publish_all(fresh_server, key, call_id, old, batch=500)
    fresh_server.restart()
    before = peak_rss_kib(fresh_server)

    live_done = threading.Event()

    def publish_live() -> None:
        for i in range(20):
            assert publish(fresh_server, key, call_id, final(f"live {i}")).status_code == 202
        live_done.set()

    got: list[dict[str, Any]] = []
    async with await open_events(fresh_server, key, max_size=None) as ws:
        await send(ws, {"type": "subscribe", "call_id": call_id, "since": 0})
        publisher = threading.Thread(target=publish_live)
        publisher.start()
        subscribed: dict[str, Any] | None = None
        while len(got) < HISTORY + 20:
            message = await recv(ws, timeout=30)
            if message["type"] == "subscribed":
                subscribed = message
            else:
                got.append(message)
        await asyncio.to_thread(publisher.join)
    grown_mib = (peak_rss_kib(fresh_server) - before) / 1024
    assert subscribed is not None
    assert subscribed["data"]["status"] == "live"
    seqs = [m["seq"] for m in got]
    assert seqs == list(range(1, HISTORY + 21))
    assert [m["data"]["note"].split()[0] for m in got[:HISTORY]] == [str(i) for i in range(HISTORY)]
    assert all(m["type"] == "transcript.final" for m in got[HISTORY:])
    print(f"peak RSS grew {grown_mib:.1f} MiB during the replay of 20 MB of history")
    assert grown_mib < 40, f"the node's peak RSS grew {grown_mib:.1f} MiB: it read the whole call at once"
