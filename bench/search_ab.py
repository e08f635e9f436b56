"""`python -m bench.search --ab REF`: search latency A/B in one run, on one corpus.

Two worker processes answer the same queries on the same corpus: one runs REF's `src/` (the
base, extracted with `git archive`), the other this tree's. The driver asks each query of both,
in the bench's random order, the base first on even turns and second on odd ones, so both see
the same machine load and page cache. Each answer carries a digest of its page (call ids and
each hit's seq, speaker and snippet): the two must agree on every query, or the run stops. The
workers use the store as `bench.search` does (`SqlStore.list_calls`) without migrating it, so a
base without this tree's latest migration still reads the corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_src(ref: str) -> Path:
    """REF's `src/`, extracted once under /tmp by its commit."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True, text=True)
    where = Path("/tmp/callstream-search-ab") / commit.stdout.strip()  # noqa: S108 - a scratch copy
    if not (where / "src").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where / "src"


class Worker:
    """A `bench.search --worker` process on one `src/`: a query name in, a timed answer out."""

    def __init__(self, src: Path, url: str, codes: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.search", "--worker", url],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.ask(" ".join(codes))

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the worker on {line!r} ended")
        return answer.strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def serve(url: str) -> None:
    """The worker: the codes first, then one query name a line; answers `ms cpu_ms hits digest`."""
    from bench.search import ACCOUNT, queries
    from callstream.store import SqlStore

    store = SqlStore(url)
    mix = queries(sys.stdin.readline().split())
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            filters = mix[line.strip()]
            t0, c0 = time.perf_counter(), time.process_time()
            found, _ = await store.list_calls(ACCOUNT, filters=filters, limit=50, cursor=None)
            ms, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
            page = [(r.call_id, r.hit and (r.hit.seq, r.hit.speaker, r.hit.snippet.text)) for r in found]
            digest = hashlib.sha256(repr(page).encode()).hexdigest()[:16]
            print(f"{ms:.3f} {cpu:.3f} {len(found)} {digest}", flush=True)
    finally:
        await store.close()


async def run(backend: str, args: argparse.Namespace, corpus: tuple[str, list[str]]) -> str:
    """Both workers on the backend's corpus; the table of p50/p99 per query, base against this."""
    from bench.search import queries

    url, codes = corpus
    names = list(queries(codes))
    workers = {"base": Worker(base_src(args.ab), url, codes), "this": Worker(ROOT / "src", url, codes)}
    took: dict[str, dict[str, list[float]]] = {side: {name: [] for name in names} for side in workers}
    cpu: dict[str, dict[str, list[float]]] = {side: {name: [] for name in names} for side in workers}
    hits: dict[str, int] = {}
    order = [name for name in names for _ in range(args.rounds)]
    random.Random(1).shuffle(order)
    try:
        for turn, name in enumerate(order):
            sides = ["base", "this"] if turn % 2 == 0 else ["this", "base"]
            digests = {}
            for side in sides:
                ms, cpu_ms, n, digest = workers[side].ask(name).split()
                took[side][name].append(float(ms))
                cpu[side][name].append(float(cpu_ms))
                hits[name], digests[side] = int(n), digest
            if digests["base"] != digests["this"]:
                raise RuntimeError(f"{name}: the base and this tree answer different pages")
    finally:
        for worker in workers.values():
            worker.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"### {backend}: A/B, base `{args.ab}` against this tree, {args.rounds} rounds (load average {load}"
        f" on {os.cpu_count()} cores at the end)",
        "",
        "| query | hits | base p50 ms | base p99 ms | this p50 ms | this p99 ms | p50 ratio | CPU ms base / this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    every: dict[str, list[float]] = {"base": [], "this": []}
    for name in names:
        row = [f"{stat(took[side][name]):.1f}" for side in ("base", "this") for stat in (statistics.median, p99)]
        ratio = statistics.median(took["this"][name]) / statistics.median(took["base"][name])
        cpus = " / ".join(f"{statistics.median(cpu[side][name]):.1f}" for side in ("base", "this"))
        lines.append(f"| {name} | {hits[name]} | {' | '.join(row)} | {ratio:.2f} | {cpus} |")
        for side in every:
            every[side] += took[side][name]
    overall = [f"**{stat(every[side]):.1f}**" for side in ("base", "this") for stat in (statistics.median, p99)]
    lines.append(f"| **all {len(every['base'])} queries** | | {' | '.join(overall)} | | |")
    return "\n".join(lines) + "\n"


def p99(values: list[float]) -> float:
    from bench.search import p

    return p(values, 0.99)
