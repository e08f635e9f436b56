"""The dashboard at contact-center scale (issue 30): frames, long tasks, heap and bytes received.

    .venv/bin/python -m bench.ui --calls 200,1000,2000 --seconds 10
    .venv/bin/python -m bench.ui --checkout /work/wt-dash-before --label "before (df361c7)"

For each N: a fresh embedded server (from ``--checkout``'s ``src``, default this tree), N live
calls started through one ingest socket, then a light producer (one socket, ``--events-per-call``
events a second per call, a call's turn as a voice agent publishes it: agent states, growing
partials, a final) while Debian's Chromium (Playwright, headless, as tests/e2e/test_dashboard.py
launches it) shows the dashboard. Each view (the calls list, the campaign grid) is measured for
``--seconds`` after a warm-up: frames per second (requestAnimationFrame), long tasks (count, total,
longest: the ``longtask`` entries of the page), the JS heap in use (CDP ``Runtime.getHeapUsage``),
the DOM's element count, the bytes per second the page's socket received (CDP WebSocket
frames) and the live calls the page counted (a page that took fewer than N measured less work).
Writes ``results/ui.md`` (a row per checkout, N and view, earlier rows of other labels kept) and
``results/ui.json``, and a screenshot of the campaign view at the largest N
(``results/ui-campaign-<N>.png``, 1280×800).

Older checkouts work too: the page is driven only through its login link, the tab ids and the
socket, which df361c7 already had.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from bench.soak import free_port
from callstream.publisher import Publisher

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWS = (("list", "#tab-calls"), ("campaign", "#tab-campaign"))
UNRESPONSIVE_S = 60  # a view whose tab click waits longer than this is reported unresponsive
TARGETS = "at 1,000 calls: ≥ 50 fps, no long task over 50 ms, heap ≤ 100 MB; at 2,000: ≥ 30 fps"

PROBE = """() => {
  window.__bench = { frames: 0, long: [] };
  const tick = () => { window.__bench.frames += 1; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__bench.long.push(e.duration);
  }).observe({ type: "longtask" });
}"""

# One turn of a call as a voice agent publishes it: (type, speaker, words of the text so far).
TURN = [
    ("agent.state", "listening", 0), ("transcript.partial", "user", 2), ("transcript.partial", "user", 5),
    ("transcript.partial", "user", 8), ("transcript.final", "user", 10), ("agent.state", "thinking", 0),
    ("agent.state", "speaking", 0), ("transcript.partial", "agent", 3), ("transcript.partial", "agent", 7),
    ("transcript.final", "agent", 12),
]
WORDS = ("I", "was", "charged", "twice", "this", "month", "and", "that", "is", "really", "not", "great",
         "thanks", "so", "much", "let", "me", "check", "your", "account", "happy", "help", "angry", "today")


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


class Server:
    """An embedded callstream server run from a checkout's ``src``, in a data dir of its own."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        self.data = Path(tempfile.mkdtemp(prefix="bench-ui-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "callstream", *args, "--data-dir", str(self.data)],
                             env=self.env, capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.strip()

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callstream", "serve", "--port", str(self.port), "--data-dir", str(self.data)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=(self.data / "server.log").open("wb"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.2)
        msg = f"the server did not start: see {self.data / 'server.log'}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
        shutil.rmtree(self.data, ignore_errors=True)


class Producer:
    """N live calls and a light, steady stream of their turns through one ingest socket, in a
    thread of its own (its own event loop), so the browser's measurements are not its work."""

    def __init__(self, url: str, key: str, calls: int, per_call: float, seed: int = 30) -> None:
        self.url, self.key, self.calls, self.per_call = url, key, calls, per_call
        self.rng = random.Random(seed)
        self.ids = [f"ui_{i:05d}_{self.rng.getrandbits(24):06x}" for i in range(calls)]
        self.step = {call: self.rng.randrange(len(TURN)) for call in self.ids}  # no lockstep
        self.turns = dict.fromkeys(self.ids, 0)
        self.ready = threading.Event()
        self.sent = 0
        self.errors = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),), daemon=True)
        self.stopping = False

    def metadata(self, i: int) -> dict[str, str]:
        campaign = ("spring-renewals", "billing-support", "broadband-support")[i % 3]
        return {"agent": f"Agent {i % 40:02d}", "customer": f"Customer {i:05d}", "campaign": campaign,
                "direction": "inbound" if i % 4 else "outbound", "from": f"+1555{1_000_000 + i}",
                "to": "+14155550100"}

    def event(self, call: str) -> tuple[str, dict[str, Any]]:
        kind, who, words = TURN[self.step[call]]
        self.step[call] = (self.step[call] + 1) % len(TURN)
        if self.step[call] == 0:
            self.turns[call] += 1
        if kind == "agent.state":
            return kind, {"state": who}
        text = " ".join(self.rng.choice(WORDS) for _ in range(words))
        utterance = f"t{self.turns[call]}-{who}"  # a turn's partials and final share it
        return kind, {"speaker": who, "text": text, "utterance_id": utterance, "is_final": kind.endswith("final")}

    async def run(self) -> None:
        async with Publisher(self.url, self.key, max_in_flight=50_000) as pub:
            for i, call in enumerate(self.ids):
                pub.send(call, "agent.state", {"state": "listening", "metadata": self.metadata(i)})
            await pub.flush()
            self.ready.set()
            tick = 0.05
            rate = self.calls * self.per_call * tick
            owed = 0.0
            while not self.stopping:
                owed += rate
                while owed >= 1:
                    owed -= 1
                    call = self.ids[self.rng.randrange(self.calls)]
                    kind, data = self.event(call)
                    try:
                        pub.send(call, kind, data).add_done_callback(self.count)
                        self.sent += 1
                    except Exception:  # backpressure: skip it, the load is what matters
                        self.errors += 1
                await asyncio.sleep(tick)

    def count(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.errors += 1

    def __enter__(self) -> Producer:
        self.thread.start()
        if not self.ready.wait(120):
            msg = "the producer could not start its calls"
            raise RuntimeError(msg)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(10)


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def measure_view(page: Any, cdp: Any, received: list[int], seconds: float) -> dict[str, Any]:
    page.evaluate("() => { window.__bench.frames = 0; window.__bench.long = []; }")
    received.clear()
    t0 = time.monotonic()
    page.wait_for_timeout(seconds * 1000)
    probe = page.evaluate("() => ({ frames: window.__bench.frames, long: window.__bench.long,"
                          " nodes: document.getElementsByTagName('*').length, title: document.title,"
                          " shown: document.getElementById('live-count')?.textContent ?? '' })")
    elapsed = time.monotonic() - t0
    heap = cdp.send("Runtime.getHeapUsage")
    long = probe["long"]
    return {
        "fps": round(probe["frames"] / elapsed, 1),
        "long_tasks": len(long),
        "long_total_ms": round(sum(long)),
        "longest_ms": round(max(long, default=0)),
        "heap_mb": round(heap["usedSize"] / 2**20, 1),
        "kib_per_s": round(sum(received) / 1024 / elapsed, 1),
        "dom_elements": probe["nodes"],
        "title": probe["title"],
        # the live calls the page counts (its list's header): fewer than N means it measured less work
        "shown": int(digits) if (digits := "".join(ch for ch in probe["shown"] if ch.isdigit())) else None,
    }


def run_n(b: Any, checkout: Path, n: int, seconds: float, warmup: float, per_call: float,
          shot: Path | None) -> list[dict[str, Any]]:
    server = Server(checkout).start()
    try:
        key = json.loads(server.cli("keys", "create", "--account", "bench", "--json"))["key"]
        login = server.cli("login", "--account", "bench", "--url", server.url)
        log(f"N={n}: starting the calls")
        with Producer(server.url, key, n, per_call) as producer:
            context = b.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            received: list[int] = []
            cdp.on("Network.webSocketFrameReceived", lambda e: received.append(len(e["response"]["payloadData"])))
            page.goto(login)
            page.wait_for_selector('#conn[data-state="open"]', timeout=60_000)
            page.evaluate(PROBE)
            page.set_default_timeout(UNRESPONSIVE_S * 1000)
            rows = []
            for view, tab in VIEWS:
                try:
                    page.click(tab)
                    page.wait_for_timeout(warmup * 1000)
                    row = {"n": n, "view": view, **measure_view(page, cdp, received, seconds),
                           "load": round(os.getloadavg()[0], 1)}
                except PlaywrightTimeout:
                    log(f"N={n} {view}: the page did not answer in {UNRESPONSIVE_S} s")
                    rows.append({"n": n, "view": view, "unresponsive": True})
                    break
                log(f"N={n} {view}: {row}")
                rows.append(row)
                if shot is not None and view == "campaign":
                    page.screenshot(path=str(shot))
            context.close()
            log(f"N={n}: producer sent {producer.sent:,} events, {producer.errors} refused")
        return rows
    finally:
        server.stop()


def shown(row: dict[str, Any]) -> str:
    """The live calls the page counted, or – (unresponsive, or a row measured before it was kept)."""
    count = row.get("shown")
    return "–" if count is None else f"{count:,}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| checkout | calls | shown | view | fps | long tasks | long total | longest | JS heap | received "
            "| DOM elements | load |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['label']} | {r['n']:,} | {shown(r)} | {r['view']} | unresponsive: a click waited over {UNRESPONSIVE_S} s "
        "| | | | | | | |\n" if r.get("unresponsive") else
        f"| {r['label']} | {r['n']:,} | {shown(r)} | {r['view']} | {r['fps']} | {r['long_tasks']} | {r['long_total_ms']:,} ms "
        f"| {r['longest_ms']} ms | {r['heap_mb']} MB | {r['kib_per_s']} KiB/s | {r['dom_elements']:,} "
        f"| {r.get('load', '–')} |\n"
        for r in rows)
    return head + body


def write(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Results of this run beside the kept rows of other labels (the "before" row, say)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "ui.json"
    kept: list[dict[str, Any]] = []
    if path.exists():
        labels = {r["label"] for r in rows}
        kept = [r for r in json.loads(path.read_text())["rows"] if r["label"] not in labels]
    every = kept + rows
    path.write_text(json.dumps({"meta": meta, "rows": every}, indent=1) + "\n")
    shots = sorted(p.name for p in RESULTS.glob("ui-campaign-*.png"))
    (RESULTS / "ui.md").write_text(
        "# The dashboard at scale (bench/ui.py)\n\n"
        f"Targets: {TARGETS}. Each view measured {meta['seconds']} s after {meta['warmup']} s of warm-up, "
        f"the producer at {meta['per_call']} events/s per call; last run {meta['when']} "
        f"(load average then {meta['load']}).\n"
        "Shown: the live calls the page counted at the end of the view (– where not recorded); fewer than "
        "the calls means the page measured less work. "
        "Long tasks: the page's `longtask` entries (over 50 ms each). Received: the socket's frames. "
        "Load: the machine's 1-minute load average at the end of the view (2 cores: above 2, the browser "
        "waited for a core).\n\n"
        + table(every)
        + "".join(f"\n![campaign view]({s})\n" for s in shots))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", default="200,1000,2000", help="comma-separated live call counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per view")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after switching view before measuring")
    ap.add_argument("--events-per-call", type=float, default=0.4, help="events a second per live call")
    ap.add_argument("--checkout", type=Path, default=ROOT, help="the tree whose server and dashboard to run")
    ap.add_argument("--label", default=None, help="the table's name for the checkout (default: its commit)")
    ap.add_argument("--no-screenshot", action="store_true")
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.calls.split(",") if x.strip()]
    if not counts or min(counts) < 1 or a.seconds <= 0 or a.warmup < 0 or a.events_per_call < 0:
        ap.error("calls must be positive integers, seconds positive, warmup and events-per-call not negative")
    if not (a.checkout / "src" / "callstream").is_dir():
        ap.error(f"{a.checkout} has no src/callstream")
    commit = subprocess.run(["git", "-C", str(a.checkout), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    label = a.label or commit or str(a.checkout)
    rows: list[dict[str, Any]] = []
    with browser() as b:
        for n in counts:
            slug = "-".join("".join(ch if ch.isalnum() else " " for ch in label).split())
            shot = None if a.no_screenshot or n != max(counts) else RESULTS / f"ui-campaign-{slug}-{n}.png"
            for row in run_n(b, a.checkout, n, a.seconds, a.warmup, a.events_per_call, shot):
                rows.append({"label": label, **row})
    meta = {"seconds": a.seconds, "warmup": a.warmup, "per_call": a.events_per_call,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    write(rows, meta)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
