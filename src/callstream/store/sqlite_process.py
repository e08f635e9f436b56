"""The embedded store's writer process: SQLite's work off the event loop's GIL.

SQLite releases the GIL only inside each statement's step; binding parameters, the statement
cache and the transaction's bookkeeping hold it. A writer *thread* therefore takes turns with the
event loop for the GIL, and on a 2-core node the store ran serialised with the fan-out instead of
beside it. This process owns the database's event writes; the node sends it a transaction (its
statements, pickled) over a pipe and waits for one reply. Only the standard library is imported,
so the process starts in a few milliseconds, and it runs as a plain script (not `-m callstream…`)
so that the package, SQLAlchemy and the web stack are never loaded into it.

Wire: each message is a 4-byte big-endian length, then the body. Request body: a pickled
`list[tuple[str, list]]` (SQL text, flattened parameters). Reply body: empty when the transaction
committed, else the error as text (`"OperationalError: database is locked"`). The process exits
when its stdin closes (the node ended or closed the store), and only then: it ignores SIGINT and
SIGTERM, which are the node's to act on.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import sqlite3
import struct
import sys
import threading
from typing import Any, BinaryIO

Statement = tuple[str, list[Any]]
HEADER = struct.Struct("!I")


# A commit in WAL mode with synchronous=NORMAL writes the log and does not wait for the disk; a
# checkpoint (copying the log into the database, then fsync) does. Left to SQLite, the commit that
# fills 1,000 pages runs the checkpoint itself, and the fan-out waiting on that commit waits for
# the disk: a 400 ms p99 when the disk is slow. Here a thread of this process checkpoints
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
            run_transaction(db, pickle.loads(body))  # noqa: S301 - the node's own pipe, nobody else's
            reply = b""
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
    with contextlib.suppress(BrokenPipeError):  # the node was killed before reading the last reply
        serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
