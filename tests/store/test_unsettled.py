"""After an outage the store stores nothing newer of a call before the events it failed to take
(docs/protocol.md, Consistency): with `on_failure` set, a call whose commit failed is unsettled,
its later appends fail even once the store is back, and it takes appends again once the events
it missed were appended again (`again=True`) and `settle` was called. Every other call goes on.

The outage is real: the embedded store's journal write fails as on a full disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from callstream.events import Event
from callstream.store import CallUnsettledError, SqlStore, StoreUnavailableError
from tests.helpers import fill_next_journal_file
from tests.store.test_store_contract import event


def seqs(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.call_id, e.seq) for e in events]


async def test_a_call_whose_commit_failed_takes_nothing_newer_until_settled(
    embedded_store: SqlStore, db_path: Path, account: str
) -> None:
    store = embedded_store
    stored: list[Event] = []
    lost: list[Event] = []
    store.on_commit, store.on_failure = stored.extend, lost.extend
    fill_next_journal_file(store, db_path)

    with pytest.raises(StoreUnavailableError):
        await store.append([event(account, "c1", 1), event(account, "c2", 1)])
    assert seqs(lost) == [("c1", 1), ("c2", 1)]
    assert store.unsettled == {(account, "c1"), (account, "c2")}

    with pytest.raises(CallUnsettledError):  # the disk is back, but seq 1 is not stored yet
        await store.append([event(account, "c1", 2)])
    await store.append([event(account, "c3", 1)])  # other calls go on
    assert seqs(lost)[-1] == ("c1", 2)  # refused too: a repair stores it with the others
    assert seqs(stored) == [("c3", 1)]

    await store.append([event(account, "c1", 1), event(account, "c1", 2)], again=True)
    store.settle(account, "c1")
    await store.append([event(account, "c1", 3)])
    assert [e.seq for e in await store.events(account, "c1")] == [1, 2, 3]
    assert seqs(stored)[-3:] == [("c1", 1), ("c1", 2), ("c1", 3)]
    assert store.unsettled == {(account, "c2")}
    with pytest.raises(CallUnsettledError):
        await store.append([event(account, "c2", 2)])

async def test_without_on_failure_a_failed_commit_holds_nothing_back(
    embedded_store: SqlStore, db_path: Path, account: str
) -> None:
    fill_next_journal_file(embedded_store, db_path)
    with pytest.raises(StoreUnavailableError):
        await embedded_store.append([event(account, "c1", 1)])
    await embedded_store.append([event(account, "c1", 2)])
    assert embedded_store.unsettled == set()
