"""Markdown tables, PNG plots and bench/results/README.md from a run's results (last-run.json).

Rows of repeated runs are reduced to medians per (target, step). `python -m bench.report` rewrites
the tables and plots from bench/results/last-run.json without running anything.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

P99_BOUND_MS = 25.0


def med(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.median(vals)


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(out)


# ---- fan-out ------------------------------------------------------------------------------------


def fanout_medians(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[(r["target"], r["offered_s"])].append(r)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (target, offered), rs in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out[target].append({
            "offered_s": offered,
            "runs": len(rs),
            "delivered_s": med([r["delivered_s"] for r in rs]),
            "p50_ms": med([r["p50_ms"] for r in rs]),
            "p99_ms": med([r["p99_ms"] for r in rs]),
            "p999_ms": med([r["p999_ms"] for r in rs]),
            "loss": med([r["loss"] for r in rs]),
            "partials_dropped": med([r.get("partials_dropped", 0) for r in rs]),
            "cpu_pct": med([r["cpu_pct"] for r in rs]),
            "load_cpu_pct": med([r["load_cpu_pct"] for r in rs]),
            "runq_wait_pct": med([r.get("runq_wait_pct") for r in rs]),
            "rss_mib": med([r["rss_mib"] for r in rs]),
            "closes": sum(sum(r["closes"].values()) for r in rs),
        })
    return out


def best_rate(steps: list[dict[str, Any]], bound: float | None = P99_BOUND_MS) -> float:
    """Highest ladder step sustained: no loss, no close, ≥ 95 % of the offered rate received in the
    window, and p99 ≤ bound (None: any latency).

    The step, not the count received in the window: that count is the offered rate give or take the
    window's edges (±0.3 %), and where two steps are 1.2× apart (50k / 60k, 125k / 150k) that noise
    alone decided whether a ratio read 1.199× or 1.201× (the full run on f5dfba6: 149,856 against
    124,976 received, at the steps 150k and 125k). The received counts stay in the per-step tables."""
    ok = [s["offered_s"] for s in steps
          if s["p99_ms"] is not None and (s["loss"] or 0) == 0 and not s["closes"]
          and s["delivered_s"] >= 0.95 * s["offered_s"] and (bound is None or s["p99_ms"] <= bound)]
    return max(ok) if ok else 0.0


def best_rates_per_run(rows: list[dict[str, Any]], bound: float | None = P99_BOUND_MS) -> dict[str, list[float]]:
    per: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per[(r["target"], r.get("run", 0))].append({**r, "closes": sum(r["closes"].values())})
    out: dict[str, list[float]] = defaultdict(list)
    for (target, _), steps in sorted(per.items()):
        out[target].append(best_rate(steps, bound))
    return out


def fanout_section(rows: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    meds = fanout_medians(rows)
    per_run = best_rates_per_run(rows)
    parts = ["## Fan-out: 1,000 subscribers, 100 live calls, 10 subscribers a call\n",
             "Offered = deliveries/s asked of the producer (events/s × 10). Delivered = deliveries received "
             "per second inside the window. Latency: producer `sent_ns` → subscriber receive. Loss: non-partial "
             "events sent in the window and never delivered. Server waited %: time the server's threads were runnable "
             "but waiting for the (shared) core: other work on the machine. Medians over runs.\n"]
    best: dict[str, float] = {}
    for target, steps in meds.items():
        parts.append(f"### {target}\n")
        parts.append(table(
            ["offered/s", "delivered/s", "p50 ms", "p99 ms", "p99.9 ms", "loss", "partials dropped", "server CPU %",
             "server waited %", "load CPU %", "RSS MiB", "closes", "runs"],
            [[s["offered_s"], s["delivered_s"], s["p50_ms"], s["p99_ms"], s["p999_ms"], f"{s['loss']:.4f}",
              s["partials_dropped"], s["cpu_pct"], s["runq_wait_pct"], s["load_cpu_pct"], s["rss_mib"], s["closes"],
              s["runs"]]
             for s in steps]))
        parts.append("")
        best[target] = med(per_run.get(target, [0.0])) or 0.0
    parts.append("### Highest rate with p99 ≤ 25 ms and no loss (median of runs' best)\n")
    parts.append("A rate here is a ladder step the server sustained (≥ 95 % of it received, no loss); what "
                 "each step received is in the tables above. The 25 ms bound is the issue's; on a shared 2-core "
                 "machine it is often broken by other work, so the same ratio at p99 ≤ 100 ms and the rate each server keeps up with (≥ 95 % of offered, no loss, "
                 "any latency) are given too.\n")
    at100 = {t: med(v) or 0.0 for t, v in best_rates_per_run(rows, 100.0).items()}
    cap = {t: med(v) or 0.0 for t, v in best_rates_per_run(rows, None).items()}
    ref = best.get("bare-websockets") or 0
    sio = best.get("python-socketio") or 0
    ref100, cap_ref = at100.get("bare-websockets") or 0, cap.get("bare-websockets") or 0

    def x(a: float, b: float) -> str:
        return f"{a / b:.2f}×" if b else "–"

    rows_out = []
    for target, rate in best.items():
        runs = per_run.get(target, [])
        rows_out.append([target, rate, ", ".join(f"{r:,.0f}" for r in runs), x(rate, ref), x(rate, sio),
                         at100.get(target, 0.0), x(at100.get(target, 0.0), ref100), cap.get(target, 0.0),
                         x(cap.get(target, 0.0), cap_ref)])
    parts.append(table(["target", "p99 ≤ 25 ms: deliveries/s", "per run", "vs bare-websockets", "vs python-socketio",
                        "p99 ≤ 100 ms", "vs bare", "keeps up with", "vs bare"], rows_out))
    parts.append("")
    return "\n".join(parts), best


def plot_fanout(rows: list[dict[str, Any]], out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    meds = fanout_medians(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, key, title in ((axes[0], "p50_ms", "p50"), (axes[1], "p99_ms", "p99")):
        for target, steps in meds.items():
            xs = [s["delivered_s"] / 1000 for s in steps if s[key] is not None]
            ys = [max(s[key], 0.05) for s in steps if s[key] is not None]
            ax.plot(xs, ys, marker="o", label=target)
        ax.axhline(P99_BOUND_MS, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("deliveries/s (thousands)")
        ax.set_title(f"fan-out {title} latency vs throughput")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency, ms (log)")
    axes[1].legend()
    fig.tight_layout()
    path = out / "fanout-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_connections(rows: list[dict[str, Any]], out: Path) -> str | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[r["target"]].append(r["kib_per_idle_conn"])
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(by)
    ax.bar(names, [med(by[n]) for n in names], color=["C0", "C1", "C2", "C3"][: len(names)])
    ax.axhline(20, color="grey", linestyle="--", linewidth=1, label="target 20 KiB")
    ax.set_ylabel("RSS per idle connection, KiB")
    ax.set_title(f"idle connections ({rows[0]['requested']:,} sockets)")
    ax.legend()
    fig.tight_layout()
    path = out / "connections-rss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ---- the other scenarios ---------------------------------------------------------------------------


def connections_section(rows: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["target"]].append(r)
    body = []
    for target, rs in by.items():
        body.append([target, med([r["connected"] for r in rs]), med([r["connect_s"] for r in rs]),
                     med([r["conn_per_s"] for r in rs]), med([r["rss_base_mib"] for r in rs]),
                     med([r["rss_idle_mib"] for r in rs]), med([r["kib_per_idle_conn"] for r in rs]),
                     med([r["idle_cpu_pct"] for r in rs]), med([r["active_delivered_s"] for r in rs]),
                     med([r["active_p50_ms"] for r in rs]), med([r["active_p99_ms"] for r in rs]),
                     med([r["active_p999_ms"] for r in rs]),
                     f"{med([r['active_loss'] for r in rs]) or 0:.4f}", med([r["active_cpu_pct"] for r in rs]),
                     med([r["kib_per_active_conn"] for r in rs]), len(rs)])
    n = rows[0]["requested"] if rows else 0
    return (f"## Connections: {n:,} sockets on one node, each subscribed to one call (10 a call)\n\n"
            "Idle: RSS growth over the warmed-up server divided by the sockets. Active: one event per call per "
            "second (= one delivery per socket per second).\n\n"
            + table(["target", "connected", "connect s", "conn/s", "RSS base MiB", "RSS idle MiB", "KiB/idle conn",
                     "idle CPU %", "active deliveries/s", "p50 ms", "p99 ms", "p99.9 ms", "loss", "active CPU %",
                     "KiB/active conn", "runs"], body) + "\n")


def campaign_section(rows: list[dict[str, Any]]) -> str:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["target"], r["variant"])].append(r)
    body = [[t, v, med([r["subscribe_s"] for r in rs]), med([r["delivered_s"] for r in rs]),
             med([r["p50_ms"] for r in rs]), med([r["p99_ms"] for r in rs]), med([r["p999_ms"] for r in rs]),
             f"{med([r['loss'] for r in rs]):.4f}", med([r["cpu_pct"] for r in rs]), len(rs)]
            for (t, v), rs in by.items()]
    return ("## Campaign: one socket subscribed to 10,000 calls, 2,000 events/s spread over them\n\n"
            "callstream runs with `CALLSTREAM_CLIENT_RATE=100000` here: at the default 50 messages/s the "
            "10,000 subscribes alone take 200 s.\n\n"
            + table(["target", "subscriptions", "subscribe s", "deliveries/s", "p50 ms", "p99 ms", "p99.9 ms", "loss",
                     "server CPU %", "runs"], body) + "\n")


def merge_codes(rows: list[dict[str, Any]]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for r in rows:
        for k, v in r["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
    return codes


def storm_section(rows: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["target"]].append(r)
    body = [[t, med([r["clients"] for r in rs]), rs[0]["calls"], rs[0]["events_s"], med([r["reconnected"] for r in rs]),
             sum(r["failed"] for r in rs), med([r["p50_caught_up_s"] for r in rs]), med([r["p99_caught_up_s"] for r in rs]),
             med([r["all_caught_up_s"] for r in rs]), ", ".join(f"{r['all_caught_up_s']:.1f}" for r in rs),
             sum(r["gaps"] for r in rs), sum(r["dups"] for r in rs), sum(r["missing_tail"] for r in rs),
             json.dumps(merge_codes(rs)), len(rs)] for t, rs in by.items()]
    return ("## Reconnect storm: every client drops at once and resumes with `since`\n\n"
            "Each client is subscribed to one call (10 a call) while a producer publishes durable events "
            "(no partials). All sockets are aborted at once and reopened at once; a client is caught up when its "
            "`subscribed` (sent after the replay) arrives. Gaps/dups: per-client seq continuity across the drop; "
            "missing: events the producer sent that a client never got.\n\n"
            + "Medians over runs (gaps, dups, missing and failures summed over runs).\n\n"
            + table(["target", "clients", "calls", "events/s", "reconnected", "failed", "p50 caught up s",
                     "p99 s", "all caught up s", "all caught up, per run", "gaps", "dups", "missing", "closes",
                     "runs"], body) + "\n")


def ingest_section(rows: list[dict[str, Any]]) -> str:
    by: dict[tuple[str, str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["target"], cores(r), r["batch"], r["window_frames"])].append(r)
    body = [[t, c, b, w, med([r["acked_s"] for r in rs]), med([r["cpu_pct"] for r in rs]),
             med([r.get("runq_wait_pct") for r in rs]), med([r.get("load_cpu_pct") for r in rs]),
             med([r["rss_mib"] for r in rs]), sum(r["errors"] for r in rs), len(rs)] for (t, c, b, w), rs in by.items()]
    return ("## Ingest: events/s through /v1/ingest, acknowledged (= sequenced and durably stored)\n\n"
            "4 producer sockets (2 processes × 2), each keeping `frames in flight` frames of `events/frame` events "
            "unacknowledged (a closed loop: with too few in flight, the commit latency, not the server, bounds it, "
            "so frames of 100 run at each `--ingest-window` and the targets take each target's best; the "
            "publisher's own default allows 10,000 events in flight a socket); "
            "the call mix is 40 % partials (not stored), 60 % stored. `callstream+bench-no-store` is the same "
            "server with bench/patches/bench-no-store.diff (the commit writes nothing). Each target runs pinned to "
            "one core, as in the other scenarios, and not pinned (both cores, shared with the load generator, "
            "which stays on its core): the embedded store's writer is a process of its own, which only the "
            "second reading lets run beside the node. Server CPU % includes that process; waited % is the "
            "time the server's threads were runnable but another process had the core (run-queue wait); load CPU % "
            "is the producers' processes' (both on the load's core: near 100 % there means the load, not the "
            "server, sets the rate).\n\n"
            + table(["target", "node CPUs", "events/frame", "frames in flight", "events/s acked", "server CPU %",
                     "waited %", "load CPU %", "RSS MiB", "errors", "runs"], body) + "\n")


def cores(row: dict[str, Any]) -> str:
    """Which CPUs an ingest row's node had: a taskset list, or `any` (not pinned)."""
    return str(row.get("node_cpus", "the run's --server-cpus"))


@dataclass(frozen=True)
class TwoNodeStep:
    offered: int
    one: float  # median p99 ms over the runs that measured this step, saturated ones as measured
    two: float
    one_saturated: int  # runs that saturated here or before (a ladder stops at its first saturated step)
    two_saturated: int
    runs: int

    @property
    def ratio(self) -> float:
        return self.two / self.one if self.one else float("inf")

    def note(self) -> str:
        parts = [f"{label} saturated in {n} of {self.runs}" for label, n in
                 (("one node", self.one_saturated), ("two nodes", self.two_saturated)) if n]
        return "; ".join(parts)


def twonode_ratios(rows: list[dict[str, Any]]) -> list[TwoNodeStep]:
    """p99 of two nodes against one at each rate, medians over runs, where either kept up in most runs.

    A saturated step keeps its measured p99 in the median: leaving it out would compare one side's
    surviving runs with all of the other's (the last full run's one node kept up with 40k in 1 run
    of 3, two nodes in 3 of 3). A step where both saturated in most runs compares nothing and is left out.
    """
    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get("p99_ms") is not None]
    runs = {n: {r.get("run", 0) for r in ok if r.get("nodes", 2) == n} for n in (1, 2)}
    count = max(len(runs[1]), len(runs[2]))
    out = []
    for offered in sorted({r["offered_s"] for r in ok}):
        here = {n: [r for r in ok if r.get("nodes", 2) == n and r["offered_s"] == offered] for n in (1, 2)}
        if not here[1] or not here[2]:
            continue
        saturated = {n: len(runs[n]) - sum(not r["saturated"] for r in here[n]) for n in (1, 2)}
        if saturated[1] * 2 > len(runs[1]) and saturated[2] * 2 > len(runs[2]):
            continue
        out.append(TwoNodeStep(offered, statistics.median(r["p99_ms"] for r in here[1]),
                               statistics.median(r["p99_ms"] for r in here[2]), saturated[1], saturated[2], count))
    return out


def twonode_section(rows: list[dict[str, Any]]) -> str:
    pending = [r for r in rows if r.get("status", "ok") != "ok"]
    if pending:
        return "## Two nodes on Redis + PostgreSQL\n\n" + "\n".join(f"- {r['status']}" for r in pending) + "\n"
    out = ["## Two nodes on Redis + PostgreSQL\n",
           "1,000 subscribers (10 a call, 100 calls) and two producer processes. One node: all of them on it. "
           "Two nodes: 500 on each (5 a call on each node), and one producer process of 5 sockets on each "
           "node, for half of the calls each, as a load balancer would spread them: half of every call's "
           "deliveries cross Redis. The nodes are not pinned (`--node-cpus`), the load is; both rows use the "
           "same Redis and PostgreSQL, in the same run. Node 0's CPU is over the window, node 1's over the "
           "whole step.\n"]
    for name in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == name]
        body = [[r["offered_s"], r["delivered_s"], r["p50_ms"], r["p99_ms"], r["p999_ms"], f"{r['loss']:.4f}",
                 r["cpu_pct"], r.get("node1_cpu_pct") if r.get("node1_cpu_pct") is not None else "–",
                 sum(r["closes"].values()), r.get("run", 0) + 1] for r in mine]
        out.append(f"### {name}\n\n" + table(["offered/s", "delivered/s", "p50 ms", "p99 ms", "p99.9 ms", "loss",
                                                "node-0 CPU %", "node-1 CPU %", "closes", "run"], body) + "\n")
    ratios = twonode_ratios(rows)
    if ratios:
        out.append("### p99, two nodes against one (median of runs; saturated runs count as measured; "
                   "steps where both saturated in most runs left out)\n\n" + table(
            ["offered/s", "one node p99 ms", "two nodes p99 ms", "ratio", "saturated"],
            [[x.offered, x.one, x.two, f"{x.ratio:.2f}×", x.note() or "–"] for x in ratios]) + "\n")
    return "\n".join(out)


def control_section(rows: list[dict[str, Any]]) -> str:
    """The control round trip (requester → producer → control.result back), medians over runs."""
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = ["## Live control: round trip\n",
             "A supervisor's `say` until its `control.result` is back on the supervisor's socket, 10 supervisors "
             "× 4 requests/s, the producer answering at once; the background is fan-out's (1,000 subscribers, "
             "100 calls). Two nodes: supervisors on node 0, the producer on node 1 (every request and result "
             "crosses Redis).\n"]
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        by[(r["target"], r["background_offered_s"])].append(r)
    body = []
    for (target, offered), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        body.append([target, offered, med([r["background_delivered_s"] for r in rs]),
                     med([r["background_p99_ms"] for r in rs]), med([r["rtt_p50_ms"] for r in rs]),
                     med([r["rtt_p99_ms"] for r in rs]), med([r["rtt_max_ms"] for r in rs]),
                     med([r["ack_p99_ms"] for r in rs]), sum(r["samples"] for r in rs),
                     sum(r["errors"] + r["unanswered"] for r in rs), len(rs)])
    lines.append(table(["target", "background offered/s", "delivered/s", "fan-out p99 ms", "round trip p50 ms",
                        "round trip p99 ms", "max ms", "ack p99 ms", "requests", "errors + unanswered", "runs"],
                       body))
    lines += [f"- {r['target']}: {r['status']}" for r in rows if r.get("status") != "ok"]
    return "\n".join(lines) + "\n"


def profile_section(profiles: dict[str, Any] | None) -> str:
    if not profiles:
        return ""
    out = ["## Profiles (py-spy, 200 Hz, all threads; idle helper threads left out)\n"]
    for name, prof in profiles.items():
        if not prof.get("samples"):
            continue
        out.append(f"### {prof['label']}\n")
        out.append(f"`profile-{name}.svg` (flame graph), `profile-{name}.txt` (collapsed stacks); "
                   f"{prof['samples']:,} busy samples.\n")
        out.append("By task (outermost callstream frame):\n")
        out.append(table(["%", "task"], [[f"{p:.1f}", f"`{f}`"] for f, p in prof.get("tasks", [])]))
        out.append("\nInclusive (function anywhere on the stack; loop and CLI frames left out):\n")
        out.append(table(["%", "function"], [[f"{p:.1f}", f"`{f}`"] for f, p in prof["inclusive"][:20]]))
        out.append("\nSelf (the leaf):\n")
        out.append(table(["%", "function"], [[f"{p:.1f}", f"`{f}`"] for f, p in prof["self"][:15]]))
        out.append("")
    return "\n".join(out) + "\n"


_BORING = ("runpy", "typer/", "_click/", "click/", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py",
           "uvloop/", "callstream/cli.py", "callstream/__main__.py", "threading.py", "<frozen", "server/serve.py")
_OURS = re.compile(r"[(/]callstream/")
_IDLE_LEAVES = ("_connection_worker_thread", "_worker (concurrent/futures/thread.py)", "SimpleQueue.get", "select (")


def top_frames(raw: str, n: int = 25) -> dict[str, Any]:
    """Shares per function and per task from py-spy's collapsed stacks (`a;b;c count`, --threads).

    Samples of idle helper threads (aiosqlite's and the executor's workers waiting on their queue)
    are dropped. `tasks`: each sample is charged to its outermost callstream frame (the coroutine a
    task runs: the writer task, the store writer, the ingest reader, the handshake, …).
    """
    inclusive: dict[str, int] = defaultdict(int)
    self_: dict[str, int] = defaultdict(int)
    tasks: dict[str, int] = defaultdict(int)
    threads: dict[str, int] = defaultdict(int)
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        raw_frames = stack.split(";")
        thread = "main"
        if raw_frames and raw_frames[0].startswith(("thread (", "process ")):
            thread = raw_frames.pop(0)
        frames = [_name(f) for f in raw_frames]
        if not frames or frames[-1].startswith(_IDLE_LEAVES) or any(f.startswith("_connection_worker_thread")
                                                                      for f in frames[-1:]):
            idle += c
            continue
        total += c
        threads[thread] += c
        for f in set(frames):
            if not any(b in f for b in _BORING):
                inclusive[f] += c
        self_[frames[-1]] += c
        task = next((_name(f) for f in raw_frames if _OURS.search(f) and not any(b in f for b in _BORING)), None)
        if task is None:
            task = next((f for f in frames if not any(b in f for b in _BORING)), frames[-1])
        tasks[task] += c
    if not total:
        return {"inclusive": [], "self": [], "tasks": [], "samples": 0}

    def top(d: dict[str, int], k: int = n) -> list[tuple[str, float]]:
        return [(f, c * 100 / total) for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:k]]

    return {"inclusive": top(inclusive), "self": top(self_), "tasks": top(tasks, 15), "samples": total,
            "idle_samples": idle, "threads": top(threads, 6)}


def _name(frame: str) -> str:
    # py-spy: "function (path/to/module.py:123)" → "function (pkg/module.py)"
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({short})" if where else func


# ---- the whole report ------------------------------------------------------------------------------


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sc = results.get("scenarios", {})
    meta = results.get("meta", {})
    sections: list[str] = []
    plots: list[str] = []
    best: dict[str, float] = {}
    if sc.get("fanout"):
        text, best = fanout_section(sc["fanout"])
        sections.append(text)
        p = plot_fanout(sc["fanout"], out)
        if p:
            plots.append(p)
    if sc.get("connections"):
        sections.append(connections_section(sc["connections"]))
        p = plot_connections(sc["connections"], out)
        if p:
            plots.append(p)
    if sc.get("campaign"):
        sections.append(campaign_section(sc["campaign"]))
    if sc.get("storm"):
        sections.append(storm_section(sc["storm"]))
    if sc.get("ingest"):
        sections.append(ingest_section(sc["ingest"]))
    if sc.get("twonode"):
        sections.append(twonode_section(sc["twonode"]))
    if sc.get("control"):
        sections.append(control_section(sc["control"]))
    sections.append(profile_section(results.get("profiles")))
    for key, fn in (("connections", connections_section), ("campaign", campaign_section), ("storm", storm_section),
                    ("ingest", ingest_section), ("twonode", twonode_section), ("control", control_section)):
        if sc.get(key):
            (out / f"{key}.md").write_text(fn(sc[key]))
    if sc.get("fanout"):
        (out / "fanout.md").write_text(fanout_section(sc["fanout"])[0])
    targets = targets_section(results, best)
    head = [
        "# Benchmark results (last run)\n",
        f"- command: `{meta.get('argv', 'python -m bench.run')}` — {meta.get('date')}, "
        f"{meta.get('elapsed_s', '?')} s; {'quick (1 run, short steps)' if meta.get('quick') else 'full'}",
        f"- machine: {meta.get('cpus')} cores shared with other work (load average at start "
        f"{' '.join(meta.get('loadavg_at_start', []))}); servers pinned to CPU {meta.get('server_cpus')!r}, "
        f"load generator to CPU {meta.get('load_cpus')!r}",
        f"- versions: Python {meta.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + f", {meta.get('nginx')}",
        "",
    ]
    head += [f"- failed: {f}" for f in results.get("failures", [])]
    head += [f"- note: {n}" for n in meta.get("notes", [])]
    head += [f"![{p}]({p})" for p in plots]
    others = sorted(d.name for d in out.iterdir() if d.is_dir() and (d / "README.md").exists())
    if others:
        head += ["", "Other runs kept beside this one (each folder has its own README.md): "
                 + ", ".join(f"[{d}]({d}/README.md)" for d in others)]
    (out / "README.md").write_text("\n".join(head) + "\n\n" + targets + "\n" + "\n".join(sections))


def targets_section(results: dict[str, Any], best: dict[str, float]) -> str:
    sc = results.get("scenarios", {})
    lines = ["## Targets (issue 6)\n", "| target | measured | met? |", "|---|---|---|"]
    ref = best.get("bare-websockets")
    sio = best.get("python-socketio")
    # A reference that met the bound at no step holds it only below the ladder's lowest step: the
    # ratio is then more than the rate over that step, which is enough when that is over the factor.
    lowest: dict[str, int] = {}
    for row in sc.get("fanout", []):
        lowest[row["target"]] = min(lowest.get(row["target"], row["offered_s"]), row["offered_s"])

    def against(rate: float, reference: str, factor: float) -> tuple[str, bool]:
        got = best.get(reference) or 0.0
        if got:
            return f"{rate:,.0f} vs {got:,.0f}/s = {rate / got:.2f}×", rate >= factor * got
        floor = lowest.get(reference)
        if not floor or not rate:
            return f"{rate:,.0f} vs 0/s (neither met a step)", False
        return (f"{rate:,.0f} vs under {floor:,.0f}/s (the reference met no step; its lowest was {floor:,.0f}) "
                f"= more than {rate / floor:.2f}×", rate >= factor * floor)

    for name, rate in best.items():
        if not name.startswith("callstream"):
            continue
        if name.split("+")[0] == "callstream-sse":  # issue 27: against the WebSocket of the same server
            socket = name.replace("callstream-sse", "callstream", 1)
            if socket in best:
                text, ok = against(rate, socket, 0.7)
                lines.append(f"| SSE fan-out ≥ 0.7× the WebSocket's ({socket}) at p99 ≤ 25 ms ({name}) | {text} | "
                             f"{'met' if ok else 'not met'} |")
            else:
                lines.append(f"| SSE fan-out ≥ 0.7× the WebSocket's ({socket}) at p99 ≤ 25 ms ({name}) | "
                             f"not measured: the run has no {socket} target to compare | not met |")
            continue
        if ref is not None:
            text, ok = against(rate, "bare-websockets", 1.2)
            lines.append(f"| fan-out ≥ 1.2× bare-websockets at p99 ≤ 25 ms ({name}) | {text} | "
                         f"{'met' if ok else 'not met'} |")
        if sio is not None:
            text, ok = against(rate, "python-socketio", 3.0)
            lines.append(f"| fan-out ≥ 3× python-socketio at p99 ≤ 25 ms ({name}) | {text} | "
                         f"{'met' if ok else 'not met'} |")
    conns = [r for r in sc.get("connections", []) if r["target"] == "callstream"]
    if conns:
        kibs = [r["kib_per_idle_conn"] for r in conns]
        connected, kib = min(r["connected"] for r in conns), med(kibs)
        ok = connected >= 15000 and kib <= 20
        lines.append(f"| 15,000 connections ≤ 20 KiB RSS each | {connected:,} sockets, {kib:.1f} KiB each "
                     f"(median of {len(conns)}: {', '.join(f'{v:.1f}' for v in kibs)}) | "
                     f"{'met' if ok else 'not met'}{'' if connected >= 15000 else ' (fewer sockets in this run)'} |")
    for name in sorted({r["target"] for r in sc.get("campaign", []) if r["target"].startswith("callstream")}):
        camp = [r for r in sc["campaign"] if r["target"] == name and r["variant"].startswith("10")]
        if not camp:
            continue
        p99 = med([r["p99_ms"] for r in camp])
        loss = med([r["loss"] for r in camp])
        ok = p99 is not None and p99 <= 50 and not loss
        lines.append(f"| campaign p99 ≤ 50 ms at 2,000 events/s ({name}) | p99 {fmt(p99)} ms, loss {loss:.4f} | "
                     f"{'met' if ok else 'not met'} |")
    for name in sorted({r["target"] for r in sc.get("storm", []) if r["target"].startswith("callstream")}):
        rs = [r for r in sc["storm"] if r["target"] == name]
        took = med([r["all_caught_up_s"] for r in rs])
        bad = {k: sum(r[k] for r in rs) for k in ("gaps", "dups", "missing_tail", "failed")}
        ok = min(r["clients"] for r in rs) >= 10000 and took is not None and took <= 10 and not any(bad.values())
        lines.append(f"| reconnect storm: 10,000 back and caught up ≤ 10 s, nothing missing ({name}) | "
                     f"{min(r['clients'] for r in rs):,} clients in {fmt(took)} s (median of {len(rs)}: "
                     f"{', '.join(fmt(r['all_caught_up_s']) for r in rs)}), gaps {bad['gaps']}, dups {bad['dups']}, "
                     f"missing {bad['missing_tail']}, failed {bad['failed']} | {'met' if ok else 'not met'} |")
    ing = sc.get("ingest", [])
    for name, cpus in sorted({(r["target"], cores(r)) for r in ing if not r["target"].endswith("+bench-no-store")}):
        node = "node not pinned" if cpus == "any" else f"node pinned to CPU {cpus}"

        def acked(target: str, node_cpus: str = cpus) -> tuple[Any, Any]:
            """(median events/s, frames in flight) at the window where the target took the most."""
            per_window = {w: med([r["acked_s"] for r in ing if r["target"] == target and cores(r) == node_cpus
                                  and r["batch"] == 100 and r["window_frames"] == w])
                          for w in {r["window_frames"] for r in ing if r["batch"] == 100}}
            found = [(v, w) for w, v in per_window.items() if v is not None]
            return max(found) if found else (None, None)

        (stored, w_stored), (bare, w_bare) = acked(name), acked(name + "+bench-no-store")
        if stored is not None:
            lines.append(f"| ingest ≥ 30,000 events/s stored ({name}, {node}) | {stored:,.0f} events/s "
                         f"(100 a frame, {w_stored} in flight) | {'met' if stored >= 30000 else 'not met'} |")
        if stored is not None and bare:
            lines.append(f"| ingest stored ≥ 0.8× store disabled ({name}, {node}; each at its best window) | "
                         f"{stored:,.0f} ({w_stored} in flight) / {bare:,.0f} ({w_bare}) = "
                         f"{stored / bare:.2f}× | {'met' if stored >= 0.8 * bare else 'not met'} |")
    two = [r for r in sc.get("twonode", []) if r.get("status") == "ok"]
    ratios = twonode_ratios(two)
    if ratios:
        worst = max(x.ratio for x in ratios)
        lines.append("| two nodes p99 ≤ 2× single node at the same load (Redis + PostgreSQL) | "
                     + ", ".join(f"{x.offered:,}/s: {x.two:.1f} vs {x.one:.1f} ms = {x.ratio:.2f}×"
                                 + (f" ({x.note()})" if x.note() else "") for x in ratios)
                     + f" | {'met' if worst <= 2.0 else 'not met'} |")
    elif two:
        lines.append("| two nodes p99 ≤ 2× single node at the same load | no rate both kept up with | not met |")
    elif sc.get("twonode"):
        lines.append("| two nodes on Redis + PostgreSQL | pending | – |")
    lines += control_targets(sc.get("control", []))
    return "\n".join(lines) + "\n"


def control_targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 24: p99 ≤ 20 ms on one node while it fans out 100k deliveries/s; ≤ 40 ms across two."""
    lines = []
    one = [r for r in rows if r.get("status") == "ok" and r["nodes"] == 1 and r["background_offered_s"] >= 100_000]
    if one:
        p99 = med([r["rtt_p99_ms"] for r in one])
        got = med([r["background_delivered_s"] for r in one])
        ok = p99 is not None and p99 <= 20 and got >= 95_000
        lines.append(f"| control round trip p99 ≤ 20 ms on one node fanning out 100k deliveries/s | p99 {fmt(p99)} ms "
                     f"while delivering {fmt(got)}/s | {'met' if ok else 'not met'} |")
    two = [r for r in rows if r.get("status") == "ok" and r["nodes"] == 2]
    if two:
        worst = max((r for r in two), key=lambda r: r["rtt_p99_ms"] or 1e9)
        ok = all(r["rtt_p99_ms"] is not None and r["rtt_p99_ms"] <= 40 for r in two)
        lines.append(f"| control round trip p99 ≤ 40 ms across two nodes on Redis | worst p99 {fmt(worst['rtt_p99_ms'])} ms "
                     f"(background {worst['background_offered_s']:,}/s) | {'met' if ok else 'not met'} |")
    return lines


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    write(json.loads((folder / "last-run.json").read_text()), folder)
