"""Events Redis sequenced that the store has not confirmed, kept where every node sees them.

The publish script (`redis._PUBLISH`) puts each stored type's seq in the call's unstored set
(`…:unstored`, scored by its ts) as it sequences it, and the call in the unstored index (one
sorted set per prefix, each call scored by its set's lowest score). Once a commit holds them, the
node takes them out again (`stored`, one script per commit). What stays is what a repair must
store from the call's log (`server/repair.py`):

- the seqs of a commit that failed: their node scores them 0 (`failed`);
- seqs no node confirmed within `UNSTORED_AFTER_S`: their node died, or its confirmation was
  lost.

A call whose lowest score is older than `UNSTORED_AFTER_S` (so every call with a failed seq) is
refused by the publish script ('repair') until a repair stored those seqs; every node's sweep
finds it in the index. Younger seqs belong to a commit under way on some node and are left
alone. A repair holds the call's lock (`repairing`): two nodes never store the same events.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final, cast

import redis.asyncio as aioredis
from redis.exceptions import LockError, RedisError

from callstream.broker.base import UNSTORED_AFTER_S, RepairBusyError, Unstored
from callstream.broker.redis_sockets import Runner
from callstream.events import Event

__all__ = ["UnstoredLedger"]

#: How long a repair may hold a call's lock (a store read and a commit); a node that died
#: holding it frees it then.
REPAIR_LOCK_S: Final = 15.0
_OVERDUE_BATCH: Final = 100  # calls a sweep takes from the index at a time

# KEYS: each call's unstored set, then the index. ARGV: 'stored' (take the seqs out) or 'failed'
# (score them 0, if still there), then per call: its index member, n, n seqs. Each call's entry
# in the index follows: gone once its set is empty, else scored by the set's lowest score.
_SETTLE: Final = """
local index, failed = KEYS[#KEYS], ARGV[1] == 'failed'
local a = 2
for c = 1, #KEYS - 1 do
  local member, n = ARGV[a], tonumber(ARGV[a + 1])
  if failed then
    for i = a + 2, a + 1 + n do redis.call('ZADD', KEYS[c], 'XX', 0, ARGV[i]) end
  else
    redis.call('ZREM', KEYS[c], unpack(ARGV, a + 2, a + 1 + n))
  end
  local lowest = redis.call('ZRANGE', KEYS[c], 0, 0, 'WITHSCORES')
  if #lowest == 0 then
    redis.call('ZREM', index, member)
  else
    redis.call('ZADD', index, lowest[2], member)
  end
  a = a + 2 + n
end
return 1
"""

# KEYS: the index. ARGV: unstored after (ms), how many. The calls a repair is due for, on Redis's
# clock (the nodes' clocks may differ); those with a failed seq (score 0) first.
_OVERDUE: Final = """
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', cutoff), 'LIMIT', 0, ARGV[2])
"""

CallKey = Callable[[str, str, str], str]  # (account, call_id, suffix) → the call's key
EventOf = Callable[[str, dict[bytes, bytes]], Event]  # (account, a log entry's fields) → the event


def _unescape(account: str) -> str:
    return account.replace("%3A", ":").replace("%25", "%")


class UnstoredLedger:
    """The unstored sets, their index and the repair locks of one broker (see the module doc)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        call_key: CallKey,
        event_of: EventOf,
        command: Runner,
        *,
        unstored_after_s: float = UNSTORED_AFTER_S,
    ) -> None:
        self._redis = redis
        self.index_key = f"{prefix}unstored"
        self._prefix = prefix
        self._call_key = call_key
        self._event_of = event_of
        self._command = command
        self.unstored_after_ms = int(unstored_after_s * 1000)
        self._settle = redis.register_script(_SETTLE)
        self._overdue = redis.register_script(_OVERDUE)

    def member(self, account: str, call_id: str) -> str:
        """The call's member in the index: the name of its state hash (the publish script has it)."""
        return self._call_key(account, call_id, "state")

    def _call_of(self, member: str) -> tuple[str, str]:
        """(account, call_id) of a member: the escaped account has no ':', the call id may."""
        account, _, call_id = member[len(self._prefix) : -len(":state")].partition(":")
        return _unescape(account), call_id

    async def stored(self, events: Iterable[Event]) -> None:
        await self._settle_seqs("stored", _by_call(events))

    async def failed(self, events: Iterable[Event]) -> None:
        await self._settle_seqs("failed", _by_call(events))

    async def repaired(self, account: str, call_id: str, work: Unstored) -> None:
        await self._settle_seqs("stored", {(account, call_id): work.seqs})

    async def _settle_seqs(self, how: str, seqs: dict[tuple[str, str], list[int]]) -> None:
        """One `_SETTLE` script for the calls of `seqs`."""
        seqs = {call: held for call, held in seqs.items() if held}
        if not seqs:
            return
        keys = [self._call_key(account, call_id, "unstored") for account, call_id in seqs]
        keys.append(self.index_key)
        args: list[str | int] = [how]
        for (account, call_id), held in seqs.items():
            args += [self.member(account, call_id), len(held), *held]
        await self._command(self._settle(keys=keys, args=args))

    @contextlib.asynccontextmanager
    async def repairing(self, account: str, call_id: str) -> AsyncIterator[Unstored]:
        lock = self._redis.lock(
            self._call_key(account, call_id, "repairing"), timeout=REPAIR_LOCK_S, blocking=False
        )
        if not await self._command(lock.acquire()):
            raise RepairBusyError(f"call {call_id}: another node is storing its unstored events")
        try:
            yield await self._unstored(account, call_id)
        finally:
            with contextlib.suppress(LockError, RedisError, OSError):  # expired, or Redis gone: it frees itself
                await lock.release()

    async def _unstored(self, account: str, call_id: str) -> Unstored:
        """The seqs a repair takes (failed, or unconfirmed for too long), with the log's events."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.time()
        pipe.zrange(self._call_key(account, call_id, "unstored"), 0, -1, withscores=True)
        (now_s, now_us), entries = await self._command(pipe.execute())
        cutoff = now_s * 1000 + now_us // 1000 - self.unstored_after_ms  # on Redis's clock
        seqs = sorted(int(seq) for seq, score in entries if score < cutoff)
        if not seqs:
            return Unstored()
        stream = self._call_key(account, call_id, "log")
        found = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self._command(self._redis.xrange(stream, min=f"{seqs[0]}-0", max=f"{seqs[-1]}-0")),
        )
        wanted = set(seqs)
        events = [self._event_of(account, fields) for _, fields in found]
        return Unstored(seqs, [e for e in events if e.seq in wanted])

    async def overdue(self) -> list[tuple[str, str]]:
        args = [self.unstored_after_ms, _OVERDUE_BATCH]
        members = await self._command(self._overdue(keys=[self.index_key], args=args))
        return [self._call_of(m.decode() if isinstance(m, bytes) else m) for m in members]


def _by_call(events: Iterable[Event]) -> dict[tuple[str, str], list[int]]:
    """The seqs of `events` per (account, call); partials are never unstored."""
    seqs: dict[tuple[str, str], list[int]] = {}
    for event in events:
        if not event.is_partial:
            seqs.setdefault((event.account, event.call_id), []).append(event.seq)
    return seqs
