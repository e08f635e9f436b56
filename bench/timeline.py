"""Where in a step's window the slow deliveries were sent, beside what the server logged then.

A step's p99 says how many deliveries were late, not when or why. Run a ladder with
`BENCH_TIMELINE=1` (each step writes `timeline-<target>-<offered>-<ms>.json` into the run's
results: per 10 ms of send time, deliveries, those over 25 ms and the worst) and `BENCH_KEEP=1`
(the server's log stays in /tmp/bench-<target>-*/server.log), on a patch that logs what it suspects
with a millisecond epoch timestamp (`diag-timeline.diff`: journal folds and collections over
1 ms). Then

    python -m bench.timeline /tmp/bench-callstream+diag-timeline-*/server.log \\
        'bench/results/NAME/timeline-callstream*.json'

prints each step's late 10 ms bins and the logged lines from 60 ms before to 40 ms after each.
Late deliveries that bunch into the bins around a logged line were delayed by that work;
late ones spread evenly over the window are a core that is simply full.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path
from typing import Any

from bench.report import P99_BOUND_MS

_LOGGED = re.compile(r"^\S+ \S+ (\d{13})\b")  # "<WHAT> <phase> <epoch ms> …"


def logged_lines(path: str) -> list[tuple[int, str]]:
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if m := _LOGGED.match(line):
            out.append((int(m.group(1)), line.strip()))
    return out


def report(timeline: dict[str, Any], logged: list[tuple[int, str]]) -> list[str]:
    bins: list[list[int]] = timeline["bins"]
    n = sum(b[1] for b in bins)
    late = sum(b[2] for b in bins)
    lines = [f"== {timeline['target']} at {timeline['offered']:,}/s: p99 {timeline['p99_ms']} ms, "
             f"{late:,} of {n:,} deliveries over {P99_BOUND_MS:g} ms ({late / max(n, 1):.2%})"]
    if not bins:
        return lines
    start, end = bins[0][0], bins[-1][0] + 10
    for at, count, over, worst in bins:
        if over:
            near = [text for t, text in logged if at - 60 <= t <= at + 40]
            lines.append(f"  +{at - start:5d} ms  {count:5d} sent, {over:5d} late, worst {worst / 1000:6.1f} ms"
                         + (f"   {' | '.join(near)}" if near else ""))
    inside = [text for t, text in logged if start <= t <= end]
    lines.append(f"  logged inside the window: {len(inside)} line(s)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server_log", help="the server's log, with epoch-ms stamped lines (diag-timeline.diff)")
    parser.add_argument("timelines", help="glob of timeline-*.json files (quote it)")
    args = parser.parse_args()
    logged = logged_lines(args.server_log)
    files = sorted(glob.glob(args.timelines))
    if not files:
        parser.error(f"no timeline files match {args.timelines!r} (was the ladder run with BENCH_TIMELINE=1?)")
    for name in files:
        print("\n".join(report(json.loads(Path(name).read_text()), logged)))


if __name__ == "__main__":
    main()
