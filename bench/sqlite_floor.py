"""What SQLite alone costs per stored event on this machine: the floor under the ingest target.

The ingest target asks for ≥ 0.8× the ingest rate with the store disabled. With the node pinned to
one core, every microsecond the store spends comes out of that core, so the ratio can only reach
0.8 if a stored event costs the store at most a quarter of what the whole server spends per event
without it. This measures the part no Python change can remove: the store's own statements
(`callstream.store.fold` builds them, `callstream.store.fold_process` runs them: the real
schema and pragmas), in batches shaped like the ingest scenario's, with no server around them. The
node's share (build and pickle) is what stays on the event loop's core; the rest is the writer
process's, on the other core when the node is not pinned to one.

    .venv/bin/python -m bench.sqlite_floor [--batches 150] [--calls 100] [--per-call 10] [--fold-every 200]

Batches go to the journal, as in the store (a file append: the node's share), and every
`--fold-every` batches (about a second of a live fan-out's commits) the fold runs and counts in the
write column: the writer process's share (it reads the files, merges their rows and runs the
transaction). `--path chunks` writes each batch straight as chunks instead (the store's path for
dense batches until the fold moved to the writer process), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from callstream.events import Event
from callstream.store import SqlStore
from callstream.store.chunks import by_call, chunk_rows
from callstream.store.fold import Fold
from callstream.store.fold_process import fold as fold_files
from callstream.store.fold_process import open_db, row_statements, run_transaction
from callstream.store.journal import EventJournal, journal_rows
from callstream.store.migrate import upgrade

DATA = {"speaker": "user", "text": "I would like to move my booking to next Tuesday, please", "is_final": True,
        "sent_ns": 1_795_644_460_123_456_789, "sentiment": {"score": 0.318, "label": "positive"}}


async def _migrate(path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def one_run(path: Path, batches: int, calls: int, per_call: int, fold_every: int, force: str | None
            ) -> tuple[float, float, bool]:
    """µs per stored event: the event loop's share (a journal append, or building and pickling the
    chunks' statements), then the writer process's (the fold, or the chunks' transaction), here in
    one process."""
    asyncio.run(_migrate(path))  # the store's schema, search index and its settings included
    db = open_db(str(path))
    seqs = dict.fromkeys(range(calls), 0)
    encode = write = 0.0
    rows = logged_batches = 0
    logged = False
    journal = EventJournal(str(path))

    def fold() -> None:
        files = journal.take()
        fold_request = Fold([(f.path, f.size) for f in files], [f.marker for f in files])
        left_out = fold_files(db, str(path), fold_request.files, fold_request.statements())  # the fold process's work
        assert not left_out
        journal.folded(files)
    for _ in range(batches):
        events: list[Event] = []
        for c in range(calls):
            for _ in range(per_call):
                seqs[c] += 1
                events.append(Event("bench", f"floor{c:05d}", seqs[c], 1_795_644_460_123, "transcript.final", DATA))
        t0 = time.perf_counter()
        grouped = by_call(events)
        logged = force != "chunks"
        if logged:
            journaled = journal_rows(grouped)
            assert journaled is not None  # no call ends here
            journal.append(journaled)  # the node's whole share of a commit
            t1 = time.perf_counter()
            logged_batches += 1
            if logged_batches % fold_every == 0:
                fold()
        else:
            statements = row_statements(chunk_rows(grouped), SqlStore._call_rows(grouped))
            pickle.dumps(statements, pickle.HIGHEST_PROTOCOL)  # what the node sends the writer process
            t1 = time.perf_counter()
            run_transaction(db, statements)
        t2 = time.perf_counter()
        encode, write = encode + t1 - t0, write + t2 - t1
        rows += len(events)
    if logged_batches % fold_every:
        fold()  # what is left in the journal
        write += time.perf_counter() - t2
    journal.close()
    db.close()
    return encode / rows * 1e6, write / rows * 1e6, logged


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sqlite_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--calls", type=int, default=100, help="calls a batch spans")
    parser.add_argument("--per-call", type=int, default=10, help="events a call has in a batch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fold-every", type=int, default=200, help="logged batches per fold")
    parser.add_argument("--path", choices=("chunks", "log"), default="log",
                        help="the journal and its folds (the store's path), or chunks straight")
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sqlite-floor-") as tmp:
            results.append(one_run(Path(tmp) / "floor.db", args.batches, args.calls, args.per_call,
                                   args.fold_every, args.path))
    encode, write = (statistics.median(r[k] for r in results) for k in range(2))
    total = encode + write
    path = f"the journal, folded every {args.fold_every} batches" if results[0][2] else "chunks"
    print(f"{args.runs} runs of {args.batches} batches of {args.calls * args.per_call} events "
          f"({args.calls} calls), written to {path}; medians, µs per stored event:")
    print(f"  the node's share {encode:.2f}   the writer's (insert, upsert, commit) {write:.2f}   total {total:.2f}")
    print(f"  → the store alone keeps up with at most {1e6 / total:,.0f} stored events/s on one core;"
          f" the node's own share caps it at {1e6 / encode:,.0f}/s when the writer has a core of its own")


if __name__ == "__main__":
    main()
