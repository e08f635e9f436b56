"""Run the benchmark suite: `python -m bench.run [scenario…] [--quick] [--runs N] [--targets …]`.

Scenarios: fanout, connections, campaign, storm, ingest, twonode, control (default: all). Every scenario
starts its servers fresh (pinned to `--server-cpus`, default core 0), drives them from load
processes pinned to `--load-cpus` (default core 1), and appends rows to `bench/results/`. See
bench/README.md for what each scenario measures and how.
"""

from __future__ import annotations

import argparse
import array
import itertools
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.loadgen import worker_main
from bench.targets import PROPOSED, ROOT, Target, make, nchan_available

RESULTS = ROOT / "bench/results"
ALL = ["fanout", "connections", "campaign", "storm", "ingest", "twonode", "control"]
ANCHORS = {"nchan", "picows"}
time_ns = time.time_ns


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# ---- load processes ------------------------------------------------------------------------------


class Load:
    """A set of load-generator processes, each driven by (command, kwargs) over a pipe."""

    def __init__(self, n: int, cpus: list[int] | None) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cpus), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.pipes)

    def send(self, i: int, cmd: str, **kwargs: Any) -> None:
        self.pipes[i].send((cmd, kwargs))

    def recv(self, i: int, timeout: float = 600) -> Any:
        if not self.pipes[i].poll(timeout):
            raise TimeoutError(f"load process {i} did not answer")
        status, value = self.pipes[i].recv()
        if status != "ok":
            raise RuntimeError(f"load process {i}: {value}")
        return value

    def call(self, i: int, cmd: str, **kwargs: Any) -> Any:
        self.send(i, cmd, **kwargs)
        return self.recv(i)

    def each(self, idx: list[int], cmd: str, kws: list[dict[str, Any]] | None = None, **kwargs: Any) -> list[Any]:
        """Send `cmd` to every process in `idx` (with kws[n] or kwargs), then collect the answers."""
        for n, i in enumerate(idx):
            self.send(i, cmd, **(kws[n] if kws else kwargs))
        return [self.recv(i) for i in idx]

    def close(self) -> None:
        for i, pipe in enumerate(self.pipes):
            try:
                pipe.send(("exit", {}))
                self.recv(i, 5)
            except Exception:  # noqa: S110 - a dead worker is terminated below
                pass
        for proc in self.procs:
            proc.join(3)
            if proc.is_alive():
                proc.terminate()


def merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    lat = array.array("q")
    late_us = report.P99_BOUND_MS * 1000
    bins: dict[int, list[int]] = {}  # 10 ms of send time → [deliveries, over the p99 bound, worst µs]
    for s in stats:
        chunk = array.array("q")
        chunk.frombytes(s["lat"])
        lat.extend(chunk)
        sent = array.array("q")
        sent.frombytes(s.get("sent", b""))
        for at, us in zip(sent, chunk, strict=False):
            b = bins.setdefault(at // 10_000, [0, 0, 0])
            b[0] += 1
            b[1] += us > late_us
            b[2] = max(b[2], us)
    codes: dict[str, int] = {}
    for s in stats:
        for k, v in s["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
    return {
        "lat": sorted(lat),
        "n": sum(s["n"] for s in stats),
        "n_partial": sum(s["n_partial"] for s in stats),
        "rx": sum(s["rx"] for s in stats),
        "total": sum(s["total"] for s in stats),
        "errors": sum(s["errors"] for s in stats),
        "error_samples": [e for s in stats for e in s["error_samples"]][:5],
        "close_codes": codes,
        "cpu_s": sum(s["cpu_s"] for s in stats),
        "timeline": [[k * 10, *v] for k, v in sorted(bins.items())],  # ms of send time (epoch)
    }


def pct(sorted_lat: list[int], q: float) -> float | None:
    if not sorted_lat:
        return None
    k = min(len(sorted_lat) - 1, int(q * len(sorted_lat)))
    return sorted_lat[k] / 1000.0  # µs → ms


def psql(statement: str) -> subprocess.CompletedProcess[str]:
    """One statement on the bench's PostgreSQL (user postgres at 127.0.0.1), e.g. CREATE DATABASE."""
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", statement], capture_output=True, text=True)


def split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


@dataclass
class _Ladder:
    """A fan-out target that is up, with its load processes, while its ladder runs."""

    target: Target
    load: Load
    producer: int  # the load process publishing
    sub_idx: list[int]  # the load processes subscribing
    connected: int = 0

    def close(self) -> None:
        self.load.close()
        self.target.stop()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.server_cpus = args.server_cpus
        self.load_cpus = [int(c) for c in args.load_cpus.split(",")] if args.load_cpus else None
        self.results: dict[str, Any] = {"meta": self.meta(), "scenarios": {}}
        self.run_tag = time.strftime("%H%M%S")

    def meta(self) -> dict[str, Any]:
        def version(mod: str) -> str:
            try:
                from importlib.metadata import version as v

                return v(mod)
            except Exception:
                return "?"

        nginx = "absent"
        if nchan_available():
            out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
            nginx = out.stderr.strip()
        with open("/proc/loadavg") as fh:
            loadavg = fh.read().split()[:3]
        return {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": " ".join(["python -m bench.run", *sys.argv[1:]]),
            "quick": self.args.quick,
            "cpus": os.cpu_count(),
            "server_cpus": self.args.server_cpus,
            "load_cpus": self.args.load_cpus,
            "loadavg_at_start": loadavg,
            "versions": {m: version(m) for m in ("picows", "websockets", "uvicorn", "starlette", "fastapi",
                                                 "python-socketio", "python-engineio", "matplotlib", "py-spy",
                                                 "orjson", "uvloop")},
            "nginx": nginx,
            "python": sys.version.split()[0],
        }

    def start(self, target: Target, extra_env: dict[str, str] | None = None) -> Target:
        log(f"start {target.name}")
        return target.start(self.server_cpus, extra_env)

    def add(self, scenario: str, row: dict[str, Any]) -> None:
        self.results["scenarios"].setdefault(scenario, []).append(row)
        self.save()

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "last-run.json").write_text(json.dumps(self.results, indent=1))

    # ---- fan-out ------------------------------------------------------------------------------

    def fanout_targets(self) -> list[str]:
        if self.args.targets:
            return self.args.targets.split(",")
        names = ["callstream", "callstream-sse", *(["callstream+proposed"] if PROPOSED else []), "bare", "socketio",
                 "picows"]
        if nchan_available():
            names.append("nchan")
        return names

    def ladder(self) -> list[int]:
        # 10k apart up to 110k, where the bare reference's bound falls on this machine (50k–150k, day by day),
        # then no coarser than an eighth: with 100k / 125k / 150k a pass at one step and a miss at the next
        # made every ratio there 1.20× or 1.25× whatever the servers did in between
        steps = [10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000, 90_000, 100_000, 110_000, 125_000,
                 140_000, 150_000, 175_000, 200_000, 250_000]
        if self.args.steps:
            steps = sorted(int(x) for x in self.args.steps.split(","))
        if self.args.max_rate:
            steps = [s for s in steps if s <= self.args.max_rate]
        return steps

    def fanout(self, run: int) -> None:
        """Every target's ladder, interleaved: all targets are up at once (idle ones cost their core nothing),
        and each step is measured on every target in turn before the next step. This machine's speed drifts
        by tens of percent over minutes (other tenants): a target's whole ladder run after another's put
        them in different phases, and the ratio moved with the phase; a step's targets are seconds apart.
        Each run starts the rotation at another target, so none is always first. `--sequential` runs one
        target's ladder after another's."""
        names = [n for n in self.fanout_targets()
                 if not (run > 0 and n in ANCHORS and not self.args.targets)]  # anchors run once: they frame the scale
        if self.args.sequential:
            for name in names:
                self.fanout_ladders(run, [name])
            return
        turn = run % len(names) if names else 0
        self.fanout_ladders(run, names[turn:] + names[:turn])

    def fanout_ladders(self, run: int, names: list[str]) -> None:
        subs_n, calls_n, per_call = 1000, 100, 10
        warm, window = (1.0, 3.0) if self.quick else (1.0, 4.0)
        live: list[_Ladder] = []
        try:
            for name in names:
                target = make(name)
                try:
                    self.start(target)
                except Exception as exc:
                    log(f"!! {name} did not start: {exc!r}")
                    self.results.setdefault("failures", []).append(f"fanout {name}: {exc!r}")
                    continue
                load = Load(self.args.sub_procs + 1, self.load_cpus)
                producer = len(load) - 1
                sub_idx = list(range(self.args.sub_procs))
                ladder = _Ladder(target, load, producer, sub_idx)
                live.append(ladder)  # from here on, the finally below closes it
                calls = [f"fo{self.run_tag}r{run}c{c:03d}" for c in range(calls_n)]
                groups = [[calls[k % calls_n]] for k in range(subs_n)]
                opened = load.each(sub_idx, "open_subscribers",
                                   kws=[{"dialect": target.dialect, "base": target.base, "token": target.token,
                                         "groups": split(groups, len(sub_idx))[n]} for n in range(len(sub_idx))])
                ladder.connected = connected = sum(o["connected"] for o in opened)
                log(f"{target.name}: {connected} subscribers in {max(o['elapsed'] for o in opened):.1f}s")
                load.call(producer, "start_producer", dialect=target.dialect, base=target.base, token=target.token,
                          calls=calls, conns=10, mix="call", rate=0.0)
                if self.args.profile and name == self.args.profile_target and run == 0:
                    self.profile(target, load, producer, sub_idx, per_call)
            for offered in self.ladder():
                if not live:
                    break
                for ladder in list(live):
                    target = ladder.target
                    row = self.fanout_step(target, ladder.load, ladder.producer, ladder.sub_idx, offered, per_call, warm,
                                           window)
                    row.update(run=run, subscribers=ladder.connected)
                    self.add("fanout", row)
                    log(f"{target.name} {offered:>7,}/s → {row['delivered_s']:>9,.0f}/s p50 {row['p50_ms']} "
                        f"p99 {row['p99_ms']} p99.9 {row['p999_ms']} loss {row['loss']:.4f} "
                        f"cpu {row['cpu_pct']:.0f}% (waited {row['runq_wait_pct']:.0f}%) "
                        f"load-cpu {row['load_cpu_pct']:.0f}%")
                    if row["saturated"]:  # its ladder ends; a backlog must not burn the next target's core
                        live.remove(ladder)
                        ladder.close()
        finally:
            for ladder in live:
                ladder.close()

    def fanout_step(self, target: Target, load: Load, producer: int | list[int], sub_idx: list[int], offered: int,
                    per_call: int, warm: float, window: float) -> dict[str, Any]:
        """One step of a ladder. `producer`: the load process publishing, or several splitting the rate."""
        producers = producer if isinstance(producer, list) else [producer]
        load.each(producers, "set_rate", rate=offered / per_call / len(producers))
        time.sleep(warm)
        t0 = time_ns() + 100_000_000
        t1 = t0 + int(window * 1e9)
        load.each(sub_idx, "window", t0=t0, t1=t1)
        time.sleep(max(0.0, (t0 - time_ns()) / 1e9))
        cpu0, lcpu0 = target.cpu_s(), sum(s["cpu_s"] for s in load.each(sub_idx, "cpu"))
        wait0 = target.runq_wait_s()
        time.sleep(max(0.0, (t1 - time_ns()) / 1e9))
        cpu1, lcpu1 = target.cpu_s(), sum(s["cpu_s"] for s in load.each(sub_idx, "cpu"))
        wait1 = target.runq_wait_s()
        rss = target.rss_kib()
        load.each(producers, "set_rate", rate=0.0)
        merged = self.drain(load, sub_idx)
        counts = load.each(producers, "producer_counts", t0=t0, t1=t1)
        sent = {k: sum(c[k] for c in counts) for k in ("sent", "sent_nonpartial")}
        expected = sent["sent_nonpartial"] * per_call
        loss = 1.0 - merged["n"] / expected if expected else 0.0
        lat = merged["lat"]
        p99 = pct(lat, 0.99)
        delivered = merged["rx"] / window
        if merged["timeline"]:  # BENCH_TIMELINE: each 10 ms of the window's sends, for bench.timeline
            RESULTS.mkdir(parents=True, exist_ok=True)
            out = RESULTS / f"timeline-{target.name}-{offered}-{t0 // 1_000_000}.json"
            out.write_text(json.dumps({"target": target.name, "offered": offered, "p99_ms": p99,
                                       "bins": merged["timeline"]}))
        saturated = (p99 is None or p99 > 500 or loss > 0.01 or delivered < 0.85 * offered
                     or bool(merged["close_codes"]))
        return {
            "target": target.name,
            "offered_s": offered,
            "delivered_s": round(delivered),
            "p50_ms": pct(lat, 0.50),
            "p99_ms": p99,
            "p999_ms": pct(lat, 0.999),
            "loss": max(0.0, loss),
            "partials_dropped": max(0, (sent["sent"] - sent["sent_nonpartial"]) * per_call - merged["n_partial"]),
            "cpu_pct": (cpu1 - cpu0) / window * 100,
            "load_cpu_pct": (lcpu1 - lcpu0) / window * 100,
            "runq_wait_pct": (wait1 - wait0) / window * 100,
            "rss_mib": rss / 1024,
            "closes": merged["close_codes"],
            "errors": merged["errors"],
            "error_samples": merged["error_samples"],
            "saturated": saturated,
        }

    def drain(self, load: Load, sub_idx: list[int], limit: float = 4.0) -> dict[str, Any]:
        """Wait until deliveries stop arriving (or `limit` s), then merge the workers' statistics."""
        deadline = time.monotonic() + limit
        last = -1
        while True:
            time.sleep(0.3)
            total = sum(s["total"] for s in load.each(sub_idx, "cpu"))
            if total == last or time.monotonic() > deadline:
                return merge(load.each(sub_idx, "stats"))
            last = total

    def spy(self, target: Target, name: str, seconds: float) -> list[subprocess.Popen[bytes]]:
        """Start py-spy on the server for `seconds` (flame graph + collapsed stacks), when --profile."""
        if not self.args.profile or not target.name.startswith("callstream"):
            return []
        spy = str(Path(sys.executable).parent / "py-spy")
        # py-spy on the load's cores: on the server's it would take a tenth of that core from it.
        pin = ["taskset", "-c", self.args.load_cpus] if self.args.load_cpus else []
        common = ["--pid", str(target.pid), "--duration", str(int(seconds)), "--rate", "200", "--nonblocking",
                  "--threads"]
        out = RESULTS / f"profile-{name}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(f"{out}.log", "wb") as errors:  # py-spy's own complaints (permissions, a lost pid)
            return [subprocess.Popen([*pin, spy, "record", *common, "-o", f"{out}.svg"], stdout=subprocess.DEVNULL,
                                     stderr=errors),
                    subprocess.Popen([*pin, spy, "record", *common, "--format", "raw", "-o", f"{out}.txt"],
                                     stdout=subprocess.DEVNULL, stderr=errors)]

    def spied(self, procs: list[subprocess.Popen[bytes]], name: str, label: str) -> None:
        for proc in procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        errors = RESULTS / f"profile-{name}.log"
        if errors.exists() and not errors.stat().st_size:
            errors.unlink()  # py-spy had nothing to complain about
        raw = RESULTS / f"profile-{name}.txt"
        if procs and raw.exists():
            self.results.setdefault("profiles", {})[name] = {"label": label, **report.top_frames(raw.read_text())}
            self.save()

    def profile(self, target: Target, load: Load, producer: int, sub_idx: list[int], per_call: int) -> None:
        rate = self.args.profile_rate
        seconds = 8 if self.quick else 15
        log(f"profiling {target.name} at {rate:,} deliveries/s for {seconds}s (py-spy)")
        load.call(producer, "set_rate", rate=rate / per_call)
        time.sleep(1.0)
        spies = self.spy(target, "fanout", seconds)
        self.spied(spies, "fanout", f"{target.name}: fan-out at {rate:,} deliveries/s ({seconds} s)")
        load.call(producer, "set_rate", rate=0.0)
        self.drain(load, sub_idx)

    # ---- connections ----------------------------------------------------------------------------

    def connections(self, run: int) -> None:
        n = self.args.connections or (5000 if self.quick else 15000)
        names = self.args.targets.split(",") if self.args.targets else (
            ["callstream", "callstream~deflate", "bare"] + (["nchan"] if nchan_available() and not self.quick else []))
        for name in names:
            # `~deflate`: the clients offer permessage-deflate, as browsers do (uvicorn accepts it by default).
            deflate = name.endswith("~deflate")
            target = self.start(make(name.removesuffix("~deflate")))
            if deflate:
                target.name += " (clients offer permessage-deflate)"
            procs = max(2, min(4, n // 5000 + 1))
            load = Load(procs + 1, self.load_cpus)
            sub_idx = list(range(procs))
            producer = procs
            try:
                calls = [f"cn{self.run_tag}r{run}c{c:05d}" for c in range(max(1, n // 10))]
                # Warm the server (imports, first allocations) before taking the baseline.
                load.call(0, "open_subscribers", dialect=target.dialect, base=target.base, token=target.token,
                          groups=[[calls[0]]] * 20)
                load.call(0, "close_subscribers")
                time.sleep(1.5)
                rss0 = target.rss_kib()
                groups = [[calls[k % len(calls)]] for k in range(n)]
                spies = self.spy(target, "connect", 8) if run == 0 and not deflate else []
                t = time.monotonic()
                opened = load.each(sub_idx, "open_subscribers",
                                   kws=[{"dialect": target.dialect, "base": target.base,
                                                 "token": target.token, "groups": split(groups, procs)[k],
                                                 "concurrency": 100, "deflate": deflate} for k in range(len(sub_idx))])
                elapsed = time.monotonic() - t
                connected = sum(o["connected"] for o in opened)
                self.spied(spies, "connect", f"{target.name}: opening {n:,} subscriber sockets (first 8 s)")
                time.sleep(3.0)
                rss1 = target.rss_kib()
                cpu_idle0 = target.cpu_s()
                time.sleep(3.0)
                idle_cpu = (target.cpu_s() - cpu_idle0) / 3.0 * 100
                per_conn = (rss1 - rss0) / max(1, connected)
                log(f"{target.name}: {connected}/{n} idle sockets in {elapsed:.1f}s, RSS {rss0 / 1024:.0f} → "
                    f"{rss1 / 1024:.0f} MiB = {per_conn:.1f} KiB/conn, idle cpu {idle_cpu:.0f}%")
                active = {}
                if connected:
                    rate = len(calls) * 1.0  # one event per call per second → n deliveries/s
                    load.call(producer, "start_producer", dialect=target.dialect, base=target.base,
                              token=target.token, calls=calls, conns=10, mix="call", rate=0.0)
                    active = self.fanout_step(target, load, producer, sub_idx, int(rate * 10), 10,
                                              2.0 if self.quick else 3.0, 4.0)
                    log(f"{target.name}: active {active['delivered_s']:,}/s p50 {active['p50_ms']} p99 "
                        f"{active['p99_ms']} loss {active['loss']:.4f} rss {active['rss_mib']:.0f} MiB")
                self.add("connections", {
                    "target": target.name, "run": run, "requested": n, "connected": connected,
                    "failed": sum(o["failed"] for o in opened), "connect_s": elapsed,
                    "conn_per_s": connected / elapsed if elapsed else None,
                    "rss_base_mib": rss0 / 1024, "rss_idle_mib": rss1 / 1024, "kib_per_idle_conn": per_conn,
                    "idle_cpu_pct": idle_cpu,
                    "active_delivered_s": active.get("delivered_s"), "active_p50_ms": active.get("p50_ms"),
                    "active_p99_ms": active.get("p99_ms"), "active_p999_ms": active.get("p999_ms"),
                    "active_loss": active.get("loss"), "active_cpu_pct": active.get("cpu_pct"),
                    "active_rss_mib": active.get("rss_mib"),
                    "kib_per_active_conn": (active["rss_mib"] * 1024 - rss0) / max(1, connected) if active else None,
                    "errors": sum(1 for _ in opened) and active.get("error_samples"),
                })
            finally:
                load.close()
                target.stop()

    # ---- campaign -------------------------------------------------------------------------------

    def campaign(self, run: int) -> None:
        """One socket following 10,000 live calls: 10,000 explicit subscriptions, one `*`, and one
        `*` with `where` on the calls' metadata (every call has campaign=spring, set by its first
        event, so each event is judged by the filter and every one is delivered)."""
        ncalls, rate = 10_000, 2_000
        warm, window = (6.0, 5.0) if self.quick else (6.0, 10.0)
        variants: list[tuple[str, bool | str]] = [
            ("callstream", False), ("callstream", True), ("callstream", "where"), ("bare", False)
        ]
        if PROPOSED:
            variants.insert(3, ("callstream+proposed", False))
        if self.args.targets:
            variants = [(t, False) for t in self.args.targets.split(",")]
        if self.args.campaign_variants:
            wanted = self.args.campaign_variants.split(",")
            names = {False: "explicit", True: "wildcard", "where": "where"}
            variants = [v for v in variants if names[v[1]] in wanted and v[0] == "callstream"]
        where = {"metadata": {"campaign": "spring"}}
        # The default limit (50 client messages/s) would take 200 s to send 10,000 subscribes.
        env = {"CALLSTREAM_CLIENT_RATE": "100000", "CALLSTREAM_CLIENT_BURST": "100000"}
        for name, wildcard in variants:
            target = self.start(make(name), env)
            load = Load(2, self.load_cpus)
            try:
                calls = [f"cp{self.run_tag}r{run}c{c:05d}" for c in range(ncalls)]
                subscribe = ["*"] if wildcard else calls
                t = time.monotonic()
                opened = load.call(0, "open_subscribers", dialect=target.dialect, base=target.base,
                                   token=target.token, groups=[subscribe],
                                   where=where if wildcard == "where" else None)
                sub_s = time.monotonic() - t
                log(f"{target.name}{' *' if wildcard else ''}{' where' if wildcard == 'where' else ''}: 1 socket, "
                    f"{len(subscribe)} subscriptions in {sub_s:.1f}s ({opened})")
                load.call(1, "start_producer", dialect=target.dialect, base=target.base, token=target.token,
                          calls=calls, conns=10, mix="call", rate=0.0,
                          metadata={"campaign": "spring", "agent": "ada"} if target.dialect == "callstream" else None)
                key = {False: "campaign", True: "campaign-wildcard", "where": "campaign-where"}[wildcard]
                spies = self.spy(target, key, warm + window) if run == 0 else []
                row = self.fanout_step(target, load, 1, [0], rate, 1, warm, window)
                self.spied(spies, key, f"{target.name}: campaign, {len(subscribe):,} subscriptions on one socket, "
                           f"{rate:,} events/s (warm-up + window)")
                variant = {False: "10,000 explicit", True: "'*' (wildcard)", "where": "'*' where campaign"}[wildcard]
                row.update(run=run, subscriptions=len(subscribe), subscribe_s=sub_s, variant=variant)
                self.add("campaign", row)
                log(f"{target.name}: {row['delivered_s']:,}/s p50 {row['p50_ms']} p99 {row['p99_ms']} "
                    f"p99.9 {row['p999_ms']} loss {row['loss']:.4f}")
            finally:
                load.close()
                target.stop()

    # ---- reconnect storm ------------------------------------------------------------------------

    def storm(self, run: int) -> None:
        n = self.args.storm or (5000 if self.quick else 10_000)
        rate = 1000.0
        names = self.args.targets.split(",") if self.args.targets else ["callstream", *(["callstream+proposed"] if PROPOSED else [])]
        for name in names:
            target = self.start(make(name))
            procs = 2
            load = Load(procs + 1, self.load_cpus)
            sub_idx, producer = list(range(procs)), procs
            try:
                calls = [f"st{self.run_tag}r{run}c{c:05d}" for c in range(n // 10)]
                groups = [[calls[k % len(calls)]] for k in range(n)]
                opened = load.each(sub_idx, "open_subscribers",
                                   kws=[{"dialect": target.dialect, "base": target.base,
                                                 "token": target.token, "groups": split(groups, procs)[k],
                                                 "concurrency": 200, "track": True} for k in range(len(sub_idx))])
                connected = sum(o["connected"] for o in opened)
                load.call(producer, "start_producer", dialect=target.dialect, base=target.base, token=target.token,
                          calls=calls, conns=10, mix="durable", rate=rate)
                time.sleep(3.0)
                log(f"{target.name}: storm of {connected} sockets (producer at {rate:.0f} events/s)")
                spies = self.spy(target, "storm", 16) if run == 0 else []
                results = load.each(sub_idx, "storm")
                self.spied(spies, "storm", f"{target.name}: reconnect storm of {connected:,} sockets (first 16 s)")
                caught = sorted(t for r in results for t in r["caught_up_ns"])
                time.sleep(2.0)
                load.call(producer, "set_rate", rate=0.0)
                time.sleep(1.0)
                self.drain(load, sub_idx)
                per_call = load.call(producer, "producer_counts")["per_call"]
                seq = load.each(sub_idx, "seq_report", expected=per_call)
                merged = merge(load.each(sub_idx, "stats"))
                row = {
                    "target": target.name, "run": run, "clients": connected, "calls": len(calls),
                    "events_s": rate, "reconnected": sum(r["reconnected"] for r in results),
                    "failed": sum(r["failed"] for r in results),
                    "p50_caught_up_s": caught[len(caught) // 2] / 1e9 if caught else None,
                    "p99_caught_up_s": caught[int(len(caught) * 0.99)] / 1e9 if caught else None,
                    "all_caught_up_s": caught[-1] / 1e9 if caught else None,
                    # When the clients got back, decile by decile: a queue shows as a steady climb,
                    # a stall (everyone waiting on one thing) as a cliff.
                    "caught_up_deciles_s": [round(caught[min(len(caught) - 1, len(caught) * k // 10)] / 1e9, 2)
                                            for k in range(1, 10)] if caught else [],
                    "gaps": sum(s["gaps"] for s in seq), "dups": sum(s["dups"] for s in seq),
                    "missing_tail": sum(s["missing_tail"] for s in seq),
                    "close_codes": merged["close_codes"], "errors": merged["errors"],
                    "error_samples": merged["error_samples"],
                }
                self.add("storm", row)
                log(f"{target.name}: all {row['reconnected']} back in {row['all_caught_up_s']}s "
                    f"(p50 {row['p50_caught_up_s']}), gaps {row['gaps']} dups {row['dups']} "
                    f"missing {row['missing_tail']} failed {row['failed']}")
            finally:
                load.close()
                target.stop()

    # ---- ingest ---------------------------------------------------------------------------------

    def ingest(self, run: int) -> None:
        if self.args.redact:
            self.ingest_redact(run)
            return
        window = 5.0 if self.quick else 8.0
        names = self.args.targets.split(",") if self.args.targets else ["callstream", "callstream+bench-no-store"] + (
            ["callstream+proposed", "callstream+proposed+bench-no-store"] if PROPOSED else [])
        # Pinned to one core (as every other scenario), then not pinned: the embedded store's writer is a
        # process of its own, and a node deployed on this 2-core machine has both cores (the load keeps
        # its own pinning either way).
        pinnings = [self.server_cpus, ""] if self.server_cpus else [""]
        # Producers keep a fixed number of frames in flight (a closed loop), so throughput is at most
        # window / latency: with the store, an ack waits for its commit, and too small a window measures
        # that latency instead of the node. Each window is a row; the targets use each target's best.
        shapes = [(100, w) for w in self.args.ingest_window] + [(1, 64)]
        if self.args.ingest_shapes:
            shapes = self.args.ingest_shapes
        # `--ingest-ids`: each row once without and once with an `id` on every event, back to back.
        id_modes = [False, True] if self.args.ingest_ids else [False]
        # Targets interleaved (each shape on every target in turn, a fresh server each), so that a target and
        # its store-disabled reference are measured seconds apart, in the same phase of this machine's drift.
        for cpus, (batch, win), name, ids in itertools.product(pinnings, shapes, names, id_modes):
            log(f"start {name} (CPUs {cpus or 'any'})")
            target = make(name).start(cpus or None)
            load = Load(2, self.load_cpus)
            try:
                idx = [0, 1]
                load.each(idx, "start_producer", kws=[{
                    "dialect": target.dialect, "base": target.base, "token": target.token,
                    "calls": [f"in{self.run_tag}r{run}b{batch}w{k}c{c:03d}" for c in range(100)],
                    "conns": 2, "mix": "call", "batch": batch, "window": win, "ids": ids} for k in range(len(idx))])
                time.sleep(2.0)
                a0 = sum(c["acked_total"] for c in load.each(idx, "producer_counts"))
                cpu0, wait0 = target.cpu_s(), target.runq_wait_s()
                lcpu0 = sum(s["cpu_s"] for s in load.each(idx, "cpu"))
                time.sleep(window)
                a1 = sum(c["acked_total"] for c in load.each(idx, "producer_counts"))
                cpu1, wait1 = target.cpu_s(), target.runq_wait_s()
                lcpu1 = sum(s["cpu_s"] for s in load.each(idx, "cpu"))
                counts = load.each(idx, "producer_counts")
                stats = merge(load.each(idx, "stats"))
                row = {"target": target.name + ("+ids" if ids else ""), "run": run, "batch": batch, "window_frames": win,
                       "node_cpus": cpus or "any",
                       "producer_sockets": 4, "acked_s": (a1 - a0) / window,
                       "cpu_pct": (cpu1 - cpu0) / window * 100, "runq_wait_pct": (wait1 - wait0) / window * 100,
                       "load_cpu_pct": (lcpu1 - lcpu0) / window * 100, "rss_mib": target.rss_kib() / 1024,
                       "errors": sum(c["errors"] for c in counts) + stats["errors"],
                       "error_samples": stats["error_samples"]}
                self.add("ingest", row)
                log(f"{row['target']} batch {batch} x{win}, CPUs {cpus or 'any'}: {row['acked_s']:,.0f} events/s acked, "
                    f"cpu {row['cpu_pct']:.0f}% (waited {row['runq_wait_pct']:.0f}%) load-cpu {row['load_cpu_pct']:.0f}%")
                load.each(idx, "stop_producer")
            finally:
                load.close()
                target.stop()

    def ingest_redact(self, run: int) -> None:
        """`--redact KINDS`: the cost of redaction as an A/B in one run. Two servers run side by
        side, one with `--redact KINDS`, and take turns under the same closed-loop load (100 events
        a frame, the first `--ingest-window`) in short rounds, the order flipped each round, so
        both see the same phases of a loaded machine; the rows are rounds, the log the medians.
        Each round runs every `--redact-texts`: "plain" (the ingest scenario's utterances) and
        "pii" (two utterances in three carry personal data: the redactor's full path)."""
        warm, window = (1.0, 3.0) if self.quick else (1.5, 4.0)
        win = self.args.ingest_window[0]
        variants = [("callstream", []), (f"callstream --redact {self.args.redact}", ["--redact", self.args.redact])]
        texts = self.args.redact_texts.split(",")
        targets = []
        for label, extra in variants:
            target = make("callstream")
            target.args = extra
            log(f"start {label}")
            targets.append((label, self.start(target)))
        load = Load(2, self.load_cpus)
        taken: dict[tuple[str, str], list[dict[str, Any]]] = {}
        try:
            for round_, text in itertools.product(range(self.args.redact_rounds), texts):
                for v, (label, target) in enumerate(targets if round_ % 2 == 0 else targets[::-1]):
                    calls = [f"rd{self.run_tag}r{run}n{round_}{text}v{v}c{c:03d}" for c in range(100)]
                    load.each([0, 1], "start_producer", kws=[{
                        "dialect": target.dialect, "base": target.base, "token": target.token, "calls": calls[k::2],
                        "conns": 2, "mix": "call", "batch": 100, "window": win, "texts": text} for k in range(2)])
                    time.sleep(warm)
                    a0 = sum(c["acked_total"] for c in load.each([0, 1], "producer_counts"))
                    cpu0 = target.cpu_s()
                    time.sleep(window)
                    a1 = sum(c["acked_total"] for c in load.each([0, 1], "producer_counts"))
                    cpu = target.cpu_s() - cpu0
                    row = {"target": label, "texts": text, "run": run, "round": round_, "window_frames": win,
                           "acked_s": (a1 - a0) / window, "cpu_pct": cpu / window * 100,
                           "us_cpu_per_event": cpu * 1e6 / max(1, a1 - a0)}
                    load.each([0, 1], "stop_producer")
                    taken.setdefault((label, text), []).append(row)
                    self.add("ingest_redact", row)
                    log(f"{label} ({text}) round {round_}: {row['acked_s']:,.0f} events/s acked, "
                        f"cpu {row['cpu_pct']:.0f}%, {row['us_cpu_per_event']:.1f} µs of CPU an event")
        finally:
            load.close()
            for _, target in targets:
                target.stop()
        for text in texts:
            (off, on) = (taken.get((label, text), []) for label, _ in variants)
            if off and on:
                a, b = (report.med([r["acked_s"] for r in rows]) for rows in (off, on))
                c, d = (report.med([r["us_cpu_per_event"] for r in rows]) for rows in (off, on))
                log(f"{text} texts, medians of {len(off)} rounds: {a:,.0f} against {b:,.0f} events/s with --redact "
                    f"({1 - b / a:+.1%} cost), {c:.1f} against {d:.1f} µs of server CPU an event")

    # ---- two nodes ------------------------------------------------------------------------------

    def twonode(self, run: int) -> None:
        """One node, then two, on Redis + PostgreSQL, under the same ladder in the same run.

        The one-node row is the reference the target names ("p99 ≤ 2× the single-node p99 at the
        same load"): same broker, same database, same 1,000 subscribers, so the ratio is the cost
        of a second node and nothing else. The nodes are not pinned by default (`--node-cpus`):
        two nodes, Redis, PostgreSQL and the load share two cores, and any pinning measures the
        pinning (both nodes on core 0: one core for two nodes; node 1 on the load's core: node 1
        starved, and with it every call its producer publishes).
        """
        redis_url = self.args.redis
        pg_url = self.args.postgres
        rates = [10_000, 20_000, 40_000] if self.quick else [10_000, 20_000, 30_000, 40_000, 60_000]
        if self.args.steps:
            rates = [int(x) for x in self.args.steps.split(",")]
        warm, window = (1.0, 3.0) if self.quick else (1.5, 5.0)
        cpus = [c.strip() for c in self.args.node_cpus.split(",")]
        for count in (1, 2):
            db = f"bench_{self.run_tag}_{run}_{count}"
            made = psql(f"CREATE DATABASE {db}")
            if made.returncode:
                self.add("twonode", {"target": "callstream", "status": f"pending: {made.stderr.strip()[:200]}"})
                return
            url = f"{pg_url.rstrip('/')}/{db}"
            nodes: list[Target] = []
            try:
                for _ in range(count):
                    node = make("callstream")
                    node.args = ["--broker", redis_url, "--database", url]
                    nodes.append(node)
                try:
                    for k, node in enumerate(nodes):
                        log(f"start node {k} of {count} on CPU {cpus[k % len(cpus)]}")
                        node.start(cpus[k % len(cpus)] if self.server_cpus else None)
                except Exception as exc:
                    log_tail = ""
                    for node in nodes:
                        if node.log_path and node.log_path.exists():
                            log_tail += node.log_path.read_text()[-600:]
                    self.add("twonode", {"target": "callstream", "status": f"pending: {exc}; {log_tail[-400:]}"})
                    return
                for node in nodes[1:]:
                    node.token = nodes[0].token
                self.twonode_ladder(nodes, rates, warm, window, run)
            finally:
                for node in nodes:
                    node.stop()
                psql(f"DROP DATABASE IF EXISTS {db}")

    def twonode_ladder(self, nodes: list[Target], rates: list[int], warm: float, window: float, run: int) -> None:
        load = Load(4, self.load_cpus)
        count = len(nodes)
        try:
            calls = [f"tn{self.run_tag}r{run}n{count}c{c:03d}" for c in range(100)]
            groups = [[calls[k % 100]] for k in range(1000)]
            # Load processes 0 and 1 hold 500 subscribers each, 2 and 3 a producer of 5 sockets for
            # half of the calls each: all on the one node, or process k on node k, as a load
            # balancer would spread them. Every call has subscribers on both nodes, so half of
            # each call's deliveries cross Redis from the other node.
            load.each([0, 1], "open_subscribers", kws=[{
                "dialect": "callstream", "base": nodes[k % count].base, "token": nodes[0].token,
                "groups": groups[500 * k:500 * (k + 1)]} for k in range(2)])  # every call, 5 a call
            load.each([2, 3], "start_producer", kws=[{
                "dialect": "callstream", "base": nodes[k % count].base, "token": nodes[0].token,
                "calls": split(calls, 2)[k], "conns": 5, "mix": "call", "rate": 0.0} for k in range(2)])
            name = f"callstream ×{count} (redis+postgres)"
            for offered in rates:
                other0 = [n.cpu_s() for n in nodes[1:]]
                t0 = time.monotonic()
                spies = self.spy(nodes[0], f"twonode-{count}", warm + window) if offered == rates[0] and not run else []
                row = self.fanout_step(nodes[0], load, [2, 3], [0, 1], offered, 10, warm, window)
                self.spied(spies, f"twonode-{count}", f"node 0 of {count} (redis+postgres) at {offered:,} deliveries/s")
                elapsed = time.monotonic() - t0
                # fanout_step measures node 0 over the window; the other node over the whole step.
                row["node1_cpu_pct"] = ((nodes[1].cpu_s() - other0[0]) / elapsed * 100) if count > 1 else None
                # Where the tail is: load process k holds the subscribers of node k (two nodes).
                row["p99_ms_by_proc"] = [pct(merge([st])["lat"], 0.99) for st in load.each([0, 1], "stats")]
                row.update(run=run, target=name, nodes=count, status="ok")
                self.add("twonode", row)
                log(f"{name} {offered:,}/s → {row['delivered_s']:,}/s p50 {row['p50_ms']} p99 {row['p99_ms']} "
                    f"(by load process {row['p99_ms_by_proc']}) loss {row['loss']:.4f} cpu {row['cpu_pct']:.0f}% "
                    f"node 1 {row['node1_cpu_pct']}")
                if row["saturated"]:
                    break
        finally:
            load.close()


    # ---- live control ---------------------------------------------------------------------------

    def control(self, run: int) -> None:
        """The control round trip (bench/control_probe.py) while the node fans out a background load:
        one node pinned like fan-out's, at each `--control-rates` step (0: idle; none: no one-node
        ladder); then two nodes on Redis + PostgreSQL (not pinned, as twonode), the supervisors on
        node 0 and the producer holding the call on node 1, so every request and result crosses
        Redis. `--control-targets` with several targets (a patch: `callstream+NAME`) runs each
        ladder for each of them in turn, an A/B in one run; each run starts with another target."""
        warm, window = (1.0, 4.0) if self.quick else (1.5, 8.0)
        targets = [t.strip() for t in self.args.control_targets.split(",") if t.strip()]
        shift = run % len(targets)
        targets = targets[shift:] + targets[:shift]
        one = [int(x) for x in self.args.control_rates.split(",") if x.strip()]
        two = [int(x) for x in self.args.control_rates_two.split(",") if x.strip()]
        for name in targets:
            if one:
                self.control_one_node(name, one, warm, window, run)
        for name in targets:
            if two:
                self.control_two_nodes(name, two, warm, window, run)

    def control_one_node(self, name: str, rates: list[int], warm: float, window: float, run: int) -> None:
        target = self.start(make(name))
        load = Load(self.args.sub_procs + 2, self.load_cpus)
        try:
            self.control_ladder([target], load, rates, warm, window, run, f"{name} ×1")
        finally:
            load.close()
            target.stop()

    def control_two_nodes(self, name: str, rates: list[int], warm: float, window: float, run: int) -> None:
        label = f"{name} ×2 (redis+postgres)"
        db = f"bench_{self.run_tag}_{run}_ctl_{name.replace('+', '_').replace('-', '_')}"
        made = psql(f"CREATE DATABASE {db}")
        if made.returncode:
            self.add("control", {"target": label, "status": f"pending: {made.stderr[:200]}"})
            return
        nodes = [make(name), make(name)]
        load = Load(self.args.sub_procs + 2, self.load_cpus)
        try:
            for node in nodes:
                node.args = ["--broker", self.args.redis, "--database", f"{self.args.postgres.rstrip('/')}/{db}"]
                node.start(None)
            nodes[1].token = nodes[0].token
            self.control_ladder(nodes, load, rates, warm, window, run, label)
        finally:
            load.close()
            for node in nodes:
                node.stop()
            psql(f"DROP DATABASE IF EXISTS {db}")

    def control_ladder(self, nodes: list[Target], load: Load, rates: list[int], warm: float, window: float,
                       run: int, name: str) -> None:
        """Fan-out's background (1,000 subscribers of 100 calls, 10 a call) and the probe, step by step."""
        sub_idx, producer, prober = list(range(self.args.sub_procs)), len(load) - 2, len(load) - 1
        calls = [f"ct{self.run_tag}r{run}n{len(nodes)}c{c:03d}" for c in range(100)]
        groups = [[calls[k % 100]] for k in range(1000)]
        token = nodes[0].token
        load.each(sub_idx, "open_subscribers", kws=[
            {"dialect": "callstream", "base": nodes[n % len(nodes)].base, "token": token,
             "groups": split(groups, len(sub_idx))[n]} for n in range(len(sub_idx))])
        load.call(producer, "start_producer", dialect="callstream", base=nodes[-1].base, token=token, calls=calls,
                  conns=10, mix="call", rate=0.0)
        for step, offered in enumerate(rates):
            probe_call = f"ctl{self.run_tag}r{run}n{len(nodes)}s{step}"
            load.send(prober, "control_probe", base=nodes[0].base, agent_base=nodes[-1].base, token=token,
                      call_id=probe_call, supervisors=10, rate=4.0, warm=warm + 0.2, seconds=window)
            row: dict[str, Any] = {"delivered_s": 0, "p99_ms": None, "cpu_pct": None}
            if offered:
                row = self.fanout_step(nodes[0], load, producer, sub_idx, offered, 10, warm, window)
            else:
                time.sleep(warm + window + 0.5)
            probed = load.recv(prober, timeout=120)
            rtt, ack = probed.pop("rtt_us"), probed.pop("ack_us")
            out = {"target": name, "nodes": len(nodes), "run": run, "status": "ok", "background_offered_s": offered,
                   "background_delivered_s": row["delivered_s"], "background_p99_ms": row["p99_ms"],
                   "cpu_pct": row["cpu_pct"], "rtt_p50_ms": pct(rtt, 0.5), "rtt_p99_ms": pct(rtt, 0.99),
                   "rtt_max_ms": rtt[-1] / 1000 if rtt else None, "ack_p50_ms": pct(ack, 0.5), "ack_p99_ms": pct(ack, 0.99),
                   **probed}
            self.add("control", out)
            log(f"{name} background {offered:,}/s (delivered {out['background_delivered_s']:,}/s, p99 "
                f"{out['background_p99_ms']}): control round trip p50 {out['rtt_p50_ms']} p99 {out['rtt_p99_ms']} "
                f"max {out['rtt_max_ms']} ms over {out['samples']} requests; ack p99 {out['ack_p99_ms']} ms; "
                f"errors {out['errors']}, unanswered {out['unanswered']}")


def frame_windows(text: str) -> list[int]:
    """`--ingest-window`: a comma list of frame counts, each at least 1."""
    try:
        windows = [int(w) for w in text.split(",")]
    except ValueError:
        windows = []
    if not windows or min(windows) < 1:
        raise argparse.ArgumentTypeError(f"expected frame counts ≥ 1 separated by commas, like 16,64; got {text!r}")
    return windows


def ingest_shapes(text: str) -> list[tuple[int, int]]:
    """`--ingest-shapes`: a comma list of BATCHxWINDOW, each at least 1x1."""
    try:
        shapes = [(int(b), int(w)) for b, w in (part.split("x") for part in text.split(","))]
    except ValueError:
        shapes = []
    if not shapes or min(min(s) for s in shapes) < 1:
        raise argparse.ArgumentTypeError(f"expected BATCHxWINDOW separated by commas, like 100x64; got {text!r}")
    return shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(ALL)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="1 run, shorter steps, smaller N")
    parser.add_argument("--runs", type=int, default=None, help="fan-out repetitions (default 3, --quick 1)")
    parser.add_argument("--targets", default=None,
                        help="comma-separated: callstream, callstream+<patch>, bare, socketio, nchan")
    parser.add_argument("--server-cpus", default="0", help="taskset list for servers ('' = no pinning)")
    parser.add_argument("--load-cpus", default="1", help="cores for the load processes ('' = no pinning)")
    parser.add_argument("--node-cpus", default="",
                        help="twonode: taskset list of node 0, node 1 (default '': not pinned; see bench/README.md)")
    parser.add_argument("--sequential", action="store_true",
                        help="fan-out: one target's whole ladder after another's (default: interleaved, step by step)")
    parser.add_argument("--sub-procs", type=int, default=2, help="subscriber load processes in fan-out")
    parser.add_argument("--max-rate", type=int, default=None, help="highest fan-out step (deliveries/s)")
    parser.add_argument("--steps", default=None, help="fan-out steps, comma-separated deliveries/s (default: the ladder)")
    parser.add_argument("--connections", type=int, default=None, help="sockets in 'connections'")
    parser.add_argument("--storm", type=int, default=None, help="clients in 'storm'")
    parser.add_argument("--profile", action="store_true", help="py-spy callstream during fan-out")
    parser.add_argument("--profile-target", default="callstream", help="which target --profile samples")
    parser.add_argument("--profile-rate", type=int, default=30_000, help="deliveries/s while profiling")
    parser.add_argument("--campaign-variants", default=None,
                        help="campaign: callstream only, some of explicit,wildcard,where (default: every target)")
    parser.add_argument("--ingest-window", type=frame_windows, default=[16, 64],
                        help="frames of 100 events in flight per socket; a comma list measures each")
    parser.add_argument("--redact", default=None,
                        help="ingest: A/B of `serve --redact KINDS` (e.g. all) against no redaction, in rounds")
    parser.add_argument("--redact-rounds", type=int, default=5, help="ingest --redact: rounds of each server")
    parser.add_argument("--redact-texts", default="plain,pii", help="ingest --redact: loadgen texts, each every round")
    parser.add_argument("--ingest-ids", action="store_true",
                        help="ingest: measure every row without and with an id on every event (A/B, interleaved)")
    parser.add_argument("--ingest-shapes", type=ingest_shapes, default=None,
                        help="ingest: BATCHxWINDOW list (events per frame x frames in flight), e.g. 100x64")
    parser.add_argument("--control-rates", default="0,40000,100000",
                        help="control: background fan-out deliveries/s on one node, per step (0: idle; empty: no one-node ladder)")
    parser.add_argument("--control-rates-two", default="0,20000",
                        help="control: background fan-out deliveries/s on two nodes, per step (0: idle)")
    parser.add_argument("--control-targets", default="callstream",
                        help="control: the servers measured, in turn (callstream+NAME applies a patch: an A/B)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--out", default=None, help="results subfolder name (default: bench/results)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    scenarios = args.scenarios or ALL
    unknown = [s for s in scenarios if s not in ALL]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    runs = args.runs or (1 if args.quick else 3)
    global RESULTS
    if args.out:
        RESULTS = ROOT / "bench/results" / args.out
    bench = Bench(args)
    started = time.monotonic()
    try:
        for scenario in scenarios:
            reps = runs
            if scenario != "fanout" and not args.quick:
                reps = min(reps, int(os.environ.get("BENCH_RUNS_SLOW", "1")))
            for run in range(reps):
                log(f"== {scenario} run {run + 1}/{reps}")
                try:
                    getattr(bench, scenario)(run)
                except Exception as exc:  # e.g. a patch that no longer applies: report it, go on
                    log(f"!! {scenario} run {run + 1} failed: {exc!r}")
                    bench.results.setdefault("failures", []).append(f"{scenario} run {run + 1}: {exc!r}")
    finally:
        bench.results["meta"]["elapsed_s"] = round(time.monotonic() - started)
        bench.save()
        report.write(bench.results, RESULTS)
        log(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
