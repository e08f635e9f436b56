"""The embedded store's journal: commits as appends to a file of the node's own.

A live fan-out commits a few events for each of dozens of calls many times a second, and every
subscriber waits for that commit, so a commit must cost the node as little as it can: here a
commit (any that ends no call) is one `write` of its rows
(`journal_rows`) to an append-only file next to the database: the events are in the OS's
page cache when it returns, which is what SQLite's WAL with `synchronous=NORMAL` promises too (a
process crash loses nothing; an OS crash may lose the last commits, and a torn last record is
dropped by its CRC).

About once a second, and before anything reads calls or events, `SqlStore` folds the journal's
files into the database in one transaction of the fold process (`fold.Fold`), which
reads them itself (the node keeps no rows in memory), then deletes them. A fold starts a new file
first, so commits go on while it runs. A node that died leaves its files behind; the next node
folds them before its first read. The fold's transaction records each file it folded (`meta`:
`journal:<file>`), so a crash between that commit and the deletion of the files double-counts
nothing: the next node deletes them unread. Each node's files carry a name of their own and stay
locked (`flock`) while it holds them, so a node started beside a live one (two nodes on one
database file) never takes that one's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import zlib
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from callstream.events import ENDED, PARTIAL
from callstream.store.chunks import CallEvents, finals_of
from callstream.store.fold_process import RECORD
from callstream.store.rows import SUM_COLUMNS
from callstream.store.sums import MinuteRow, call_sums, merged_minutes

FOLD_EVERY_S: Final = 1.0
# Or sooner, once the journal holds this many rows: a fold's transaction grows with its rows, and
# a node pinned to one core waits for it.
FOLD_AT_ROWS: Final = 2000
# A commit waits for the fold in flight once the journal holds this much not folded yet: a node
# taking events faster than its fold process files them slows its producers down (their acks
# wait) instead of piling up a journal that every read would then have to wait for.
JOURNAL_MAX_BYTES: Final = 64 * 1024 * 1024

# A journal row: one call's events of one commit, with what its calls row needs (`rows.SUM_COLUMNS`
# after `started_at`), its `quality_minutes` rows ([account, minute, name, n] each) and its finals
# for search ([seq, speaker, text] each, `chunks.finals_of`).
JOURNAL_COLUMNS: Final = (
    "account", "call_id", "first_seq", "last_seq", "events", "call_last_seq", "started_at", *SUM_COLUMNS, "minutes",
    "finals",
)
JournalRow = tuple[Any, ...]

MARKER_PREFIX = "journal:"  # + the file's name after `<database>-events.`: a `meta` key


def marker_of(path: str) -> str:
    """The `meta` key a fold of the journal file at `path` commits with it."""
    return MARKER_PREFIX + path.rsplit("-events.", 1)[1]


@dataclass(slots=True)
class JournalFile:
    path: str
    fd: int  # open, and locked, until the file is deleted
    rows: int = 0  # appended by this node (a file taken over from a dead node counts none)
    size: int = 0

    @property
    def marker(self) -> str:
        return marker_of(self.path)


class EventJournal:
    """A node's journal files (`<database>-events.<node>.<n>`), not yet folded. `SqlStore` opens
    one for a node's writer, never for the CLI's short-lived stores."""

    def __init__(self, database_path: str) -> None:
        self._prefix = database_path + "-events."
        self._node = secrets.token_hex(4)
        self._generation = 0
        self._current: JournalFile | None = None
        self._files: list[JournalFile] = []  # not folded yet

    def recover(self, folded: Container[str]) -> int:
        """Take over the files nodes that died left behind (a live node's stay locked): those a
        fold already filed (their marker is in `folded`) are deleted, the others (each record up
        to the first torn one) wait for the next fold. Returns how many files wait."""
        for path in self._on_disk():
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live node's
                os.close(fd)
                continue
            found = JournalFile(path, fd, size=os.fstat(fd).st_size)
            if found.marker in folded:
                self.folded([found])
                continue
            self._files.append(found)
        return len(self._files)

    @property
    def unfolded_rows(self) -> int:
        """Rows this node appended since the last fold took its files."""
        return sum(found.rows for found in self._files)

    @property
    def unfolded_bytes(self) -> int:
        return sum(found.size for found in self._files)

    @property
    def holds_any(self) -> bool:
        """Whether a fold has anything to do: rows, or files (even of torn records only)."""
        return bool(self._files)

    def markers_on_disk(self) -> set[str]:
        """The markers of every journal file there is, this node's or another's."""
        return {marker_of(path) for path in self._on_disk()}

    def _on_disk(self) -> list[str]:
        """Every journal file (`<database>-events.<node>.<n>`) beside the database, in name order."""
        prefix = Path(self._prefix)
        found = prefix.parent.glob(prefix.name + "*.*")
        return sorted(str(path) for path in found if path.name.rsplit("-events.", 1)[1].count(".") == 1)

    def append(self, rows: Sequence[JournalRow]) -> None:
        """Journal a commit's rows: once this returns they survive the node's crash. Raises
        OSError (the disk is full, …) and then holds none of them."""
        body = orjson.dumps(rows)
        record = RECORD.pack(len(body), zlib.crc32(body)) + body
        current = self._current
        if current is None:
            current = self._current = self._open()
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(current.fd, view) :]
        except OSError:
            self._current = None  # a torn record ends its file: later records go to a new one
            raise
        current.rows += len(rows)
        current.size += len(record)

    def take(self) -> list[JournalFile]:
        """The files to fold; appends go on in a new file."""
        self._current = None
        taken, self._files = self._files, []
        return taken

    @staticmethod
    def folded(files: Sequence[JournalFile]) -> None:
        """Their rows are in the database: the files go."""
        for found in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(found.path)
            os.close(found.fd)

    def give_back(self, files: list[JournalFile]) -> None:
        """A fold failed: its files wait for the next one."""
        self._files[:0] = files

    def close(self) -> None:
        """The node ends: what is not folded stays on disk for the next node."""
        for found in self._files:
            os.close(found.fd)
        self._files, self._current = [], None

    def _open(self) -> JournalFile:
        path = f"{self._prefix}{self._node}.{self._generation}"
        self._generation += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        found = JournalFile(path, fd)
        self._files.append(found)
        return found


def journal_rows(grouped: CallEvents) -> list[JournalRow] | None:
    """One row per call of the commit (`chunks.by_call`): its stored frames as one array, what the
    fold merges into its calls row (`store.sums`), its minutes and its finals. None if an event ends a call:
    such commits take the SQLAlchemy path, whose hooks write the webhook outbox in the same
    transaction."""
    rows: list[JournalRow] = []
    minutes: list[MinuteRow] = []  # the commit's, in its last row
    for (account, call_id), held in grouped.items():
        frames: list[str] = []
        first_seq = last_seq = None  # of the stored events; None for partials only (the seq still moved on)
        for event in held:
            kind = event.type
            if kind == PARTIAL:
                continue
            if kind == ENDED:
                return None
            if first_seq is None:
                first_seq = event.seq
            last_seq = event.seq
            frames.append(event.frame)
        rows.append((
            account, call_id, first_seq, last_seq, f"[{','.join(frames)}]", held[-1].seq, held[0].ts,
            *call_sums(held, minutes), [], finals_of(held),
        ))
    if minutes and rows:
        rows[-1] = (*rows[-1][:-2], merged_minutes(minutes), rows[-1][-1])
    return rows
