"""The fault drill for minutes: repeated outages of PostgreSQL and Redis under traffic (not CI).

    python -m bench.faults --minutes 10                  # the documented run (two nodes)
    python -m bench.faults --minutes 1 --nodes 1         # a short one

The drill of tests/e2e/test_fault_drill.py (tests/fault_drill.py) on nodes of its own sharing a
private PostgreSQL cluster and a private redis-server: a REST producer and an ingest producer,
a subscribing client on every node, and outages in turn until the time is spent: PostgreSQL
down, Redis down, and (with two nodes or more) PostgreSQL down with a node SIGKILLed halfway and
started again once PostgreSQL is back. Each outage lasts a random `--down` seconds, with
`--between` seconds of steady traffic after it; every `--round` outages the drill checks what it
holds (`Drill.finish`) and starts on fresh calls. Prints the counts and writes
bench/results/faults.md; exits 1 on any broken promise.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.fault_drill import Cluster, Drill, Findings
from tests.faults import own_redis, private_postgres

RESULTS = Path(__file__).parent / "results" / "faults.md"


def _span(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


async def drill(
    minutes: float, nodes: int, per_round: int, down: tuple[float, float], between: tuple[float, float]
) -> tuple[Findings, Counter[str]]:
    root = Path(tempfile.mkdtemp(prefix="callstream-faults-"))
    total = Findings()
    outages: list[tuple[str, int | None]] = [("postgres", None), ("redis", None)]
    if nodes > 1:
        outages.append(("postgres", 0))
    with private_postgres() as pg, own_redis(root) as redis:
        cluster = Cluster(root, pg, redis, nodes)
        key = await cluster.key("acme")
        await asyncio.to_thread(cluster.start)
        deadline = time.monotonic() + minutes * 60
        turn = 0
        try:
            while time.monotonic() < deadline:
                async with Drill(cluster, key) as round_:
                    await round_.steady(random.uniform(*between))
                    for _ in range(per_round):
                        service, kill = outages[turn % len(outages)]
                        turn += 1
                        if kill is not None:
                            kill = random.randrange(nodes)
                        await round_.outage(service, random.uniform(*down), kill=kill)
                        await round_.steady(random.uniform(*between))
                        if time.monotonic() >= deadline:
                            break
                    findings = await round_.finish()
                total.add(findings)
                print(*findings.lines(), *findings.problems, sep="\n", flush=True)
        finally:
            logged = cluster.log_counts()
            cluster.stop()
    return total, logged


def report(findings: Findings, logged: Counter[str], command: str) -> str:
    lines = [
        "# Fault drill: outages of PostgreSQL and Redis under traffic",
        "",
        f"`{command}` (bench/faults.py; the drill of tests/e2e/test_fault_drill.py).",
        "",
        *[f"- {line}" for line in findings.lines()],
        f"- broken promises: {len(findings.problems)}; in the nodes' logs: {logged['500s']} answers 500, "
        f"{logged['tracebacks']} tracebacks",
    ]
    for problem in findings.problems[:50]:
        lines.append(f"  - `{problem[:300]}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--round", type=int, default=5, help="outages between two checks (fresh calls each)")
    parser.add_argument("--down", default="2-8", help="seconds an outage lasts: a number or low-high")
    parser.add_argument("--between", default="2-5", help="seconds of steady traffic after each outage")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    findings, logged = asyncio.run(
        drill(args.minutes, args.nodes, args.round, _span(args.down), _span(args.between))
    )
    command = "python -m bench.faults " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(findings, logged, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if findings.problems or logged["500s"] else 0


if __name__ == "__main__":
    sys.exit(main())
