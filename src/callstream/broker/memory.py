"""The in-process broker: the embedded default, and the reference the Redis broker is tested against.

Sequencing is a counter per call, advanced without an await between the state check and the
delivery, so a batch is atomic and per-call order is the order of acceptance. On a node the
events fan out once stored (see `deliver_after_store`). The replay log
keeps every event of a call but partials a newer transcript superseded, for the call's life
and `history_ttl_s` after it ended; older history comes from the store.

Turns are measured here too: each call's `turns.TurnTracker` steps over its events as they are
sequenced, at their ts, and what it measured is written into them before anyone sees them.

Quotas are counted here, for this node: a call counts as live from the first event this broker
sequences for it until its `call.ended`, or until it stayed idle for `live_ttl_s` (a producer
that died without ending it): the sweep then forgets the call, so neither the count nor the
memory grows with abandoned calls.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Collection, Sequence
from operator import itemgetter
from typing import NamedTuple

import orjson

from callstream.broker.base import (
    LIVE_TTL_S,
    Broker,
    CallEndedError,
    ControlResultError,
    HeldHistory,
    PendingControlsError,
    Quotas,
    RepairNeededError,
    Unstored,
    merged_metadata,
)
from callstream.broker.ids import Repeats, find_repeats, first_seq
from callstream.control import REQUESTED, RESULT, Holder, WaitingRequest
from callstream.events import ENDED, CallState, Event, NewEvent, repeat_of
from callstream.metadata import Metadata
from callstream.turns import TurnTracker, role

_SWEEP_INTERVAL_S = 30.0
_ABSENT_MAX = 100_000  # call ids remembered as unknown to the store (subscribed to before they start)


# One event of a call's replay log: (seq, ts, type, frame, supersede key, the call's metadata as
# JSON after an event that changed it, else None: what a repair stores of it). A plain tuple of
# str and int, which the garbage collector stops tracking (it untracks exact tuples only, not NamedTuples):
# a log of Event objects would make every full collection walk every event of every live call,
# a pause that grows with the log (bench/README.md, log-untracked).
_Held = tuple[int, int, str, str, str | None, str | None]
_seq_of = itemgetter(0)


class _Call:
    __slots__ = (
        "active_ms",
        "counted",
        "ended_at",
        "first_seq",
        "holder",
        "ids",
        "last_seq",
        "latest",
        "log",
        "metadata",
        "pending",
        "started_at",
        "status",
        "superseded",
        "turns",
        "unstored",
    )

    def __init__(self, state: CallState) -> None:
        self.active_ms = now_ms()  # when this broker last sequenced an event of it
        self.counted = False  # whether it counts among its account's live calls
        self.status = state.status
        self.last_seq = state.last_seq
        self.started_at = state.started_at
        self.first_seq = state.last_seq + 1  # the log is complete from here on
        self.log: list[_Held] = []  # in seq order: `held` bisects it
        self.latest: dict[str, int] = {}  # supersede key → seq of the newest partial of that key
        self.superseded: set[int] = set()  # seqs of partials a newer transcript superseded
        self.ended_at: float | None = None
        self.unstored: set[int] = set()  # seqs whose commit failed: stored by a repair first
        self.holder: str | None = None  # the producer socket holding it (live control)
        self.pending: dict[str, str] | None = None  # control requests waiting: request_id → action
        self.turns = TurnTracker()
        self.metadata: Metadata | None = state.metadata  # replaced on each change, never mutated
        # Its events' ids (idempotent publish): id → seq, kept as long as this broker holds the call.
        self.ids: dict[str, int] | None = state.ids

    def append(self, event: Event) -> None:
        key = event.key
        if key is not None:
            older = self.latest.pop(key, None)
            if older is not None:
                self.superseded.add(older)
            if event.is_partial:
                self.latest[key] = event.seq
        meta = event.meta
        changed = orjson.dumps(meta).decode() if meta is not None and "metadata" in event.data else None
        self.log.append((event.seq, event.ts, event.type, event.frame, key, changed))
        if len(self.superseded) > 256 and len(self.superseded) * 2 > len(self.log):
            self.compact()

    def compact(self) -> None:
        """Drop superseded partials from the log (history already leaves them out)."""
        if self.superseded:
            gone = self.superseded
            self.log = [h for h in self.log if h[0] not in gone]
            self.superseded = set()

    def held(self, account: str, call_id: str, since: int) -> list[Event]:
        """The log after `since`: where it starts is found by bisection (the log is in seq order)
        and only that tail is copied, since resuming subscribers (thousands at once in a
        reconnect storm) each ask for the last few events of what may be a long log."""
        gone = self.superseded
        start = bisect.bisect_right(self.log, since, key=_seq_of)
        return [_event(account, call_id, held) for held in self.log[start:] if held[0] not in gone]

    def unstored_events(self, account: str, call_id: str) -> list[Event]:
        wanted = self.unstored
        return [_event(account, call_id, held) for held in self.log if held[0] in wanted]


def _event(account: str, call_id: str, held: _Held) -> Event:
    """The event of a log entry, around its frame as it is (the producer's id is in it)."""
    seq, ts, kind, frame, key, meta = held
    body = orjson.loads(frame)
    return Event(
        account, call_id, seq, ts, kind, body["data"], frame, key=key, id=body.get("id"),
        meta=None if meta is None else orjson.loads(meta),
    )


class _Batch(NamedTuple):
    """One publish being checked and sequenced: its events, their calls by id (loaded once), and
    the events that repeat ones their calls hold (`ids.find_repeats`), answered but not applied."""

    account: str
    events: Sequence[NewEvent]
    calls: dict[str, _Call]
    repeats: Repeats | None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryBroker(Broker):
    def __init__(
        self,
        *,
        history_ttl_s: float = 3600.0,
        deliver_after_store: bool = False,
        quotas: Quotas | None = None,
        live_ttl_s: float = LIVE_TTL_S,
        control_timeout_s: float = 10.0,
    ) -> None:
        """`deliver_after_store`: fan out only from `deliver_stored`, i.e. after the commit.

        The sequence counter lives in this process: were a subscriber to see an event before it
        is stored, a crash would make the restarted node hand the same seq out again (it resumes
        from the store's last seq). The node runs with it on; the contract tests exercise both.
        """
        self._deliver_after_store = deliver_after_store
        self._calls: dict[tuple[str, str], _Call] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[_Call]] = {}
        self._history_ttl_s = history_ttl_s
        self._live_ttl_s = live_ttl_s
        self._quotas = quotas or Quotas()
        self._live: Counter[str] = Counter()  # account → its calls that count as live
        self._sockets: Counter[str] = Counter()  # account → its open sockets on this node
        self._sweeper: asyncio.Task[None] | None = None
        self._absent: OrderedDict[tuple[str, str], None] = OrderedDict()  # not in the store either
        self._control_timeout_s = control_timeout_s
        # Control requests by deadline (monotonic s): (deadline, account, call_id, request_id).
        self._deadlines: list[tuple[float, str, str, str]] = []

    async def _open(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-broker-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def publish(self, account: str, events: Sequence[NewEvent], holder: str | None = None) -> list[Event]:
        call_ids = list(dict.fromkeys(e.call_id for e in events))
        if all((account, cid) in self._calls for cid in call_ids):
            calls = {cid: self._calls[(account, cid)] for cid in call_ids}
        else:  # new calls: their look-ups run together (the store answers them in one query)
            loaded = await asyncio.gather(*(self._call(account, cid) for cid in call_ids))
            calls = dict(zip(call_ids, loaded, strict=True))
        # From here on no await: the check and the sequencing are one atomic step.
        for cid, call in calls.items():
            if call.unstored:
                raise RepairNeededError(account, cid)
        repeats = find_repeats(events, lambda cid: calls[cid].ids)
        batch = _Batch(account, events, calls, repeats)
        ended = {cid: call.status == "ended" for cid, call in calls.items()}
        answered: set[tuple[str, str]] = set()  # (call_id, request_id) of results in this batch
        for index, new in enumerate(events):
            if repeats is not None and index in repeats:
                continue
            if ended[new.call_id]:
                raise CallEndedError(new.call_id, index)
            ended[new.call_id] = new.type == ENDED
            if new.type == RESULT or new.type == ENDED:
                self._check_control(calls[new.call_id], new, index, answered)
        if self._quotas.events_per_call or self._quotas.live_calls:
            self._check_quotas(batch, ended)
        metas = merged_metadata(events, {cid: call.metadata for cid, call in calls.items()}, repeats or ())
        ts = now_ms()
        out = self._sequence(batch, ts, metas)
        if repeats is not None:  # a call is active, and held, by the events it took
            calls = {e.call_id: calls[e.call_id] for e in out if not e.repeat}
        for call in calls.values():
            call.active_ms = ts
            if holder is not None:
                call.holder = holder
        if not self._deliver_after_store:
            self.deliver_stored(out if repeats is None else [e for e in out if not e.repeat])
        return out

    def _sequence(self, batch: _Batch, ts: int, metas: Sequence[Metadata | None]) -> list[Event]:
        """Give each event (but repeats, answered with their first seq) its seq, in batch order."""
        account, events, calls, repeats = batch
        out: list[Event] = []
        for index, (new, meta) in enumerate(zip(events, metas, strict=True)):
            if repeats is not None and index in repeats:
                out.append(repeat_of(new, account, first_seq(repeats[index], out)))
                continue
            call = calls[new.call_id]
            call.metadata = meta
            call.last_seq += 1
            if call.started_at is None:
                call.started_at = ts
            part = role(new.type, new.data)
            marks = call.turns.step(part, ts) if part else None
            if marks is not None:
                marks.write_into(new.data)
            event = Event(
                account, new.call_id, call.last_seq, ts, new.type, new.data, marks=marks, id=new.id, meta=meta
            )
            call.append(event)
            if new.id is not None:
                if call.ids is None:
                    call.ids = {}
                call.ids[new.id] = event.seq
            if new.type == REQUESTED or new.type == RESULT:
                self._keep_control(account, call, new)
            if new.type == ENDED:
                call.status, call.ended_at = "ended", time.monotonic()
                call.compact()  # kept for an hour: without what nobody can replay any more
                if call.counted:
                    self._uncount(account, call)
            else:
                call.status = "live"
                if not call.counted:
                    call.counted = True
                    self._live[account] += 1
            out.append(event)
        return out

    @staticmethod
    def _check_control(call: _Call, new: NewEvent, index: int, answered: set[tuple[str, str]]) -> None:
        """A result must answer a waiting request, once; a call may not end with one waiting."""
        pending = call.pending or {}
        if new.type == RESULT:
            request_id = str(new.data["request_id"])
            if request_id not in pending or (new.call_id, request_id) in answered:
                raise ControlResultError(new.call_id, index, request_id)
            answered.add((new.call_id, request_id))
            return
        waiting = {r: a for r, a in pending.items() if (new.call_id, r) not in answered}
        if waiting:
            raise PendingControlsError(new.call_id, index, waiting)

    def _keep_control(self, account: str, call: _Call, new: NewEvent) -> None:
        request_id = str(new.data["request_id"])
        if new.type == RESULT:
            if call.pending is not None:
                call.pending.pop(request_id, None)
            return
        deadline = time.monotonic() + self._control_timeout_s
        self._wait(account, new.call_id, call, request_id, str(new.data["action"]), deadline)

    def _wait(self, account: str, call_id: str, call: _Call, request_id: str, action: str, deadline: float) -> None:
        """The request waits for its result until `deadline` (monotonic s), then times out."""
        if call.pending is None:
            call.pending = {}
        call.pending[request_id] = action
        heapq.heappush(self._deadlines, (deadline, account, call_id, request_id))

    # ---- live control: one node, so holders and relays stay in this process -------------

    @property
    def node_id(self) -> str:
        return "local"

    async def holder(self, account: str, call_id: str) -> str | None:
        call = self._calls.get((account, call_id))
        return None if call is None else call.holder

    async def release(self, account: str, call_ids: Collection[str], holder: str) -> None:
        for call_id in call_ids:
            call = self._calls.get((account, call_id))
            if call is not None and call.holder == holder:
                call.holder = None

    async def relay(self, holder: str, frame: bytes) -> None:
        if self.on_relay is not None:
            self.on_relay(Holder.decode(holder).conn, frame)

    @property
    def forgets_controls(self) -> bool:
        return True

    async def resume_controls(self, waiting: Sequence[WaitingRequest]) -> None:
        keys = list(dict.fromkeys((w.account, w.call_id) for w in waiting))
        calls = dict(zip(keys, await asyncio.gather(*(self._call(*key) for key in keys)), strict=True))
        now, now_s = time.monotonic(), time.time()
        for request in waiting:
            call = calls[(request.account, request.call_id)]
            if call.status == "ended" or request.request_id in (call.pending or {}):
                continue
            left = request.requested_at / 1000 + self._control_timeout_s - now_s
            self._wait(request.account, request.call_id, call, request.request_id, request.action, now + max(0.0, left))

    async def due_controls(self) -> list[tuple[str, str, str]]:
        now, due = time.monotonic(), []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, account, call_id, request_id = heapq.heappop(self._deadlines)
            call = self._calls.get((account, call_id))
            if call is not None and call.pending and request_id in call.pending:
                due.append((account, call_id, request_id))
        return due

    def _check_quotas(self, batch: _Batch, ended: dict[str, bool]) -> None:
        """Raise QuotaExceededError if the batch would pass a quota; `ended`: after the batch.

        This runs on every publish: one pass over the batch's calls with an integer compare and
        a flag each, and the exact count only for a batch that may pass a quota."""
        account, events, calls, repeats = batch
        events_limit, live_limit, size = self._quotas.events_per_call, self._quotas.live_calls, len(events)
        fresh: list[str] = []
        near = False
        for cid, call in calls.items():
            if events_limit and call.last_seq + size > events_limit:
                near = True
            if live_limit and not call.counted and not ended[cid]:
                fresh.append(cid)
        if repeats is not None:  # a call that only repeats events does not start (nor count) again
            fresh = [cid for cid in fresh if any(e.call_id == cid for i, e in enumerate(events) if i not in repeats)]
        if near:
            self._check_events(events_limit, batch)
        if fresh and self._live[account] + len(fresh) > live_limit:
            call_id = fresh[max(0, live_limit - self._live[account])]
            index = next(i for i, new in enumerate(events) if new.call_id == call_id)
            raise self._quotas.live_calls_exceeded(call_id, index)

    def _check_events(self, limit: int, batch: _Batch) -> None:
        _, events, calls, repeats = batch
        counts = {cid: call.last_seq for cid, call in calls.items()}
        for index, new in enumerate(events):
            if repeats is not None and index in repeats:
                continue
            counts[new.call_id] += 1
            # A call can always end, and a control request always gets its result.
            if counts[new.call_id] > limit and new.type != ENDED and new.type != RESULT:
                raise self._quotas.events_exceeded(new.call_id, index)

    def _uncount(self, account: str, call: _Call) -> None:
        call.counted = False
        self._live[account] -= 1
        if self._live[account] <= 0:
            del self._live[account]

    async def acquire_socket(self, account: str) -> None:
        limit = self._quotas.sockets
        if limit and self._sockets[account] >= limit:
            raise self._quotas.sockets_exceeded()
        self._sockets[account] += 1

    async def release_socket(self, account: str) -> None:
        self._sockets[account] -= 1
        if self._sockets[account] <= 0:
            del self._sockets[account]

    @property
    def fans_out_on_publish(self) -> bool:
        return not self._deliver_after_store

    def deliver_stored(self, events: Sequence[Event]) -> None:
        assert self._deliver is not None
        self._deliver(events)
        if self._deliver_after_store:
            for event in events:
                if event.type == ENDED:
                    self._release_log(event.account, event.call_id)

    def forget_history(self, account: str, call_id: str) -> None:
        self._release_log(account, call_id)

    # ---- unstored events: one node, so the marks live here -------------------------------

    async def mark_unstored(self, events: Sequence[Event]) -> None:
        for event in events:
            call = self._calls.get((event.account, event.call_id))
            if call is not None and not event.is_partial:  # partials are never stored
                call.unstored.add(event.seq)

    @contextlib.asynccontextmanager
    async def repairing(self, account: str, call_id: str) -> AsyncIterator[Unstored]:
        """No claim to make: the node's repair runs one at a time per call."""
        call = self._calls.get((account, call_id))
        if call is None or not call.unstored:
            yield Unstored()
            return
        seqs = sorted(call.unstored)
        yield Unstored(seqs, call.unstored_events(account, call_id))

    async def repaired(self, account: str, call_id: str, work: Unstored) -> None:
        call = self._calls.get((account, call_id))
        if call is not None:
            call.unstored.difference_update(work.seqs)

    async def overdue(self) -> list[tuple[str, str]]:
        return [key for key, call in self._calls.items() if call.unstored]

    # ---- erasure: one node, so there is no one else to tell --------------------------------

    async def unsettled(self, account: str, call_ids: Sequence[str]) -> set[str]:
        """Only failed commits leave events unconfirmed here: the node's one writer commits in order."""
        return {cid for cid in call_ids if (call := self._calls.get((account, cid))) is not None and call.unstored}

    async def erase(self, account: str, call_ids: Sequence[str]) -> None:
        for call_id in call_ids:
            key = (account, call_id)
            call = self._calls.pop(key, None)
            if call is not None and call.counted:
                self._uncount(account, call)
            self._remember_absent(key)  # the store has it no more either
        if self.on_erased is not None:
            self.on_erased(account, call_ids)

    def _release_log(self, account: str, call_id: str) -> None:
        """An ended call whose events are all committed: the store now answers `since` for it.

        Everything replayable of an ended call is in the store (every non-partial event; its
        partials are superseded by then), so keeping the log in memory for the retention hour
        would only make the node's memory grow with call churn.
        """
        call = self._calls.get((account, call_id))
        if call is not None:
            call.log, call.latest, call.superseded = [], {}, set()
            call.first_seq = call.last_seq + 1

    async def state(self, account: str, call_id: str) -> CallState:
        call = self._calls.get((account, call_id))
        if call is not None:
            return CallState(call.status, call.last_seq, call.started_at, call.metadata)
        return await self._load(account, call_id)

    def _remember_absent(self, key: tuple[str, str]) -> None:
        self._absent[key] = None
        if len(self._absent) > _ABSENT_MAX:
            self._absent.popitem(last=False)

    async def history(self, account: str, call_id: str, since: int) -> HeldHistory:
        call = self._calls.get((account, call_id))
        if call is None:
            state = await self._load(account, call_id)
            return HeldHistory([], state.last_seq + 1)
        return HeldHistory(call.held(account, call_id, since), call.first_seq)

    async def _load(self, account: str, call_id: str) -> CallState:
        """The store's state of a call this broker does not hold; calls the store does not have
        either are remembered (LRU), so that subscribing to a call before it starts, or its first
        events, cost no store round trip per subscriber (one node sequences every call here: a
        call absent from both can only start through this broker, which then holds it)."""
        key = (account, call_id)
        if key in self._absent:
            self._absent.move_to_end(key)
            return CallState("pending", 0)
        assert self._load_call is not None
        state = await self._load_call(account, call_id)
        if state is None:
            if key not in self._calls:
                self._remember_absent(key)
            return CallState("pending", 0)
        return state

    async def _call(self, account: str, call_id: str) -> _Call:
        """The call's in-memory state, loaded once from the store (single flight) if unknown."""
        key = (account, call_id)
        call = self._calls.get(key)
        if call is not None:
            return call
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[key] = loading
            try:
                state = await self._load(account, call_id)
                call = self._calls.setdefault(key, _Call(state))
                self._absent.pop(key, None)
                loading.set_result(call)
            except BaseException as exc:
                loading.set_exception(exc)
                loading.exception()  # retrieved: waiters, if any, re-raise it
                raise
            finally:
                del self._loading[key]
            return call
        return await asyncio.shield(loading)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            self.sweep()

    def sweep(self, now: float | None = None, now_wall_ms: int | None = None) -> int:
        """Forget calls that ended more than the history TTL ago, and calls idle for the live TTL
        that never ended (their producer died): they stop counting as live. The store keeps both."""
        deadline = (time.monotonic() if now is None else now) - self._history_ttl_s
        idle_since = (now_ms() if now_wall_ms is None else now_wall_ms) - int(self._live_ttl_s * 1000)
        expired = [
            k
            for k, c in self._calls.items()
            if not c.unstored  # its log is what a repair stores from
            and ((c.ended_at is not None and c.ended_at < deadline) or (c.ended_at is None and c.active_ms < idle_since))
        ]
        for key in expired:
            call = self._calls.pop(key)
            if call.counted:
                self._uncount(key[0], call)
        return len(expired)
