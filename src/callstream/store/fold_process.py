"""The embedded store's fold process: SQLite's work off the node's GIL.

SQLite releases the GIL only inside each statement's step; binding parameters, the statement
cache and the transaction's bookkeeping hold it, so SQLite work in the node would run serialised
with the fan-out. This process owns the journal's folds: the node names the journal files, and
the process reads them, merges their rows into chunks and calls rows (`rows.py`) and inserts
those, then runs the statements sent with them. The rows never cross the pipe and the node's
event loop does no work for a fold. Only the standard library, orjson and `rows.py` (beside it)
are imported, and it runs as a plain script (not `-m callstream…`), so it starts in a few
milliseconds without the package, SQLAlchemy or the web stack.

Wire: each message is a 4-byte big-endian length, then the body. Request body: a pickled
`(list[tuple[str, int]], list[tuple[str, list]])`: the journal files to fold (path, size), then
statements (SQL text, flattened parameters). Reply body: empty when the transaction committed;
`FAILED_CALLS` and a JSON array of `[account, call_id, error]` when it committed without the calls
whose rows could not be filed (`fold`); else the error as text (`"OperationalError: database is
locked"`). The process exits when its stdin closes (the node ended or closed the store), and only
then: it ignores SIGINT and SIGTERM, which are the node's to act on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import sqlite3
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

if __package__:  # imported by the node
    from callstream.store import rows
else:  # run as the fold process: a plain script, beside the module that specs the rows
    sys.path.append(str(Path(__file__).parent))
    import rows  # type: ignore[no-redef]

CHUNK_COLUMNS: Final = rows.CHUNK_COLUMNS
CALL_COLUMNS: Final = rows.CALL_COLUMNS
MAX_CHUNK_EVENTS: Final = rows.MAX_CHUNK_EVENTS
MAX_CHUNK_BYTES: Final = rows.MAX_CHUNK_BYTES

Statement = tuple[str, list[Any]]
HEADER = struct.Struct("!I")
FAILED_CALLS: Final = b"\x00"  # a reply's first byte: committed, but these calls were left out


# A commit in WAL mode with synchronous=NORMAL writes the log and does not wait for the disk; a
# checkpoint (copying the log into the database, then fsync) does. Left to SQLite, the commit that
# fills 1,000 pages runs the checkpoint itself, and the fan-out waiting on that commit waits for
# the disk, however slow it is. Here a thread of this process checkpoints
# (PASSIVE: beside the writer, never blocking it) every second; the writer's own automatic
# checkpoint stays as the backstop, at 16,384 pages (64 MiB of log), if that thread falls behind.
CHECKPOINT_EVERY_S = 1.0
WRITER_CHECKPOINT_PAGES = 16_384


# Every connection to the embedded database, the node's (`SqlStore`) and this process's alike.
# WAL + NORMAL: a committed transaction survives a process crash (SIGKILL); only an OS crash may
# lose the last commits.
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000")


def open_db(path: str, *, autocheckpoint_pages: int = 1000) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    for pragma in PRAGMAS:
        db.execute(pragma)
    db.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint_pages)}")
    return db


def checkpoint_forever(path: str, stop: threading.Event) -> None:
    db = open_db(path)
    while not stop.wait(CHECKPOINT_EVERY_S):
        with contextlib.suppress(sqlite3.Error):  # busy or failing: the writer's backstop remains
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    db.close()


# ---- the journal's files, folded -------------------------------------------------------------

# A journal record: the body's length and CRC-32, then the body (the rows as a JSON array of arrays).
RECORD: Final = struct.Struct("!II")

_INSERT_CHUNKS = rows.chunks_insert_sql("INSERT INTO event_chunks ({columns}) VALUES {rows}")
_UPSERT_CALLS = rows.calls_upsert_sql("sqlite", "INSERT INTO calls ({columns}) VALUES {rows}")
_UPSERT_MINUTES = rows.minutes_upsert_sql("INSERT INTO quality_minutes ({columns}) VALUES {rows}")
_INSERT_FINALS = rows.finals_insert_sql("INSERT INTO transcript_finals ({columns}) VALUES {rows}")
# Many rows per statement (`INSERT … VALUES (…), (…), …`): one sqlite3_step per statement, where
# `executemany` steps once per row. Statements of 256, 16 and 1 rows keep the statement cache to
# three texts per table (bench/sqlite_floor.py measures the alternatives).
_STATEMENT_ROWS = (256, 16, 1)
# A fold is a burst of CPU. Where it shares a core with the node, it would take half that core from
# the event loop for the burst's length, and every delivery due meanwhile waits; at a lower priority
# the loop keeps the core and the fold uses what the loop leaves (bench/README.md, `fold-nice`).
NICENESS = 10


def read_records(path: str, size: int | None = None) -> list[list[Any]]:
    """A journal file's rows (`journal.JOURNAL_COLUMNS`), record by record, up to the end (or
    `size` bytes: what the node knows it wrote) or the first torn record."""
    with Path(path).open("rb") as file:
        data = file.read() if size is None else file.read(size)
    rows: list[list[Any]] = []
    at = 0
    while at + RECORD.size <= len(data):
        length, crc = RECORD.unpack_from(data, at)
        body = data[at + RECORD.size : at + RECORD.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            break
        rows.extend(orjson.loads(body))
        at += RECORD.size + length
    return rows


Merged = tuple[list[tuple[Any, ...]], list[dict[str, Any]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


def merge_journal_rows(journaled: Sequence[Sequence[Any]]) -> Merged:
    """Journaled rows as one commit: per call its chunks (frames joined, a new chunk once a chunk's
    seqs would span more than `MAX_CHUNK_EVENTS`; reads sort a chunk's events by seq) and one calls
    row (`rows.CALL_COLUMNS`, merged by `rows.merge_call_row`); one `quality_minutes` row per
    account and minute and name; and the finals search indexes (`rows.FINAL_COLUMNS`)."""
    chunks: list[tuple[Any, ...]] = []
    open_chunks: dict[tuple[str, str], list[Any]] = {}  # first, last, frames, bytes of the call's chunk being filled
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    minutes: dict[tuple[str, int, str], int] = {}
    finals: list[tuple[Any, ...]] = []
    sums = len(rows.SUM_COLUMNS)
    for journaled_row in journaled:
        account, call_id, first_seq, last_seq, events, call_last_seq, started_at = journaled_row[:7]
        key = (account, call_id)
        row = rows.new_call_row(account, call_id, started_at, call_last_seq)
        row.update(zip(rows.SUM_COLUMNS, journaled_row[7 : 7 + sums], strict=False))
        if len(journaled_row) > 7 + sums:
            rows.merge_minute_rows(minutes, journaled_row[7 + sums])
        held = journaled_row[8 + sums] if len(journaled_row) > 8 + sums else _finals_in(events)
        finals.extend((account, call_id, *final) for final in held)
        if (call := merged.get(key)) is None:
            merged[key] = row
        else:
            rows.merge_call_row(call, row)
        if first_seq is None or last_seq is None:
            continue
        chunk = open_chunks.get(key)
        if chunk is not None and (
            max(chunk[1], last_seq) - min(chunk[0], first_seq) >= MAX_CHUNK_EVENTS
            or chunk[3] + len(events) > MAX_CHUNK_BYTES
        ):
            chunks.append((account, call_id, chunk[0], chunk[1], "[" + ",".join(chunk[2]) + "]"))
            chunk = None
        if chunk is None:
            open_chunks[key] = [first_seq, last_seq, [events[1:-1]], len(events)]
        else:
            chunk[0], chunk[1] = min(chunk[0], first_seq), max(chunk[1], last_seq)
            chunk[2].append(events[1:-1])
            chunk[3] += len(events)
    for (account, call_id), (first, last, frames, _) in open_chunks.items():
        chunks.append((account, call_id, first, last, "[" + ",".join(frames) + "]"))
    return chunks, list(merged.values()), [(*key, n) for key, n in minutes.items()], finals


def _finals_in(events: str) -> list[tuple[Any, ...]]:
    """[seq, speaker, text] of each final among a journal row's frames: a row a node journaled
    before search carries no finals of its own (`journal.JOURNAL_COLUMNS`)."""
    return [
        (frame["seq"], frame["data"].get("speaker", ""), frame["data"].get("text", ""))
        for frame in orjson.loads(events)
        if frame["type"] == "transcript.final"
    ]


@functools.cache
def _sql(template: str, columns: tuple[str, ...], size: int) -> str:
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return template.format(columns=", ".join(columns), rows=", ".join([one] * size))


def _statements(template: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> list[Statement]:
    """`rows` as statements of 256, 16 or 1 rows each, with their parameters flattened."""
    out: list[Statement] = []
    start = 0
    for size in _STATEMENT_ROWS:
        sql = _sql(template, columns, size)
        while len(rows) - start >= size:
            out.append((sql, list(chain.from_iterable(rows[start : start + size]))))
            start += size
    return out


def row_statements(
    chunks: Sequence[Sequence[Any]],
    calls: Sequence[dict[str, Any]],
    minutes: Sequence[Sequence[Any]] = (),
    finals: Sequence[Sequence[Any]] = (),
) -> list[Statement]:
    """Chunks inserted, calls rows merged into `calls`, minutes added into `quality_minutes` and
    finals inserted into `transcript_finals` (its triggers index them for search), then the
    index's bounded merge step (`rows.fts_merge`)."""
    merged = [tuple(c[k] for k in CALL_COLUMNS) for c in calls]
    return (
        _statements(_INSERT_CHUNKS, CHUNK_COLUMNS, chunks)
        + _statements(_UPSERT_CALLS, CALL_COLUMNS, merged)
        + _statements(_UPSERT_MINUTES, rows.MINUTE_COLUMNS, minutes)
        + _statements(_INSERT_FINALS, rows.FINAL_COLUMNS, finals)
        + ([rows.fts_merge(len(finals))] if finals else [])
    )


# A fold that failed on one call's rows (not on the database: those are OperationalErrors) is run
# again call by call, each in a savepoint: the calls that fail are left out and reported, their
# rows kept in the quarantine file beside the database, and every other call is filed.
FailedCall = list[str]  # account, call_id, the error as text


def fold(
    db: sqlite3.Connection, path: str, files: Sequence[tuple[str, int]], statements: list[Statement]
) -> list[FailedCall]:
    """File the journal files and run `statements`, in one transaction; the calls left out."""
    rows = [row for path, size in files for row in read_records(path, size)]
    try:
        run_transaction(db, row_statements(*merge_journal_rows(rows)) + statements)
    except sqlite3.OperationalError:  # locked, full, unreadable: the store's trouble, not a call's
        raise
    except Exception:  # some call's rows: find which, and file the others
        return fold_call_by_call(db, path, rows, statements)
    return []


def fold_call_by_call(
    db: sqlite3.Connection, path: str, rows: Sequence[Sequence[Any]], statements: list[Statement]
) -> list[FailedCall]:
    """`fold` once a call's rows failed it: each call in a savepoint; the calls that fail are left
    out, unless every call failed and the database refuses a probe write too (its trouble, then:
    the fold fails whole and its files wait for the next)."""
    by_call: dict[tuple[str, str], list[Sequence[Any]]] = {}
    for row in rows:
        by_call.setdefault((row[0], row[1]), []).append(row)
    failed: list[FailedCall] = []
    left_out: list[Sequence[Any]] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for (account, call_id), held in by_call.items():
            error = _in_savepoint(db, functools.partial(_call_statements, held))
            if error is not None:
                failed.append([account, call_id, f"{type(error).__name__}: {error}"])
                left_out.extend(held)
        if len(failed) == len(by_call) and (error := _in_savepoint(db, lambda: [_PROBE])) is not None:
            raise error
        for sql, parameters in statements:
            db.execute(sql, parameters)
        quarantine(path, left_out)  # before the commit: a fold that commits never loses them
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return failed


def _call_statements(held: Sequence[Sequence[Any]]) -> list[Statement]:
    return row_statements(*merge_journal_rows(held))


_PROBE: Final[Statement] = (
    "INSERT INTO meta (key, value) VALUES ('health_probe', 'fold') ON CONFLICT (key) DO UPDATE SET value = 'fold'",
    [],
)


def _in_savepoint(db: sqlite3.Connection, statements: Callable[[], Sequence[Statement]]) -> Exception | None:
    """Build and run `statements` in a savepoint: None when they ran, else their error (rolled
    back); building them is part of it, since a call's rows may fail to merge too."""
    db.execute("SAVEPOINT call")
    try:
        for sql, parameters in statements():
            db.execute(sql, parameters)
    except sqlite3.OperationalError:  # the database's trouble: the whole fold fails
        raise
    except Exception as exc:  # these rows' trouble
        db.execute("ROLLBACK TO call")
        db.execute("RELEASE call")
        return exc
    db.execute("RELEASE call")
    return None


def quarantine_path(db_path: str) -> str:
    return db_path + "-quarantine.jsonl"


def quarantine(db_path: str, rows: Sequence[Sequence[Any]]) -> None:
    """Keep rows no fold could file, one JSON array a line, for the operator (nothing is lost)."""
    if not rows:
        return
    with Path(quarantine_path(db_path)).open("ab") as out:
        out.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))


# ---- transactions ------------------------------------------------------------------------------


def run_transaction(db: sqlite3.Connection, statements: list[Statement]) -> None:
    """Every statement or none (BEGIN IMMEDIATE … COMMIT)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, parameters in statements:
            db.execute(sql, parameters)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk does)
            db.execute("ROLLBACK")
        raise


def read_message(stream: BinaryIO) -> bytes | None:
    """One length-prefixed body, or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    return body if len(body) == size else None


def write_message(stream: BinaryIO, body: bytes) -> None:
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def serve(path: str, requests: BinaryIO, replies: BinaryIO) -> None:
    db: sqlite3.Connection | None = None
    stop = threading.Event()
    checkpointer = threading.Thread(target=checkpoint_forever, args=(path, stop), name="checkpoint", daemon=True)
    while (body := read_message(requests)) is not None:
        try:
            if db is None:
                db = open_db(path, autocheckpoint_pages=WRITER_CHECKPOINT_PAGES)
                checkpointer.start()
            files, statements = pickle.loads(body)  # noqa: S301 - the node's own pipe, nobody else's
            failed = fold(db, path, files, statements)
            reply = FAILED_CALLS + orjson.dumps(failed) if failed else b""
        except Exception as exc:  # the node reports it; this process keeps serving
            reply = f"{type(exc).__name__}: {exc}".encode()
        write_message(replies, reply)
    stop.set()
    if checkpointer.is_alive():
        checkpointer.join()
    if db is not None:
        db.close()


def main() -> None:
    # The node decides when this process ends (it closes the pipe after its last commit). Ctrl-C
    # reaches the terminal's whole process group, and a service manager's SIGTERM may reach the
    # whole service: either would kill the writer while the node drains into it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group's write to the terminal
    os.nice(NICENESS)
    with contextlib.suppress(BrokenPipeError):  # the node was killed before reading the last reply
        serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
