"""Gap-free history: what the broker sequenced and the store failed to take is stored later.

On the Redis broker an event reaches subscribers as soon as it is sequenced, before its commit.
When the commit fails (the database is down), the event is still in the broker's replay log:
the node marks it failed in the broker, and it is stored from the log once the store takes
writes again, in seq order, before anything newer of that call: the store fails the call's
later appends until then (`SqlStore.unsettled`), and no node sequences more of the call (the
broker refuses it with RepairNeededError). The marks live in the broker, so a node that dies
meanwhile leaves the work to the next node that touches the call, or to any node's sweep.

On the embedded broker nothing fans out before its commit; a failed commit's events are stored
by the same repair and fan out then, so the stored history has no hole there either.

`HistoryRepair` is the publish path's part of it: `Runtime.publish` has it repair a call
before sequencing more of it (`repair_first`, `sequence_after`); the store reports each
commit's outcome to `committed` and `failed`. The broker
keeps the marks (`Broker.mark_unstored`, `repairing`, `repaired`, `overdue`) and the store
stores, knowing nothing of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from callstream import metrics
from callstream.broker import Broker, BrokerUnavailableError
from callstream.broker.base import RepairBusyError, RepairNeededError, Unstored
from callstream.events import Event, NewEvent
from callstream.outages import OutageLog
from callstream.server.tasks import TaskSet
from callstream.store import CallFailedError, SqlStore, StoreUnavailableError

log = logging.getLogger("callstream.repair")

CallKey = tuple[str, str]  # (account, call_id)

SWEEP_EVERY_S = 1.0  # how often a node looks for calls waiting for a repair
CONFIRM_EVERY_S = 0.2  # how often a node tells the broker which events its commits stored
_ATTEMPTS = 3  # repairs one publish runs before it gives up (another node keeps failing the call)


class RepairPendingError(StoreUnavailableError):
    """The call has events the store has not taken yet, and they cannot be stored right now:
    nothing was applied; retry once the store is back (503 / `internal`)."""


class HistoryRepair:
    """Stores the events of failed commits from the broker's log, before anything newer.

    `broken` holds the calls this node failed to store, each with this node's copy of the events
    (stored too, should the broker have lost its own: a Redis that restarted empty).
    """

    def __init__(self, store: SqlStore, broker: Broker, deliver: Callable[[list[Event]], None]) -> None:
        """`deliver`: fan out events a repair stored (the embedded broker's fan-out waits for them)."""
        self._store = store
        self._broker = broker
        self._deliver = deliver
        self.broken: dict[CallKey, dict[int, Event]] = {}
        self._unmarked: list[Event] = []  # failed events the broker could not be told of yet
        self._confirmed: list[Event] = []  # stored events the broker is not told of yet
        self._confirm_timer: asyncio.TimerHandle | None = None
        self._running: dict[CallKey, asyncio.Task[None]] = {}
        self._tasks = TaskSet()
        self._outage = OutageLog(log, "the sweep for events to repair")
        store.on_failure = self.failed
        if broker.tracks_unstored:
            store.on_commit = self.committed

    # ---- the publish path ------------------------------------------------------------------

    async def repair_first(self, account: str, events: Sequence[NewEvent]) -> None:
        """Repair the calls of the batch this node failed to store (before sequencing more)."""
        for call_id in dict.fromkeys(e.call_id for e in events):
            if (account, call_id) in self.broken:
                await self.repair(account, call_id)

    async def sequence_after(
        self, refused: RepairNeededError, events: Sequence[NewEvent], holder: str | None = None
    ) -> list[Event]:
        """`Broker.publish` refused the batch for a call to repair: repair, then sequence."""
        for _ in range(_ATTEMPTS):
            await self.repair(refused.account, refused.call_id)
            try:
                return await self._broker.publish(refused.account, events, holder)
            except RepairNeededError as again:
                refused = again
        raise RepairPendingError("the call's earlier events are still being stored; retry")

    def forget(self, account: str, call_ids: Sequence[str]) -> None:
        """Calls erased: nothing of them is left to repair."""
        for call_id in call_ids:
            self.broken.pop((account, call_id), None)

    def committed(self, events: list[Event]) -> None:
        """A commit stored these: the broker no longer counts them as unstored. Told in one
        call every `CONFIRM_EVERY_S` (nothing needs it sooner than `UNSTORED_AFTER_S`)."""
        self._confirmed.extend(events)
        if self._confirm_timer is None:
            self._confirm_timer = asyncio.get_running_loop().call_later(CONFIRM_EVERY_S, self._confirm)

    def _confirm(self) -> None:
        events, self._confirmed, self._confirm_timer = self._confirmed, [], None
        self._start(self._tell_stored(events))

    async def _tell_stored(self, events: list[Event]) -> None:
        # Unconfirmed, they stay in the broker's sets: past `UNSTORED_AFTER_S` a repair finds
        # them stored and takes them out.
        with contextlib.suppress(BrokerUnavailableError):
            await self._broker.stored(events)

    def failed(self, events: list[Event]) -> None:
        """A commit could not store these (an outage): their calls wait for a repair."""
        for event in events:
            held = self.broken.setdefault((event.account, event.call_id), {})
            if not event.is_partial:  # never stored
                held[event.seq] = event
        self._unmarked.extend(events)
        self._start(self._mark())

    async def _mark(self) -> None:
        """Tell the broker (so every node refuses the calls until they are repaired)."""
        events, self._unmarked = self._unmarked, []
        if not events:
            return
        try:
            await self._broker.mark_unstored(events)
        except BrokerUnavailableError:
            self._unmarked[:0] = events  # this node still knows; the sweep tries again

    # ---- the repair --------------------------------------------------------------------------

    async def repair(self, account: str, call_id: str) -> None:
        """Store what the broker's log (and this node) holds of the call's unstored events, one
        repair at a time per call on this node. Raises StoreUnavailableError or
        BrokerUnavailableError while it cannot (nothing is lost: the call stays marked)."""
        key = (account, call_id)
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.get_running_loop().create_task(self._repair(key))
            running.add_done_callback(lambda _: self._running.pop(key, None))
        await asyncio.shield(running)

    async def _repair(self, key: CallKey) -> None:
        account, call_id = key
        if not await self._store.probe_write():  # down: fail here, before taking the call's lock
            raise StoreUnavailableError("the store takes no writes yet")
        async with self._broker.repairing(account, call_id) as work:
            stored = await self._store_missing(account, call_id, self._with_own(key, work))
            self._store.settle(account, call_id)
            await self._broker.repaired(account, call_id, work)
        self.broken.pop(key, None)
        if stored:
            self._deliver(stored)

    def _with_own(self, key: CallKey, work: Unstored) -> Unstored:
        """`work` and this node's copy of the events it failed to store, in seq order."""
        own = self.broken.get(key)
        if not own:
            return work
        events = {e.seq: e for e in work.events} | own
        return Unstored(sorted({*work.seqs, *events}), [events[seq] for seq in sorted(events)])

    async def _store_missing(self, account: str, call_id: str, work: Unstored) -> list[Event]:
        """Append the events of `work` the store does not hold yet, in seq order; return them."""
        missing: list[Event] = []
        if work.events:
            first, last = work.events[0].seq, work.events[-1].seq
            have = {e.seq for e in await self._store.events(account, call_id, since=first - 1, until=last)}
            missing = [e for e in work.events if e.seq not in have]
        if missing:
            try:
                await self._store.append(missing, again=True)
            except CallFailedError:  # the database refuses this call's rows: it failed, for good
                log.error("call %s: the store refused the events a repair stored; the call failed", call_id)
                return []
            metrics.EVENTS_REPAIRED.inc(len(missing))
            seqs = f"{missing[0].seq}-{missing[-1].seq}"
            log.info("call %s: stored %d events a commit had failed to store (seqs %s)", call_id, len(missing), seqs)
        held = {e.seq for e in work.events}
        if lost := [seq for seq in work.seqs if seq not in held]:
            log.error("call %s: %d unstored events are gone from the broker's log (seqs %s…)", call_id, len(lost), lost[:5])
        return missing

    # ---- the sweep ---------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Every `SWEEP_EVERY_S`: repair this node's broken calls and the broker's overdue ones
        (failed on a node that may be gone, or left unconfirmed); one log line per outage."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            await self.sweep()

    async def sweep(self) -> None:
        try:
            if self._unmarked:
                await self._mark()
            calls = list(self.broken)
            calls += [key for key in await self._broker.overdue() if key not in self.broken]
            for account, call_id in calls:
                with contextlib.suppress(RepairBusyError):  # another node is at it
                    await self.repair(account, call_id)
        except (StoreUnavailableError, BrokerUnavailableError) as exc:
            self._outage.failed(exc)
            return
        self._outage.recovered()

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.start(coro, name="repair")

    async def close(self) -> None:
        if self._confirm_timer is not None:
            self._confirm_timer.cancel()
            self._confirm()  # what is stored by now (the store flushed before)
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self._tasks.stop(grace_s=2.0)
