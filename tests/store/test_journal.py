"""The embedded store's journal (store/journal.py): a commit is durable when `append`
returns, a crashed node's journal is read back by the next one, exactly once, and a live node's
journal is never another node's to take."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from callstream.store import SqlStore, StoreUnavailableError
from callstream.store import sql as sql_module
from callstream.store.chunks import by_call
from callstream.store.fold_process import read_records
from callstream.store.journal import EventJournal, JournalRow, journal_rows
from tests.helpers import fill_next_journal_file
from tests.store.test_journal_rows import logged_rows
from tests.store.test_store_contract import event

REPO = Path(__file__).resolve().parents[2]


def journal_files(db_path: Path) -> list[Path]:
    return sorted(db_path.parent.glob(db_path.name + "-events.*"))


def rows_for(*seqs: int) -> list[JournalRow]:
    rows = journal_rows(by_call([event("acme", "c1", seq) for seq in seqs]))
    assert rows is not None
    return rows


def test_a_torn_last_record_is_dropped_and_the_records_before_it_kept(tmp_path: Path) -> None:
    journal = EventJournal(str(tmp_path / "db"))
    journal.append(rows_for(1))
    journal.append(rows_for(2))
    [path] = journal_files(tmp_path / "db")
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])  # the OS crashed mid-write of the second record
    assert [tuple(row) for row in read_records(str(path))] == rows_for(1)
    journal.close()


def test_a_record_whose_bytes_changed_ends_the_file(tmp_path: Path) -> None:
    journal = EventJournal(str(tmp_path / "db"))
    journal.append(rows_for(1))
    journal.append(rows_for(2))
    journal.close()
    [path] = journal_files(tmp_path / "db")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [tuple(row) for row in read_records(str(path))] == rows_for(1)


async def test_a_commit_is_in_the_journal_when_it_returns(embedded_store: SqlStore, db_path: Path) -> None:
    await embedded_store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    assert logged_rows(db_path) == 2
    assert [e.seq for e in await embedded_store.events("acme", "c1")] == [1]  # the read folded it
    assert journal_files(db_path) == []


NODE = """
import asyncio, sys
from callstream.events import Event
from callstream.store import SqlStore, StoreUnavailableError

async def main() -> None:
    store = SqlStore("sqlite+aiosqlite:///" + sys.argv[1])
    await store.start()
    final = {"speaker": "user", "text": "great", "is_final": True, "sentiment": {"score": 0.5}}
    await store.append([Event("acme", "c1", 1, 1000, "transcript.final", final),
                        Event("acme", "c2", 1, 1000, "agent.state", {"state": "thinking"})])
    await store.append([Event("acme", "c1", 2, 2000, "transcript.partial",
                              {"speaker": "user", "text": "he", "is_final": False})])
    print("appended", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def kill_a_node_after_its_appends(db_path: Path) -> None:
    """Run `NODE` on the database and SIGKILL it once its appends returned: they are journaled only."""
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NODE, str(db_path), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert node.stdout is not None
        assert (await asyncio.wait_for(node.stdout.readline(), 30)).strip() == b"appended"
    finally:
        node.send_signal(signal.SIGKILL)
        await node.wait()
    assert logged_rows(db_path) == 3  # journaled, never folded


@contextlib.contextmanager
def write_locked(db_path: Path) -> Iterator[None]:
    """The database's write lock, held elsewhere: every fold waits for it (reads do not)."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()


async def test_a_node_killed_before_any_fold_loses_no_acknowledged_event(db_path: Path) -> None:
    await kill_a_node_after_its_appends(db_path)
    store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
    await store.start()
    try:
        state = await store.call_state("acme", "c1")
        assert state is not None
        assert state.last_seq == 2  # the partial's seq is not handed out again
        assert [e.seq for e in await store.events("acme", "c1")] == [1]
        assert [e.seq for e in await store.events("acme", "c2")] == [1]
        call = await store.get_call("acme", "c1")
        assert call is not None
        assert call.sentiment == 0.5
    finally:
        await store.close()
    assert journal_files(db_path) == []


async def test_after_a_crash_a_call_looked_up_during_the_first_fold_keeps_its_seqs(db_path: Path) -> None:
    """The first read after a crash folds the journal the dead node left; a call the broker looks
    up meanwhile (its first event since the restart) must wait for that fold, or its seqs would
    start again from 1 and the events that reused them would be lost."""
    await kill_a_node_after_its_appends(db_path)
    store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
    await store.start()
    try:
        with write_locked(db_path):
            first = asyncio.create_task(store.events("acme", "c2"))  # takes the journal, its fold waits
            await asyncio.sleep(0.2)
            state = asyncio.create_task(store.call_state("acme", "c1"))
            await asyncio.sleep(0.2)
            assert not state.done(), f"answered before the fold of its rows: {state.result()}"
        found = await asyncio.wait_for(state, 10)
        assert found is not None
        assert found.last_seq == 2
        assert [e.seq for e in await first] == [1]
    finally:
        await store.close()


@pytest.mark.parametrize("that_fold", ["commits", "is_cancelled"])
async def test_a_read_waits_for_the_fold_in_flight_that_took_its_rows(
    embedded_store: SqlStore, db_path: Path, that_fold: str
) -> None:
    """A read with nothing left in the journal to fold still waits for the fold that took it:
    REST, a replay from the store and the ended-call commit's hooks would miss events otherwise.
    When that fold does not commit (its read was cancelled), the rows are folded for this read."""
    await embedded_store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    with write_locked(db_path):
        first = asyncio.create_task(embedded_store.events("acme", "c2"))
        await asyncio.sleep(0.2)
        read = asyncio.create_task(embedded_store.events("acme", "c1"))
        await asyncio.sleep(0.2)
        assert not read.done(), f"answered before the fold of its rows: {read.result()}"
        if that_fold == "is_cancelled":
            first.cancel()
            await asyncio.sleep(0.2)
            assert not read.done(), f"answered before the fold of its rows: {read.result()}"
    assert [e.seq for e in await asyncio.wait_for(read, 10)] == [1]
    if that_fold == "commits":
        assert [e.seq for e in await first] == [1]


async def test_a_journal_folded_but_not_deleted_before_a_crash_is_not_counted_twice(db_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    store = SqlStore(url)
    await store.start()
    await store.append([event("acme", "c1", 1, "transcript.final", sentiment={"score": 0.5}), event("acme", "c2", 1)])
    [path] = journal_files(db_path)
    kept = path.with_suffix(".kept")
    shutil.copyfile(path, kept)
    assert [e.seq for e in await store.events("acme", "c1")] == [1]  # folded, file deleted
    await store.close()
    kept.rename(path)  # as if the node had died between the fold's commit and the deletion

    again = SqlStore(url)
    await again.start()
    try:
        call = await again.get_call("acme", "c1")
        assert call is not None
        assert (call.last_seq, call.sentiment) == (1, 0.5)  # not 1.0: the file was not folded twice
        assert [e.seq for e in await again.events("acme", "c1")] == [1]
        assert journal_files(db_path) == []
    finally:
        await again.close()


async def test_a_node_started_beside_a_live_one_leaves_its_journal_alone(db_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    first = SqlStore(url)
    await first.start()
    await first.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    second = SqlStore(url)
    await second.start()
    try:
        assert [e.seq for e in await second.events("acme", "c1")] == []  # not folded by the second
        assert len(journal_files(db_path)) == 1
        assert [e.seq for e in await first.events("acme", "c1")] == [1]
    finally:
        await second.close()
        await first.close()


async def test_a_node_that_ends_cleanly_leaves_no_journal(db_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
    await store.start()
    await store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    await store.close()
    assert journal_files(db_path) == []
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT call_id, last_seq FROM calls ORDER BY call_id").fetchall() == [("c1", 1), ("c2", 1)]


async def test_a_journal_write_the_disk_refuses_fails_that_commit_only(embedded_store: SqlStore, db_path: Path) -> None:
    """A full disk (here /dev/full under the journal's next file name): the producer is told its
    events were not stored, the node keeps serving, and later commits go to a new file."""
    fill_next_journal_file(embedded_store, db_path)

    with pytest.raises(StoreUnavailableError, match="could not commit"):
        await embedded_store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    await embedded_store.append([event("acme", "c1", 2), event("acme", "c2", 2)])

    assert embedded_store.healthy
    assert [e.seq for e in await embedded_store.events("acme", "c1")] == [2]


async def test_a_read_waiting_for_a_fold_still_gets_its_events_when_the_writer_stops(
    embedded_store: SqlStore,
) -> None:
    """Reads fold by themselves, beside the writer: a read gets its events even when the writer
    has stopped (the store is closing)."""
    await embedded_store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    read = asyncio.create_task(embedded_store.events("acme", "c1"))
    await asyncio.sleep(0)
    writer = embedded_store._writer
    assert writer is not None
    writer.cancel()
    assert [e.seq for e in await asyncio.wait_for(read, 10)] == [1]


async def test_commits_to_the_journal_do_not_wait_for_a_fold_in_flight(embedded_store: SqlStore, db_path: Path) -> None:
    """The fan-out waits for its commit; a fold held up by the database must not hold it up too."""
    await embedded_store.append([event("acme", "c1", 1), event("acme", "c2", 1)])
    with write_locked(db_path):
        read = asyncio.create_task(embedded_store.events("acme", "c1"))  # its fold waits for the lock
        await asyncio.sleep(0.2)
        assert not read.done()
        await asyncio.wait_for(embedded_store.append([event("acme", "c1", 2), event("acme", "c2", 2)]), 2)
    assert [e.seq for e in await read] == [1]
    assert [e.seq for e in await embedded_store.events("acme", "c1")] == [1, 2]


async def test_a_journal_the_writer_has_not_folded_for_a_while_makes_commits_wait(
    embedded_store: SqlStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node taking events faster than its writer files them slows its producers down (their
    acks wait for the fold) instead of growing a journal every read would then wait for."""
    monkeypatch.setattr(sql_module, "JOURNAL_MAX_BYTES", 4096)
    with write_locked(db_path):
        await embedded_store.append([event("acme", "c1", 1)])  # below the bound: no wait
        big = [event("acme", "c1", seq, "transcript.final", text="x" * 100) for seq in range(2, 60)]
        commit = embedded_store.append(big)
        await asyncio.sleep(0.5)
        assert not commit.done()  # over the bound: this commit waits for the fold it started
    await asyncio.wait_for(commit, 10)
    assert [e.seq for e in await embedded_store.events("acme", "c1")] == list(range(1, 60))
