"""Search latency over a million stored finals, on SQLite and PostgreSQL (issue 26's target:
`q` answers p99 ≤ 100 ms).

    .venv/bin/python -m bench.search [--finals 1000000] [--backend sqlite,postgresql] [--dir /tmp/callstream-search]
                                     [--database postgresql://postgres@127.0.0.1:5432/callstream_bench_search]
                                     [--rounds 20] [--rebuild]

The corpus is the simulator's conversations (`callstream.sim_scripts`), every `Say` a final, over
calls spread across 30 days; 90 % of the calls are the searched account's, 10 % another's. It is
built once straight into the store's tables (`transcript_finals`, whose index the database keeps,
and `calls`), with the same rows the write paths store (`store.rows`), and kept: under `--dir` for
SQLite, in the `--database` for PostgreSQL (`--rebuild` builds it again). Then `SqlStore.list_calls`
(what `GET /v1/calls` runs, without HTTP) answers a mix of queries, `--rounds` times each, in
random order: common words (`thank`, `card`), a phrase, a prefix, words of one call only (a
confirmation code drawn from the corpus), a word nowhere, and `q` with the other filters. A table
of p50/p99 per query and over all is printed and written to bench/results/search.md, with the
CPU time this process spent per query (on SQLite the database's work too: it runs in the process)
and the machine's load average, which on a shared machine says how much of the wall time was
waiting for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import re
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import search_ab
from callstream.call_filters import CallFilter
from callstream.search import parse_query
from callstream.sim_scripts import SCRIPTS, Facts, Say
from callstream.store import SqlStore, rows

ACCOUNT, OTHER = "bench", "bench_other"
DAY_MS = 86_400_000
START_MS = 1_795_000_000_000
RESULTS = Path(__file__).parent / "results" / "search.md"
_CODE = re.compile(r"\b[A-Z]{2,4}-\d{4,7}\b")

Call = tuple[str, str, int, list[tuple[int, str, str]], float | None]  # account, call_id, started_at, finals, score


def corpus(finals: int, seed: int = 26) -> Iterator[Call]:
    """Calls of the simulator's conversations until `finals` finals: (account, call_id, started
    ms, [(seq, speaker, text)], a sentiment score or None)."""
    rng = random.Random(seed)
    today = dt.date(2026, 12, 6)
    made = n = 0
    scripts = list(SCRIPTS.values())
    while made < finals:
        script = rng.choice(scripts)(Facts(rng, today))
        lines = [(3 * i + 1, turn.speaker, turn.text) for i, turn in enumerate(t for t in script.turns if isinstance(t, Say))]
        lines = lines[: finals - made]
        account = OTHER if rng.random() < 0.1 else ACCOUNT
        started = START_MS + int(n * 30 * DAY_MS / max(1, finals // 8))
        score = round(rng.uniform(-1, 1), 3) if rng.random() < 0.8 else None
        yield account, f"call_{n:07d}", started, lines, score
        made += len(lines)
        n += 1


def call_row(call: Call, live: bool) -> dict[str, Any]:
    account, call_id, started, lines, score = call
    row = rows.new_call_row(account, call_id, started, lines[-1][0] + 1 if lines else 1)
    if not live:
        row.update(status="ended", ended_at=started + 60_000, duration_ms=60_000, end_status="completed")
    if score is not None:
        row.update(sentiment_sum=score * len(lines), sentiment_n=len(lines))
    row["last_ts"] = started + 60_000
    return row


def corpus_rows(finals: int, codes: list[str]) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Each call's `calls` row (`rows.CALL_COLUMNS`) and its `transcript_finals` rows; one call in
    5,000 of the searched account adds a confirmation code it says to `codes` (a word of one call)."""
    for i, call in enumerate(corpus(finals)):
        row = call_row(call, live=i % 100 == 0)
        if i >= 5000 * len(codes) + 17 and call[0] == ACCOUNT and len(codes) < 8:
            codes += _CODE.findall(" ".join(text for _, _, text in call[3]))[:1]
        yield tuple(row[c] for c in rows.CALL_COLUMNS), [(call[0], call[1], *line) for line in call[3]]


def build_sqlite(path: Path, finals: int) -> list[str]:
    """The corpus into a migrated SQLite file (the triggers index each final, each batch's merge
    step merges the index); some codes said once."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    calls_sql = f"INSERT INTO calls ({', '.join(rows.CALL_COLUMNS)}) VALUES ({', '.join('?' * len(rows.CALL_COLUMNS))})"  # noqa: S608 - the spec's own names
    finals_sql = rows.finals_insert_sql("INSERT INTO transcript_finals (account, call_id, seq, speaker, text) VALUES (?, ?, ?, ?, ?)")
    codes: list[str] = []
    batch_calls: list[tuple[Any, ...]] = []
    batch_finals: list[tuple[Any, ...]] = []

    def flush() -> None:
        db.execute("BEGIN")
        db.executemany(calls_sql, batch_calls)
        db.executemany(finals_sql, batch_finals)
        db.execute(*rows.fts_merge(len(batch_finals)))  # as the store's commits do (`rows.fts_merge`)
        db.execute("COMMIT")
        batch_calls.clear()
        batch_finals.clear()

    for i, (call, lines) in enumerate(corpus_rows(finals, codes)):
        batch_calls.append(call)
        batch_finals.extend(lines)
        if len(batch_finals) >= 50_000:
            flush()
            print(f"  {i + 1:,} calls", end="\r", flush=True)
    flush()
    db.close()
    return codes


async def build_postgresql(url: str, finals: int) -> list[str]:
    """The corpus into a migrated PostgreSQL database by COPY, the GIN index made after the rows."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    codes: list[str] = []
    try:
        await conn.execute("DROP INDEX IF EXISTS ix_transcript_finals_tsv")
        calls: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        for i, (call, held) in enumerate(corpus_rows(finals, codes)):
            calls.append(call)
            lines.extend(held)
            if len(lines) >= 100_000:
                await _copy(conn, calls, lines)
                print(f"  {i + 1:,} calls", end="\r", flush=True)
        await _copy(conn, calls, lines)
        print("  the GIN index…", flush=True)
        await conn.execute("CREATE INDEX IF NOT EXISTS ix_transcript_finals_tsv ON transcript_finals USING gin (tsv)")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return codes


async def _copy(conn: Any, calls: list[tuple[Any, ...]], lines: list[tuple[Any, ...]]) -> None:
    await conn.copy_records_to_table("calls", records=calls, columns=list(rows.CALL_COLUMNS))
    await conn.copy_records_to_table("transcript_finals", records=lines, columns=list(rows.FINAL_COLUMNS))
    calls.clear()
    lines.clear()


def queries(codes: list[str]) -> dict[str, CallFilter]:
    """The mix: name → filters (every one with the default page of 50)."""
    q = parse_query
    mix = {
        "common word (thank)": CallFilter(q=q("thank")),
        "common word (card)": CallFilter(q=q("card")),
        "two words (insurance card)": CallFilter(q=q("insurance card")),
        'phrase ("late fee")': CallFilter(q=q('"late fee"')),
        "prefix (confirm*)": CallFilter(q=q("confirm*")),
        "city (Phoenix)": CallFilter(q=q("Phoenix")),
        "a word nowhere (zebra)": CallFilter(q=q("zebra")),
        "q + ended + last week": CallFilter(status="ended", started_after=START_MS + 22 * DAY_MS, q=q("booked")),
        "q + sentiment_below -0.5": CallFilter(sentiment_below=-0.5, q=q("router")),
        "list, no q (ended)": CallFilter(status="ended"),
    }
    for code in codes[:4]:
        mix[f"one call's code ({code})"] = CallFilter(q=q(code))
    return mix


async def measure(store: SqlStore, mix: dict[str, CallFilter], rounds: int) -> dict[str, list[float]]:
    order = [name for name in mix for _ in range(rounds)]
    random.Random(1).shuffle(order)
    took: dict[str, list[float]] = {name: [] for name in mix}
    hits: dict[str, int] = {}
    cpu: dict[str, list[float]] = {name: [] for name in mix}
    for name in order:
        t0, c0 = time.perf_counter(), time.process_time()
        found, _ = await store.list_calls(ACCOUNT, filters=mix[name], limit=50, cursor=None)
        took[name].append((time.perf_counter() - t0) * 1000)
        cpu[name].append((time.process_time() - c0) * 1000)
        hits[name] = len(found)
    for name in mix:
        took[name] += [statistics.median(cpu[name]), float(hits[name])]  # the last two: CPU ms, hits on the page
    return took


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def table(backend: str, finals: int, took: dict[str, list[float]]) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"### {backend}: {finals:,} finals (load average {load} on {os.cpu_count()} cores)",
        "",
        "| query | hits (page of 50) | p50 ms | p99 ms | CPU ms (median, this process) |",
        "|---|---:|---:|---:|---:|",
    ]
    every: list[float] = []
    for name, values in took.items():
        *ms, cpu, hits = values
        every += ms
        lines.append(f"| {name} | {int(hits)} | {statistics.median(ms):.1f} | {p(ms, 0.99):.1f} | {cpu:.1f} |")
    lines.append(f"| **all {len(every)} queries** | | **{statistics.median(every):.1f}** | **{p(every, 0.99):.1f}** | |")
    return "\n".join(lines) + "\n"


async def run_backend(backend: str, args: argparse.Namespace) -> str:
    url, codes = await corpus_of(backend, args)
    store = SqlStore(url)
    await store.start(writer=False)
    try:
        took = await measure(store, queries(codes), args.rounds)
    finally:
        await store.close()
    return table(backend, args.finals, took)


async def corpus_of(backend: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The store URL of the backend's corpus (built first if it is not there) and its codes."""
    if backend == "sqlite":
        args.dir.mkdir(parents=True, exist_ok=True)
        path = args.dir / "callstream.db"
        built = args.dir / "built.txt"
        url = f"sqlite+aiosqlite:///{path}"
        if args.rebuild or not built.exists():
            for stale in args.dir.glob("callstream.db*"):
                stale.unlink()
            await _migrate(url)
            t0 = time.perf_counter()
            codes = build_sqlite(path, args.finals)
            print(f"sqlite: built in {time.perf_counter() - t0:.0f} s")
            built.write_text("\n".join(codes))
        codes = built.read_text().split()
    else:
        url = args.database.replace("postgresql://", "postgresql+asyncpg://", 1)
        codes = await _pg_corpus(url, args)
    return url, codes


async def _migrate(url: str) -> None:
    store = SqlStore(url)
    await store.start(writer=False)
    await store.close()


async def _pg_corpus(url: str, args: argparse.Namespace) -> list[str]:
    """Build the PostgreSQL corpus unless the database holds it (its codes in `meta`)."""
    import asyncpg

    admin = url.rsplit("/", 1)[0].replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and args.rebuild:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    await _migrate(url)
    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        codes = await conn.fetchval("SELECT value FROM meta WHERE key = 'bench_search_codes'")
    finally:
        await conn.close()
    if codes is not None:
        return str(codes).split()
    t0 = time.perf_counter()
    found = await build_postgresql(url, args.finals)
    print(f"postgresql: built in {time.perf_counter() - t0:.0f} s")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute("INSERT INTO meta (key, value) VALUES ('bench_search_codes', $1)", " ".join(found))
    finally:
        await conn.close()
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finals", type=int, default=1_000_000)
    parser.add_argument("--backend", default="sqlite,postgresql")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/callstream-search"))  # noqa: S108 - a corpus to keep
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/callstream_bench_search")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--ab", metavar="REF", help="A/B in one run: REF's src/ (the base) against this one's")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        await search_ab.serve(args.worker)
        return
    if args.ab:
        out = [await search_ab.run(backend, args, await corpus_of(backend, args)) for backend in args.backend.split(",")]
        print("\n".join(out))
        return
    out = [await run_backend(backend, args) for backend in args.backend.split(",")]
    text = "## Search latency (`bench/search.py`)\n\n" + "\n".join(out)
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
