"""The hostile-tenant property for minutes: account A's worst, account B's canary (not CI).

    python -m bench.hostile --minutes 10 --backend sqlite,postgresql      # the documented run
    python -m bench.hostile --minutes 1 --backend sqlite                   # a short one

The same property as tests/e2e/test_hostile_tenant.py (tests/hostile_tenant.py, with the
strategies of tests/hostile_strategies.py), on a fresh `callstream serve` per backend, run in
rounds of `--round` examples with a new random seed each until the backend's share of the time
is spent; B's canary is checked every `--canary-every` examples. A failing round counts as one
failure (Hypothesis shrinks it first; its report is printed) and the run goes on with a fresh
pair of accounts. At the end of each backend the server's log is searched for tracebacks and
500s. Prints the counts and writes a table to bench/results/hostile.md; exits 1 on any failure.
PostgreSQL must listen at 127.0.0.1:5432 (user `postgres`), as CI's `.ci/run` starts it.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from tests.broker.services import create_database, database_name, drop_database
from tests.helpers import ServerProcess, run_async
from tests.hostile_tenant import Counts, run_property, server_log_problems

RESULTS = Path(__file__).parent / "results" / "hostile.md"


@dataclass
class Outcome:
    backend: str
    minutes: float
    counts: Counts
    seeds: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)


def start(backend: str) -> tuple[ServerProcess, str | None]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"callstream-hostile-{backend}-"))
    if backend == "sqlite":
        return ServerProcess(data_dir).start(), None
    name = database_name()
    url = run_async(create_database(name)).replace("+asyncpg", "")
    return ServerProcess(data_dir, "--database", url).start(), name


def run_backend(backend: str, seconds: float, per_round: int, canary_every: int) -> Outcome:
    server, database = start(backend)
    counts = Counts()
    outcome = Outcome(backend, seconds / 60, counts)
    profile = settings(
        max_examples=per_round, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            round_seed = random.randrange(2**32)
            outcome.seeds.append(round_seed)
            keys = [server.create_key(f"acct_{uuid.uuid4().hex[:8]}") for _ in range(2)]
            try:
                run_property(server, keys[0], keys[1], profile, canary_every, counts, round_seed)
            except Exception:
                outcome.failures.append(f"seed {round_seed}:\n{traceback.format_exc(limit=3)}")
                print(outcome.failures[-1], file=sys.stderr)
            print(f"{backend}: {counts.summary()}", flush=True)
    finally:
        server.stop()
        outcome.log_problems = server_log_problems(server)
        if database is not None:
            run_async(drop_database(database))
    return outcome


def table(outcomes: list[Outcome], command: str) -> str:
    lines = [
        "# Hostile tenant: account A's worst, account B's canary",
        "",
        f"`{command}` (bench/hostile.py; the property of tests/e2e/test_hostile_tenant.py).",
        "",
        "| backend | minutes | examples | REST requests | ingest frames | MB sent | canary checks | failures "
        "| log tracebacks / 500s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        c = o.counts
        lines.append(
            f"| {o.backend} | {o.minutes:g} | {c.examples} | {c.rest_requests} | {c.ingest_frames} "
            f"| {c.bytes_sent / 1e6:.0f} | {c.canary_checks} | {len(o.failures)} | {len(o.log_problems)} |"
        )
    lines += ["", "Answers to account A:", ""]
    for o in outcomes:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(o.counts.answers.items()))
        lines.append(f"- {o.backend}: {answers}")
    for o in outcomes:
        for failure in o.failures + o.log_problems:
            lines += ["", f"{o.backend}:", "", "```", failure.strip()[:2000], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="in all, shared by the backends")
    parser.add_argument("--backend", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--round", type=int, default=200, help="examples per Hypothesis run (one seed)")
    parser.add_argument("--canary-every", type=int, default=5, help="check account B every k examples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgresql"}:
        parser.error("--backend takes sqlite and/or postgresql")
    seconds = args.minutes * 60 / len(backends)
    outcomes = [run_backend(b, seconds, args.round, args.canary_every) for b in backends]
    command = "python -m bench.hostile " + " ".join(argv if argv is not None else sys.argv[1:])
    report = table(outcomes, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    failed = sum(len(o.failures) + len(o.log_problems) for o in outcomes)
    print(f"failures: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
