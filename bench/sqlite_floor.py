"""What SQLite alone costs per stored event on this machine: the floor under the ingest target.

The ingest target asks for ≥ 0.8× the ingest rate with the store disabled. With the node pinned to
one core, every microsecond the store spends comes out of that core, so the ratio can only reach
0.8 if a stored event costs the store at most a quarter of what the whole server spends per event
without it. This measures the part no Python change can remove: the store's own statements
(`callstream.store.sqlite_writer`, the real schema and pragmas), executed from C by `executemany`,
in batches shaped like the ingest scenario's, with no server around them.

    .venv/bin/python -m bench.sqlite_floor [--batches 150] [--calls 100] [--per-call 10]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import sqlalchemy as sa

from callstream.store import tables
from callstream.store.sqlite_writer import _INSERT_EVENTS, _UPSERT_CALLS

DATA = {"speaker": "user", "text": "I would like to move my booking to next Tuesday, please", "is_final": True,
        "sent_ns": 1_795_644_460_123_456_789, "sentiment": {"score": 0.318, "label": "positive"}}


def one_run(path: Path, batches: int, calls: int, per_call: int) -> tuple[float, float, float]:
    """µs per stored event: inserting the events, upserting the calls, committing."""
    engine = sa.create_engine(f"sqlite:///{path}")
    tables.metadata.create_all(engine)
    engine.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    data = orjson.dumps(DATA).decode()
    seqs = dict.fromkeys(range(calls), 0)
    insert = upsert = commit = 0.0
    rows = 0
    for _ in range(batches):
        events, call_rows = [], []
        for c in range(calls):
            call_id = f"floor{c:05d}"
            for _ in range(per_call):
                seqs[c] += 1
                events.append({"account": "bench", "call_id": call_id, "seq": seqs[c], "ts": 1_795_644_460_123,
                               "type": "transcript.final", "data": data})
            call_rows.append({"account": "bench", "call_id": call_id, "status": "live", "started_at": 1,
                              "ended_at": None, "duration_ms": None, "end_status": None, "reason": None,
                              "last_seq": seqs[c], "sentiment_sum": 0.0, "sentiment_n": 0})
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT_EVENTS, events)
        t1 = time.perf_counter()
        db.executemany(_UPSERT_CALLS, call_rows)
        t2 = time.perf_counter()
        db.execute("COMMIT")
        t3 = time.perf_counter()
        insert, upsert, commit = insert + t1 - t0, upsert + t2 - t1, commit + t3 - t2
        rows += len(events)
    db.close()
    return insert / rows * 1e6, upsert / rows * 1e6, commit / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sqlite_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--calls", type=int, default=100, help="calls a batch spans")
    parser.add_argument("--per-call", type=int, default=10, help="events a call has in a batch")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sqlite-floor-") as tmp:
            results.append(one_run(Path(tmp) / "floor.db", args.batches, args.calls, args.per_call))
    insert, upsert, commit = (statistics.median(r[k] for r in results) for k in range(3))
    total = insert + upsert + commit
    print(f"pid {os.getpid()}, {args.runs} runs of {args.batches} batches of {args.calls * args.per_call} events "
          f"({args.calls} calls); medians, µs per stored event:")
    print(f"  insert events {insert:.2f}   upsert calls {upsert:.2f}   commit {commit:.2f}   total {total:.2f}")
    print(f"  → SQLite alone stores at most {1e6 / total:,.0f} events/s on one core")


if __name__ == "__main__":
    main()
