"""The embedded store's writer process, seen from the node: a failed fold is that read's failure, not
the node's, and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from callstream.events import Event
from callstream.store import SqlStore, StoreUnavailableError, fold_process
from tests.store.test_store_contract import event


def writer_processes() -> list[int]:
    """This test process's children that run the store's writer script."""
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                pids += [int(pid) for pid in fh.read().split()]
        except FileNotFoundError:  # the thread ended after the listing; its children moved to another
            continue
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"fold_process.py" in fh.read():
                    found.append(pid)
        except FileNotFoundError:  # already reaped
            continue
    return found


@pytest.fixture
def store(embedded_store: SqlStore) -> SqlStore:
    return embedded_store


def block(call_id: str, k: int) -> list[Event]:
    """The k-th commit of a call (seqs 4k-3 … 4k): journaled, it reaches the writer process with
    the next fold (a read, the periodic one, or a full journal)."""
    return [event("acme", call_id, seq) for seq in range((k - 1) * 4 + 1, k * 4 + 1)]


def seqs_of(*ks: int) -> list[int]:
    return [e.seq for k in ks for e in block("c", k)]


def process_state(pid: int) -> str:
    """`R`, `S`, `T` (stopped) …: the state /proc gives for `pid`."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def started_writer(store: SqlStore) -> int:
    """The writer process's pid, once a fold (here a read's) has started it."""
    await store.events("acme", "c1")
    [pid] = writer_processes()
    return pid


async def test_a_killed_writer_loses_nothing_and_is_replaced(store: SqlStore) -> None:
    await store.append(block("c1", 1))
    pid = await started_writer(store)
    os.kill(pid, signal.SIGKILL)

    await store.append(block("c1", 2))  # journaled: the writer's death does not concern it
    # Whether the node notices the death before it sends (a new writer folds) or on the pipe (the
    # read fails, the rows stay in the journal), nothing is lost.
    with contextlib.suppress(StoreUnavailableError):
        await store.events("acme", "c1")
    await store.append(block("c1", 3))
    assert store.healthy
    assert [e.seq for e in await store.events("acme", "c1")] == seqs_of(1, 2, 3)
    assert pid not in writer_processes()


async def test_a_writer_that_exits_mid_fold_fails_that_read_only(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append(block("c1", 1))
    await started_writer(store)
    for pid in writer_processes():  # the next writer started is one that reads a request and exits
        os.kill(pid, signal.SIGKILL)
    quitter = tmp_path / "quitter.py"
    quitter.write_text("import sys\nsys.stdin.buffer.read(1)\n")
    monkeypatch.setattr(fold_process, "__file__", str(quitter))

    await store.append(block("c1", 2))
    with pytest.raises(StoreUnavailableError, match="fold"):
        await store.events("acme", "c1")

    monkeypatch.undo()
    await store.append(block("c1", 3))
    assert store.healthy
    assert [e.seq for e in await store.events("acme", "c1")] == seqs_of(1, 2, 3)


async def test_a_fold_the_database_refuses_for_one_call_files_the_others_and_keeps_serving(
    store: SqlStore, db_path: Path
) -> None:
    await store.append(block("c1", 1))
    assert [e.seq for e in await store.events("acme", "c1")] == seqs_of(1)
    await store.append([event("acme", "c3", 1, "transcript.final", sentiment={"score": 0.5})])
    await store.append([*(event("acme", "c1", seq) for seq in range(5, 10)), *block("c2", 1)])
    with sqlite3.connect(db_path) as db:  # refuses c2's calls upsert, the last statement of its rows
        db.execute("CREATE TRIGGER no BEFORE INSERT ON calls WHEN NEW.call_id = 'c2' BEGIN SELECT RAISE(ABORT, 'no'); END")

    assert [e.seq for e in await store.events("acme", "c1")] == [*seqs_of(1), 5, 6, 7, 8, 9]
    assert store.call_failed("acme", "c2")
    with sqlite3.connect(db_path) as db:  # c2's chunk rolled back with its calls row
        assert db.execute("SELECT call_id FROM event_chunks WHERE call_id = 'c2'").fetchall() == []
        db.execute("DROP TRIGGER no")
    call = await store.get_call("acme", "c3")
    assert call is not None
    assert (call.last_seq, call.sentiment) == (1, 0.5)  # folded once, not once per attempt
    await store.append(block("c1", 10))
    assert [e.seq for e in await store.events("acme", "c1")][-1] == 40  # the writer keeps filing


async def test_a_fold_the_database_refuses_fails_the_read_and_loses_nothing(store: SqlStore, db_path: Path) -> None:
    await store.append([event("acme", "c1", 1), event("acme", "c2", 1)])  # logged, not folded yet
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TRIGGER no BEFORE INSERT ON event_chunks BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        db.execute("CREATE TRIGGER no_meta BEFORE UPDATE ON meta BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        db.execute("CREATE TRIGGER no_new_meta BEFORE INSERT ON meta BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    with pytest.raises(StoreUnavailableError, match="fold"):
        await store.events("acme", "c1")
    with sqlite3.connect(db_path) as db:
        for trigger in ("no", "no_meta", "no_new_meta"):
            db.execute(f"DROP TRIGGER {trigger}")
    assert [e.seq for e in await store.events("acme", "c1")] == [1]
    assert [e.seq for e in await store.events("acme", "c2")] == [1]


async def test_the_writer_process_ends_with_the_store(db_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
    await store.start()
    await store.append(block("c1", 1))
    await started_writer(store)
    await store.close()
    assert writer_processes() == []


async def test_the_writer_outlives_the_signals_that_drain_the_node(store: SqlStore) -> None:
    """Ctrl-C (the terminal's process group) or a service manager's SIGTERM must not kill the
    writer while the node drains into it: it ends when the node closes its pipe. Nor may the
    terminal stop it (SIGTTOU: a background group writing to a terminal set to `tostop`)."""
    await store.append(block("c1", 1))
    pid = await started_writer(store)
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGTTOU)
    await asyncio.sleep(0.2)
    state = process_state(pid)
    if state == "T":
        os.kill(pid, signal.SIGCONT)
    assert state != "T", "SIGTTOU stopped the writer"
    await store.append(block("c1", 2))
    assert writer_processes() == [pid]
    assert [e.seq for e in await store.events("acme", "c1")] == seqs_of(1, 2)


@pytest.mark.parametrize("run", [uvloop.run, asyncio.run], ids=["uvloop", "asyncio"])
def test_the_terminals_ctrl_c_never_reaches_the_writer_which_stays_in_the_nodes_session(
    db_path: Path, run: Callable[[Coroutine[Any, Any, tuple[int, int, int]]], tuple[int, int, int]]
) -> None:
    """The writer runs in a process group of its own: Ctrl-C, sent to the terminal's foreground
    group, reaches the node alone, even while the writer's interpreter is still starting (before
    it can ignore SIGINT, a Ctrl-C then printed "Fatal Python error: init_import_site"). It stays
    in the node's session: where Linux schedules by session (autogroup), a session of its own
    would take an equal share of a core with the node whatever its nice. On uvloop, the node's
    own loop, whose subprocesses take fewer options than asyncio's, and on asyncio's."""

    async def writer_group_and_session() -> tuple[int, int, int]:
        store = SqlStore(f"sqlite+aiosqlite:///{db_path}")
        await store.start()
        try:
            await store.append(block("c1", 1))
            pid = await started_writer(store)
            return os.getpgid(pid), os.getsid(pid), pid
        finally:
            await store.close()

    group, session, pid = run(writer_group_and_session())
    assert group == pid  # it leads a group of its own
    assert session == os.getsid(0)


async def test_the_database_file_itself_holds_the_events_within_seconds(store: SqlStore, db_path: Path) -> None:
    """Checkpoints run beside the writer (not inside a commit), and often: a copy of the database
    file alone, without its write-ahead log, soon has what was committed."""
    await store.append([event("acme", "c1", seq) for seq in range(1, 51)])
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        copy = db_path.with_name("copy.db")
        shutil.copyfile(db_path, copy)  # the main file only: no -wal beside the copy
        with contextlib.closing(sqlite3.connect(copy)) as db:
            try:
                count = db.execute(
                    "SELECT sum(json_array_length(events)) FROM event_chunks WHERE call_id = 'c1'"
                ).fetchone()[0]
            except sqlite3.DatabaseError:  # the copy caught a page mid-write: try again
                count = 0
        copy.unlink()
        if count == 50 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.25)
    assert count == 50


async def test_a_call_that_ends_while_the_fold_process_fails_is_not_failed_for_good(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that ends a call folds the journal first; when the fold process fails, that is
    the node's trouble, not the call's: the producer is told, and the call can end once it works."""
    await store.append(block("c1", 1))
    await started_writer(store)
    for pid in writer_processes():
        os.kill(pid, signal.SIGKILL)
    quitter = tmp_path / "quitter.py"
    quitter.write_text("import sys\nsys.stdin.buffer.read(1)\n")
    monkeypatch.setattr(fold_process, "__file__", str(quitter))
    await store.append(block("c2", 1))  # journaled, so the ending commit must fold first
    with pytest.raises(StoreUnavailableError):
        await store.append([event("acme", "c1", 5, "call.ended"), event("acme", "c3", 1)])
    assert not store.call_failed("acme", "c1")
    assert not store.call_failed("acme", "c3")

    monkeypatch.undo()
    await store.append([event("acme", "c1", 6, "call.ended")])
    call = await store.get_call("acme", "c1")
    assert call is not None
    assert call.status == "ended"


async def test_the_fold_process_yields_the_core_to_the_node(store: SqlStore) -> None:
    """Folds run at a lower CPU priority than the node: on a shared core a fold's burst must not
    stall the event loop that fans out (bench/README.md, `fold-nice`)."""
    await store.append(block("c1", 1))
    pid = await started_writer(store)
    stat = Path(f"/proc/{pid}/stat").read_text()  # noqa: ASYNC240 - procfs, never blocks
    child_nice = int(stat.rsplit(")", 1)[1].split()[16])
    assert child_nice == os.nice(0) + fold_process.NICENESS
