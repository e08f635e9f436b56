"""The retention sweep (docs/privacy.md): ended calls older than `--retention-days` are erased.

Every node sweeps, each on its own timer: erasure is idempotent (a call two nodes pick at once
is erased by one of them), so no node needs to be elected for it. A sweep takes each account's
calls that ended before the cutoff `batch` at a time, oldest first, one transaction each, with
a pause between: a backlog of a million calls holds the database a moment at a time, and
ingest's commits go between them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from callstream.errors import UnavailableError
from callstream.outages import OutageLog
from callstream.server.erasure import Erasure
from callstream.store import SqlStore

__all__ = ["RetentionSweep"]

log = logging.getLogger("callstream.retention")

DAY_MS = 86_400_000
BATCH = 500  # calls erased in one transaction
PAUSE_S = 0.2  # between two batches: room for the writer's commits


@dataclass(slots=True)
class RetentionSweep:
    """Erases the calls that ended more than `days` ago, every `every_s` seconds."""

    store: SqlStore
    erasure: Erasure
    days: int
    _: KW_ONLY
    every_s: float
    batch: int = BATCH
    pause_s: float = PAUSE_S
    clock: Callable[[], float] = time.time
    _outage: OutageLog = field(init=False, default_factory=lambda: OutageLog(log, "the retention sweep"))

    async def run_forever(self) -> None:
        """Sweep now, then every `every_s`; a sweep the store or the broker fails is tried again
        at the next tick (`OutageLog` says so once)."""
        while True:
            try:
                erased = await self.sweep()
            except UnavailableError as exc:
                self._outage.failed(exc)
            else:
                self._outage.recovered()
                log.info("retention sweep: %d ended call(s) erased (retention: %d day(s))", erased, self.days)
            await asyncio.sleep(self.every_s)

    async def sweep(self) -> int:
        """One sweep over every account; how many calls it erased."""
        cutoff = int(self.clock() * 1000) - self.days * DAY_MS
        erased = 0
        for account in await self.store.accounts():
            erased += await self._sweep_account(account, cutoff)
        return erased

    async def _sweep_account(self, account: str, cutoff: int) -> int:
        erased = 0
        while True:
            call_ids = await self.store.calls_ended_before(account, cutoff, self.batch)
            if not call_ids:
                return erased
            done = await self.erasure.erase_ended(account, call_ids)
            erased += done
            if len(call_ids) < self.batch or not done:  # the rest wait for their commits: next sweep
                return erased
            await asyncio.sleep(self.pause_s)
