"""A fault drill on real nodes: steady producers and live subscribers while the nodes' PostgreSQL
or Redis goes down and comes back (and, if asked, a node is SIGKILLed meanwhile).

`Cluster` runs `callstream serve` nodes on one private redis-server and one private PostgreSQL
cluster (tests/faults.py). `Drill` drives them: a REST producer (one final a request, round robin
over the live nodes) and an ingest producer (one socket, a `ref` on every event) each feed a call
of their own; a `callstream.Client` on every node subscribes to both (it reconnects and resumes
with `since` by itself); /healthz of every node is polled. `outage` stops a service, keeps it
down, and starts it again. `finish` stops the producers and reads back what a user can check
(`Findings`): the answers by status, the events acked, stored (over REST, and the raw rows) and
seen by subscribers, gaps, duplicates, acked events lost, seen events not stored as seen.

Each event carries an `id` (its text), and a producer retries an event that got no ack (an
error, a 503, no answer) by sending it again, same text and same id, as a real producer does
after a lost ack: a text stored under two seqs is then a resend the server stored twice, which
idempotent publish promises never happens (`duplicates` must stay 0).

Shared by tests/e2e/test_fault_drill.py (a short profile, in CI) and bench/faults.py (minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callstream import Client
from callstream.store import SqlStore, database_url
from tests.faults import PrivatePostgres, RedisServer
from tests.helpers import ALL_SCOPES, ServerProcess

INTERVAL_S = 0.02  # between two events of one producer
SETTLE_S = 30.0  # how long `finish` waits for repairs and for subscribers to catch up
HEALTH_EVERY_S = 0.2
ANSWERED = ("rest ", "ingest handshake ")  # the HTTP answers, counted as "<what> <status>"


class Cluster:
    """`count` nodes on one private Redis and one private PostgreSQL; `kill`/`revive` a node."""

    def __init__(self, root: Path, pg: PrivatePostgres, redis: RedisServer, count: int) -> None:
        self.pg, self.redis = pg, redis
        self.nodes = []
        for i in range(count):
            data_dir = root / f"node{i}"
            data_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(ServerProcess(data_dir, "--broker", redis.url, "--database", pg.url))
        self.dead: set[int] = set()

    def start(self) -> Cluster:
        """Start every node at once (each takes seconds to import and migrate)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(ServerProcess.start, self.nodes))
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    async def key(self, account: str) -> str:
        """A key with every scope, made by the nodes' store (the CLI would start an interpreter)."""
        store = SqlStore(database_url(self.pg.url, ""))
        await store.start(writer=False)
        try:
            _, secret = await store.create_key(account, frozenset(ALL_SCOPES.split(",")))
        finally:
            await store.close()
        return secret

    @property
    def alive(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.dead]

    def kill(self, index: int) -> None:
        self.dead.add(index)
        self.nodes[index].kill()

    def revive(self, index: int) -> None:
        self.nodes[index].start()
        self.dead.discard(index)

    def log_counts(self) -> Counter[str]:
        """Tracebacks and 500s the nodes logged."""
        found: Counter[str] = Counter()
        for node in self.nodes:
            text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
            found["tracebacks"] += text.count("Traceback")
            found["500s"] += text.count('" 500')
        return found


@dataclass
class Findings:
    """What a drill found; `problems` lists every broken promise (empty: none)."""

    outages: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    acked: int = 0
    stored: int = 0
    seen: int = 0  # distinct (call, seq) any subscriber received
    gaps: int = 0  # seqs missing from a call's stored history below its highest
    duplicates: int = 0  # seqs in two stored rows, or texts (event ids) stored under two seqs
    retried: int = 0  # events sent again (same id) after an error, a 503 or no answer
    lost: int = 0  # acked events not stored as acked
    unstored_seen: int = 0  # events a subscriber received that are not stored as received
    missed: int = 0  # stored events some subscriber never received
    health: dict[str, Counter[int]] = field(default_factory=dict)  # "during"/"after" → statuses
    problems: list[str] = field(default_factory=list)

    def add(self, other: Findings) -> None:
        """Sum `other` into this one (bench/faults.py adds up its rounds)."""
        self.outages += other.outages
        self.answers += other.answers
        for name in ("acked", "stored", "seen", "gaps", "duplicates", "retried", "lost", "unstored_seen", "missed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for phase, statuses in other.health.items():
            self.health.setdefault(phase, Counter()).update(statuses)
        self.problems += other.problems

    def lines(self) -> list[str]:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items()))
        health = "; ".join(f"{k} {dict(v)}" for k, v in self.health.items())
        return [
            f"outages injected: {dict(self.outages)}",
            f"answers: {answers}",
            f"events acked {self.acked}, stored {self.stored}, seen live {self.seen}, resent {self.retried}",
            f"gaps {self.gaps}, duplicates {self.duplicates}, acked lost {self.lost}, "
            f"seen but not stored {self.unstored_seen}, stored but missed by a subscriber {self.missed}",
            f"healthz: {health}",
        ]


def _final(text: str) -> dict[str, Any]:
    """A final whose text is also its id: a resend is the same event."""
    return {"type": "transcript.final", "data": {"speaker": "user", "text": text}, "id": text}


class Drill:
    """Producers, subscribers and a health poller on a `Cluster` (see the module doc)."""

    def __init__(
        self, cluster: Cluster, key: str, *, interval_s: float = INTERVAL_S, producers_on: list[int] | None = None
    ) -> None:
        """`producers_on`: the nodes the producers use while one of them is up (default: all)."""
        self.cluster = cluster
        self.producers_on = producers_on
        self.key = key
        self.interval_s = interval_s
        tag = secrets.token_hex(4)
        self.rest_call, self.ingest_call = f"rest_{tag}", f"ingest_{tag}"
        self.findings = Findings()
        self.acked: dict[str, dict[int, str]] = {self.rest_call: {}, self.ingest_call: {}}
        self.seen: dict[str, dict[int, dict[str, Any]]] = {self.rest_call: {}, self.ingest_call: {}}
        self.received: dict[tuple[int, str], set[int]] = {}  # (subscriber, call) → seqs
        self._stopping = False
        self._producers: list[asyncio.Task[None]] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._clients: list[Client] = []
        self._down = False  # an outage is under way: health answers count as "during"
        self._turn = itertools.count()
        self._resend: deque[str] = deque()  # ingest texts to send again (no ack came)
        self._unlabelled: set[tuple[str, int]] = set()  # stored events without their id

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def _node(self, *, producing: bool = False) -> ServerProcess:
        """The next live node in turn (for a producer, of `producers_on` while one is up)."""
        alive = self.cluster.alive
        if producing and self.producers_on is not None:
            alive = [i for i in alive if i in self.producers_on] or alive
        return self.cluster.nodes[alive[next(self._turn) % len(alive)]]

    def _count(self, answer: str) -> None:
        self.findings.answers[answer] += 1

    async def __aenter__(self) -> Drill:
        for index in range(len(self.cluster.nodes)):
            client = Client(self.cluster.nodes[index].url, self.key, reconnect_max_delay=1.0)
            await client.start()
            self._clients.append(client)
            self._watchers.append(asyncio.create_task(self._subscriber(index, client)))
        self._watchers.append(asyncio.create_task(self._health()))
        await asyncio.sleep(0.3)  # subscribed before the first event
        self._producers = [asyncio.create_task(self._rest_producer()), asyncio.create_task(self._ingest_producer())]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stopping = True
        for task in [*self._producers, *self._watchers]:
            task.cancel()
        await asyncio.gather(*self._producers, *self._watchers, return_exceptions=True)
        for client in self._clients:
            await client.close()

    # ---- producers and subscribers -------------------------------------------------------------

    async def _rest_producer(self) -> None:
        async with httpx.AsyncClient(timeout=15) as http:
            numbers = itertools.count()
            retry: str | None = None  # the text to send again, until it is answered 202
            while not self._stopping:
                node, text = self._node(producing=True), retry or f"r{next(numbers)}"
                if retry is not None:
                    self.findings.retried += 1
                retry = text
                try:
                    url = f"{node.url}/v1/calls/{self.rest_call}/events"
                    response = await http.post(url, content=orjson.dumps(_final(text)), headers=self._auth)
                except httpx.TransportError:
                    self._count("rest: no answer")
                    await asyncio.sleep(0.1)
                    continue
                self._count(f"rest {response.status_code}")
                if response.status_code == 202:
                    self.acked[self.rest_call][response.json()["seq"][0]] = text
                    retry = None
                await asyncio.sleep(self.interval_s)

    async def _ingest_producer(self) -> None:
        numbers = itertools.count()
        while not self._stopping:
            node = self._node(producing=True)
            try:
                async with connect(f"{node.ws_url}/v1/ingest", additional_headers=self._auth) as ws:
                    await self._ingest_session(ws, numbers)
            except InvalidStatus as exc:
                self._count(f"ingest handshake {exc.response.status_code}")
            except (OSError, ConnectionClosed, TimeoutError):
                self._count("ingest: connection lost")
            await asyncio.sleep(0.1)

    async def _ingest_session(self, ws: Any, numbers: Iterator[int]) -> None:
        """Send until the drill stops, then wait (up to 10 s) for the answers still owed."""
        sent: dict[str, str] = {}  # ref → text, until answered
        reader = asyncio.create_task(self._ingest_answers(ws, sent))
        try:
            while not self._stopping and not reader.done():
                if self._resend:
                    ref = text = self._resend.popleft()
                    self.findings.retried += 1
                else:
                    ref = text = f"i{next(numbers)}"
                sent[ref] = text
                await ws.send(orjson.dumps({"call_id": self.ingest_call, **_final(text), "ref": ref}).decode())
                await asyncio.sleep(self.interval_s)
            deadline = time.monotonic() + 10
            while sent and not reader.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if reader.done():
                reader.result()  # why the connection ended
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if sent:
                self.findings.answers["ingest: unanswered"] += len(sent)
                if not self._stopping:
                    self._resend.extend(sent.values())

    async def _ingest_answers(self, ws: Any, sent: dict[str, str]) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            text = sent.pop(message.get("ref"), None)
            if message["type"] == "ack":
                self._count("ingest ack")
                if text is not None:
                    self.acked[self.ingest_call][message["seq"]] = text
            else:
                self._count(f"ingest error {message['data']['code']}")
                if text is not None and not self._stopping:
                    self._resend.append(text)

    async def _subscriber(self, index: int, client: Client) -> None:
        async for event in client.events(self.rest_call, self.ingest_call):
            if event.seq is None:
                continue
            self.received.setdefault((index, event.call_id), set()).add(event.seq)
            known = self.seen[event.call_id].setdefault(event.seq, event.data)
            if known != event.data:
                self.findings.problems.append(f"{event.call_id} seq {event.seq}: two subscribers saw two events")

    async def _health(self) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                for index in self.cluster.alive:
                    phase = "during" if self._down else "outside"
                    try:
                        status = (await http.get(self.cluster.nodes[index].url + "/healthz")).status_code
                    except httpx.TransportError:
                        continue
                    self.findings.health.setdefault(phase, Counter())[status] += 1
                await asyncio.sleep(HEALTH_EVERY_S)

    # ---- the drill -----------------------------------------------------------------------------

    async def steady(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def outage(self, service: str, down_s: float, *, kill: int | None = None, revive: bool = True) -> None:
        """Stop `service` ("postgres" or "redis") for `down_s`; with `kill`, SIGKILL that node
        halfway through (and start it again once the service is back, when `revive`). Every live
        node must answer /healthz 503 during the outage and 200 within `SETTLE_S` after it."""
        stop, start = {
            "postgres": (self.cluster.pg.stop, self.cluster.pg.start),
            "redis": (self.cluster.redis.stop, self.cluster.redis.start),
        }[service]
        self.findings.outages[service] += 1
        await asyncio.to_thread(stop)
        self._down = True
        began = time.monotonic()
        await self._until_every_node("healthz 503 during the outage", lambda s: s == 503, down_s)
        if kill is not None:
            await asyncio.sleep(max(0.0, down_s / 2 - (time.monotonic() - began)))
            await asyncio.to_thread(self.cluster.kill, kill)
            self.findings.outages["sigkill"] += 1
        await asyncio.sleep(max(0.0, down_s - (time.monotonic() - began)))
        self._down = False
        await asyncio.to_thread(start)
        if kill is not None and revive:
            await asyncio.to_thread(self.cluster.revive, kill)
        await self._until_every_node("healthz 200 after the outage", lambda s: s == 200, SETTLE_S)

    async def revive(self, index: int) -> None:
        """Start a node `outage` killed and left down, and wait until it is healthy."""
        await asyncio.to_thread(self.cluster.revive, index)
        await self._until_every_node("healthz 200 after a restart", lambda s: s == 200, SETTLE_S)

    async def repaired(self, within_s: float = SETTLE_S) -> bool:
        """Whether each call's stored history comes to hold 1..N within `within_s`, N being its
        highest seq acked or seen by now (a problem if not): the nodes up now repaired the rest."""
        tops = {call_id: self._top(call_id) for call_id in self.acked}
        stored = await self._settled_history(within_s, tops)
        for call_id, events in stored.items():
            if missing := sorted(set(range(1, tops[call_id] + 1)) - set(events)):
                self.findings.problems.append(f"{call_id}: seqs {missing[:10]} not stored {within_s:g} s on")
        return not any(p.endswith(" s on") for p in self.findings.problems)

    async def _until_every_node(self, what: str, good: Any, within_s: float) -> bool:
        """Poll /healthz of every live node until each answered as `good` once; a problem if not."""
        pending = set(self.cluster.alive)
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(timeout=2) as http:
            while pending and time.monotonic() < deadline:
                for index in list(pending):
                    with contextlib.suppress(httpx.TransportError):
                        if good((await http.get(self.cluster.nodes[index].url + "/healthz")).status_code):
                            pending.discard(index)
                await asyncio.sleep(0.1)
        if pending:
            self.findings.problems.append(f"nodes {sorted(pending)}: no {what} within {within_s:g} s")
        return not pending

    async def finish(self) -> Findings:
        """Stop producing, let repairs and subscribers settle, and compare what each side holds."""
        self._stopping = True
        await asyncio.wait(self._producers, timeout=20)
        stored = await self._settled_history()
        await self._subscribers_caught_up(stored)
        self._compare(stored, await self._raw_rows())
        return self.findings

    async def _read_history(self, call_id: str) -> dict[int, dict[str, Any]]:
        events: dict[int, dict[str, Any]] = {}
        since: int | None = 0
        async with httpx.AsyncClient(timeout=15) as http:
            while since is not None:
                node = self._node()
                url = f"{node.url}/v1/calls/{call_id}/events"
                response = await http.get(url, params={"since": since, "limit": 10_000}, headers=self._auth)
                response.raise_for_status()
                page = response.json()
                events.update((e["seq"], e["data"]) for e in page["events"])
                self._unlabelled.update((call_id, e["seq"]) for e in page["events"] if e.get("id") != e["data"]["text"])
                since = page["next_since"]
        return events

    def _top(self, call_id: str, stored: dict[int, Any] | None = None) -> int:
        """The call's highest seq acked, seen (or stored)."""
        return max([0, *self.acked[call_id], *self.seen[call_id], *(stored or ())])

    def _covers(self, stored: dict[str, dict[int, dict[str, Any]]], tops: dict[str, int] | None) -> bool:
        """Each call's history holds 1..N: N its highest seq (given, or acked, seen or stored)."""
        for call_id, events in stored.items():
            top = tops[call_id] if tops is not None else self._top(call_id, events)
            if not set(range(1, top + 1)) <= set(events):
                return False
        return True

    async def _settled_history(
        self, within_s: float = SETTLE_S, tops: dict[str, int] | None = None
    ) -> dict[str, dict[int, dict[str, Any]]]:
        deadline = time.monotonic() + within_s
        while True:
            stored = {call: await self._read_history(call) for call in self.acked}
            if self._covers(stored, tops) or time.monotonic() > deadline:
                return stored
            await asyncio.sleep(0.5)

    async def _subscribers_caught_up(self, stored: dict[str, dict[int, dict[str, Any]]]) -> None:
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            if all(set(events) <= self.received.get((i, call), set()) for call, events in stored.items() for i in range(len(self._clients))):
                return
            await asyncio.sleep(0.2)

    async def _raw_rows(self) -> dict[str, Counter[int]]:
        """How many stored rows hold each seq of each call (REST shows each seq once)."""
        engine = create_async_engine(self.cluster.pg.driver_url)
        counts: dict[str, Counter[int]] = {call: Counter() for call in self.acked}
        try:
            async with engine.connect() as conn:
                query = sa.text("SELECT call_id, events FROM event_chunks WHERE call_id = ANY(:calls)")
                for call_id, chunk in await conn.execute(query, {"calls": list(self.acked)}):
                    counts[call_id].update(frame["seq"] for frame in orjson.loads(chunk))
        finally:
            await engine.dispose()
        return counts

    def _compare(self, stored: dict[str, dict[int, dict[str, Any]]], rows: dict[str, Counter[int]]) -> None:
        f = self.findings
        for call_id, events in stored.items():
            acked, seen = self.acked[call_id], self.seen[call_id]
            top = self._top(call_id, events)
            f.acked += len(acked)
            f.stored += len(events)
            f.seen += len(seen)
            f.gaps += len(set(range(1, top + 1)) - set(events))
            texts = Counter(e.get("text") for e in events.values())
            f.duplicates += sum(n - 1 for n in texts.values() if n > 1)
            f.duplicates += sum(n - 1 for n in rows[call_id].values() if n > 1)
            f.lost += sum(1 for seq, text in acked.items() if events.get(seq, {}).get("text") != text)
            f.unstored_seen += sum(1 for seq, data in seen.items() if events.get(seq) != data)
            for index in range(len(self._clients)):
                f.missed += len(set(events) - self.received.get((index, call_id), set()))
        for name in ("gaps", "duplicates", "lost", "unstored_seen", "missed"):
            if count := getattr(f, name):
                f.problems.append(f"{name}: {count}")
        if self._unlabelled:
            f.problems.append(f"stored without their id: {sorted(self._unlabelled)[:5]}")
        odd = [f"{k}: {n}" for k, n in f.answers.items() if k.startswith(ANSWERED) and k[-3:] not in ("202", "503")]
        if odd:
            f.problems.append(f"answers other than 202 and 503: {', '.join(odd)}")
        if not f.acked:
            f.problems.append("nothing was acked")
        if f.health.get("during", Counter())[503] == 0:
            f.problems.append("no healthz 503 during the outages")
