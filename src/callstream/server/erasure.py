"""Erasing ended calls (docs/privacy.md): their recordings, the store's rows, then the broker's
state and replay log, on every node.

The order is what keeps a call id reusable. Once the store's rows are gone, a publish of the id
that reaches the broker before the broker forgets the call is still refused (the broker holds it
ended), and one after it is seeded from the store, which no longer has the call: a new call at
seq 1. The other way round, a publish in between would seed the broker again from the store's
old rows, and the id would stay ended.

A call some of whose events no commit has confirmed yet (`Broker.unsettled`: another node's
commit under way, or a repair waiting for the store) is not erased yet: that commit would bring
rows of it back. The question also reaches the broker before anything is deleted, so a broker
that cannot be reached fails the erasure before it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from callstream.broker import Broker, BrokerUnavailableError
from callstream.errors import UnavailableError
from callstream.server.recordings import Recordings
from callstream.store import SqlStore

__all__ = ["CallLiveError", "CallNotFoundError", "CallSettlingError", "Erasure"]

_SETTLE_POLL_S = 0.1
_SETTLE_POLLS = 10  # a second, several times what a node takes to confirm its commits


class CallNotFoundError(Exception):
    """No such call in the account (or erased meanwhile)."""


class CallLiveError(Exception):
    """The call has not ended: its producer would write it again. End it first."""


class CallSettlingError(UnavailableError):
    """Some of the call's events are still being stored; erasing now could leave some behind."""


class Erasure:
    """Erases one node's view of calls, and through the broker every node's."""

    def __init__(self, store: SqlStore, broker: Broker, recordings: Recordings | None = None) -> None:
        self._store = store
        self._broker = broker
        self._recordings = recordings

    async def erase_call(self, account: str, call_id: str) -> None:
        """Erase one ended call of the account, or raise why not (nothing is erased then)."""
        call = await self._store.get_call(account, call_id)
        if call is None:
            raise CallNotFoundError(call_id)
        if call.status != "ended":
            raise CallLiveError(call_id)
        await self._settled(account, call_id)
        if not await self._erase(account, [call_id]):
            raise CallNotFoundError(call_id)  # another node (or the retention sweep) was first

    async def _settled(self, account: str, call_id: str) -> None:
        """Return once no event of the call waits for its commit's confirmation; a node confirms
        its commits a moment after them, so a call erased as it ends waits that moment here."""
        for _ in range(_SETTLE_POLLS):
            if not await self._broker.unsettled(account, [call_id]):
                return
            await asyncio.sleep(_SETTLE_POLL_S)
        raise CallSettlingError(f"call {call_id}: its last events are still being stored; retry in a moment")

    async def erase_ended(self, account: str, call_ids: Sequence[str]) -> int:
        """Erase those of the account's calls that have ended and are settled; how many were."""
        unsettled = await self._broker.unsettled(account, call_ids)
        return len(await self._erase(account, [c for c in call_ids if c not in unsettled]))

    async def _erase(self, account: str, call_ids: Sequence[str]) -> list[str]:
        if self._recordings is not None and call_ids:
            # First: a disk that refuses fails the erasure while the call is still there to retry.
            await self._recordings.erase(account, list(call_ids))
        erased = await self._store.erase_calls(account, call_ids)
        try:
            await self._broker.erase(account, erased)
        except BrokerUnavailableError as exc:
            message = (
                f"{len(erased)} call(s) erased from the store, but not from the broker ({exc}): "
                "their replay history expires with the history TTL"
            )
            raise BrokerUnavailableError(message) from exc
        return erased
