"""Gap-free history: what the broker sequenced and the store failed to take is stored later.

On the Redis broker an event reaches subscribers as soon as it is sequenced, before its commit.
When the commit fails (the database is down), the event is still in the broker's replay log:
the node that sequenced it marks the call in the broker, and the event is stored from the log
once the store takes writes again, in seq order, before the node acks anything newer of that
call and before any node sequences more of it. The mark lives in the broker, so a node that dies
meanwhile leaves the work to the next node that touches the call, or to any node's sweep.

On the embedded broker nothing fans out before its commit; a failed commit's events are stored
by the same repair and fan out then, so the stored history has no hole there either.

`HistoryRepair` is the publish path's part of it (`Runtime.publish` calls `sequence` and
`track`); the broker keeps the marks (`Broker.mark_unstored`, `repairing`, `repaired`) and the
store stores, knowing nothing of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from callstream.broker import Broker, BrokerUnavailableError
from callstream.broker.base import RepairBusyError, RepairNeededError, Unstored
from callstream.events import Event, NewEvent
from callstream.server.tasks import TaskSet
from callstream.store import CallFailedError, SqlStore, StoreUnavailableError

log = logging.getLogger("callstream.repair")

CallKey = tuple[str, str]  # (account, call_id)

SWEEP_EVERY_S = 1.0  # how often a node looks for calls waiting for a repair
_ATTEMPTS = 3  # repairs one publish runs before it gives up (another node keeps marking the call)


class RepairPendingError(StoreUnavailableError):
    """The call has events the store has not taken yet, and they cannot be stored right now:
    nothing was applied; retry once the store is back (503 / `internal`)."""


class HistoryRepair:
    """Stores the events of failed commits from the broker's log, before anything newer.

    `broken` holds the calls this node failed to store, each with a future that resolves once
    a repair stored what the log holds of them: a later append of such a call that commits
    first is confirmed only then (`track`), so no ack overtakes the hole.
    """

    def __init__(self, store: SqlStore, broker: Broker, deliver: Callable[[list[Event]], None]) -> None:
        """`deliver`: fan out events a repair stored (the embedded broker's fan-out waits for them)."""
        self._store = store
        self._broker = broker
        self._deliver = deliver
        self.broken: dict[CallKey, asyncio.Future[None]] = {}
        self._unmarked: list[Event] = []  # failed events the broker could not be told of yet
        self._running: dict[CallKey, asyncio.Task[None]] = {}
        self._confirmed: list[Event] = []  # committed, to take out of the broker's unstored sets
        self._confirm_due = False
        self._tasks = TaskSet()
        self._outage = False  # a sweep's repair failed: logged once until one succeeds
        self.repairs = 0  # events stored by a repair (for the metrics and the tests)

    # ---- the publish path ------------------------------------------------------------------

    async def sequence(self, account: str, events: Sequence[NewEvent]) -> list[Event]:
        """`Broker.publish`, once every call of the batch has its earlier events stored."""
        if self.broken:
            for call_id in dict.fromkeys(e.call_id for e in events):
                if (account, call_id) in self.broken:
                    await self.repair(account, call_id)
        for _ in range(_ATTEMPTS):
            try:
                return await self._broker.publish(account, events)
            except RepairNeededError as exc:
                await self.repair(exc.account, exc.call_id)
        raise RepairPendingError("the call's earlier events are still being stored; retry")

    def track(self, events: list[Event], appended: asyncio.Future[None]) -> asyncio.Future[None]:
        """The future a producer waits on for `events`, which the store's `appended` commits.

        It fails as `appended` does (a failed commit marks its calls for a repair); when
        `appended` succeeds it resolves once no call of the batch has a failed commit before
        it waiting for its repair.
        """
        durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        appended.add_done_callback(lambda done: self._settled(events, done, durable))
        return durable

    def _settled(self, events: list[Event], appended: asyncio.Future[None], durable: asyncio.Future[None]) -> None:
        if appended.cancelled():
            durable.cancel()
            return
        error = appended.exception()
        if error is None:
            self._confirm(events)
            waits = {self.broken[key] for e in events if (key := (e.account, e.call_id)) in self.broken}
            if not waits:
                durable.set_result(None)
            else:
                asyncio.gather(*waits).add_done_callback(lambda _: _resolve(durable))
            return
        if isinstance(error, CallFailedError):  # those calls failed for good: nothing to repair
            self._confirm([e for e in events if (e.account, e.call_id) not in error.calls])
        else:
            self._failed(events)
        durable.set_exception(error)
        durable.exception()  # a producer that went away must not warn

    def _confirm(self, events: list[Event]) -> None:
        """Tell the broker these are stored, once per loop iteration for every commit of it."""
        if not self._broker.tracks_unstored:
            return
        self._confirmed.extend(events)
        if not self._confirm_due:
            self._confirm_due = True
            asyncio.get_running_loop().call_soon(self._send_confirmed)

    def _send_confirmed(self) -> None:
        events, self._confirmed, self._confirm_due = self._confirmed, [], False
        self._start(self._tell_stored(events))

    async def _tell_stored(self, events: list[Event]) -> None:
        # Unconfirmed, they stay in the broker's sets: past `UNSTORED_AFTER_S` a repair finds
        # them stored and takes them out.
        with contextlib.suppress(BrokerUnavailableError):
            await self._broker.stored(events)

    def _failed(self, events: list[Event]) -> None:
        loop = asyncio.get_running_loop()
        for key in dict.fromkeys((e.account, e.call_id) for e in events):
            if key not in self.broken:
                self.broken[key] = loop.create_future()
        self._unmarked.extend(events)
        self._start(self._mark())

    async def _mark(self) -> None:
        """Mark the failed calls in the broker (so every node refuses them until repaired)."""
        events, self._unmarked = self._unmarked, []
        if not events:
            return
        try:
            await self._broker.mark_unstored(events)
        except BrokerUnavailableError:
            self._unmarked[:0] = events  # this node still knows; the sweep tries again

    # ---- the repair --------------------------------------------------------------------------

    async def repair(self, account: str, call_id: str) -> None:
        """Store what the broker's log holds of the call's unstored events (one repair at a time
        per call on this node). Raises StoreUnavailableError / BrokerUnavailableError while it
        cannot (nothing is lost: it stays marked)."""
        key = (account, call_id)
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.get_running_loop().create_task(self._repair(key))
            running.add_done_callback(lambda _: self._running.pop(key, None))
        await asyncio.shield(running)

    async def _repair(self, key: CallKey) -> None:
        account, call_id = key
        async with self._broker.repairing(account, call_id) as work:
            stored = await self._store_missing(account, call_id, work)
            await self._broker.repaired(account, call_id, work)
        if stored:
            self._deliver(stored)
        waiting = self.broken.pop(key, None)
        if waiting is not None:
            _resolve(waiting)

    async def _store_missing(self, account: str, call_id: str, work: Unstored) -> list[Event]:
        """Append the events of `work` the store does not hold yet, in seq order; return them."""
        if not work.seqs:
            return []
        held = {e.seq for e in work.events}
        if lost := [seq for seq in work.seqs if seq not in held]:
            log.error("call %s: %d unstored events are gone from the broker's log (seqs %s…)", call_id, len(lost), lost[:5])
        if not work.events:
            return []
        have = await self._store.events(account, call_id, since=work.events[0].seq - 1, until=work.events[-1].seq)
        stored = {e.seq for e in have}
        missing = [e for e in work.events if e.seq not in stored]
        if not missing:
            return []
        try:
            await self._store.append(missing)
        except CallFailedError:  # the database refuses this call's rows: it fails, nothing to retry
            log.error("call %s: the store refused the events a repair stored; the call failed", call_id)
            return []
        self.repairs += len(missing)
        log.info("call %s: stored %d events the store missed (seqs %d-%d)", call_id, len(missing), missing[0].seq, missing[-1].seq)
        return missing

    # ---- the sweep ---------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Every `SWEEP_EVERY_S`: repair this node's broken calls and the broker's overdue ones
        (marked by a node that may be gone, or left unconfirmed); one log line per outage."""
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
                try:
                    await self.repair(account, call_id)
                except RepairBusyError:
                    continue  # another node is at it
        except (StoreUnavailableError, BrokerUnavailableError) as exc:
            if not self._outage:
                log.warning("repairs wait for the store and the broker: %s", exc)
            self._outage = True
            return
        if self._outage:
            log.info("repairs resumed")
        self._outage = False

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.start(coro, name="repair")

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self._tasks.stop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
