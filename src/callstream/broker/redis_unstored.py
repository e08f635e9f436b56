"""Events Redis sequenced that the store has not confirmed, kept where every node sees them.

The publish script (`redis._PUBLISH`) puts each stored type's seq in the call's unstored set
(`…:unstored`, scored by its ts) as it sequences it, and the call in the unstored index (one
sorted set per prefix, scored by when the call's oldest unconfirmed seq was sequenced). Once a
commit holds them, the node takes them out again (`stored`, one script per commit). What stays
is what a repair must store from the call's log (`server/repair.py`):

- a commit that failed: its node marks the call (`mark`: the state's `repair` field, the
  highest failed seq, and score 0 in the index), so every node refuses to sequence more of it
  until a repair ran;
- seqs no node confirmed within `UNSTORED_AFTER_S`: their node died (or its confirmation was
  lost); the publish script refuses the call then too, and every node's sweep finds it in the
  index.

A repair holds the call's lock (`repairing`), so two nodes never store the same events twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import LockError, RedisError

from callstream.broker.base import UNSTORED_AFTER_S, RepairBusyError, Unstored
from callstream.broker.redis_sockets import Runner
from callstream.events import Event

__all__ = ["UnstoredLedger"]

#: How long a repair may hold a call's lock; a node that died holding it frees it then.
REPAIR_LOCK_S: Final = 60.0
_OVERDUE_BATCH: Final = 100  # calls a sweep takes from the index at a time


# Keeps a call's entry in the index right after its unstored set changed: gone once the set is
# empty, else scored by its oldest member, unless the call is marked (score 0 until repaired).
_REINDEX: Final = """
local function reindex(index, unstored, member)
  local oldest = redis.call('ZRANGE', unstored, 0, 0, 'WITHSCORES')
  if #oldest == 0 then
    redis.call('ZREM', index, member)
  elseif tonumber(redis.call('ZSCORE', index, member) or '1') > 0 then
    redis.call('ZADD', index, oldest[2], member)
  end
end
"""

# KEYS: each call's unstored set, then the index. ARGV: per call, its index member, n, n seqs.
_STORED: Final = (
    _REINDEX
    + """
local index = KEYS[#KEYS]
local a = 1
for c = 1, #KEYS - 1 do
  local member, n = ARGV[a], tonumber(ARGV[a + 1])
  redis.call('ZREM', KEYS[c], unpack(ARGV, a + 2, a + 1 + n))
  reindex(index, KEYS[c], member)
  a = a + 2 + n
end
return 1
"""
)

# KEYS: each call's state hash, then the index. ARGV: per call, its index member, its highest
# failed seq. A call whose state is gone (expired, or Redis restarted) has no log to repair from.
_MARK: Final = """
local index = KEYS[#KEYS]
for c = 1, #KEYS - 1 do
  if redis.call('EXISTS', KEYS[c]) == 1 then
    local mark = tonumber(redis.call('HGET', KEYS[c], 'repair') or '0')
    if tonumber(ARGV[2 * c]) > mark then redis.call('HSET', KEYS[c], 'repair', ARGV[2 * c]) end
    redis.call('ZADD', index, 0, ARGV[2 * c - 1])
  end
end
return 1
"""

# KEYS: state hash, unstored set, index. ARGV: index member, the mark repaired, its seqs.
_REPAIRED: Final = (
    _REINDEX
    + """
if #ARGV > 2 then redis.call('ZREM', KEYS[2], unpack(ARGV, 3)) end
local mark = tonumber(redis.call('HGET', KEYS[1], 'repair') or '0')
if mark > 0 and mark <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], 'repair')
  redis.call('ZREM', KEYS[3], ARGV[1])
end
reindex(KEYS[3], KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: the index. ARGV: unstored after (ms), how many. Calls whose oldest unconfirmed seq is
# older than that on Redis's clock (the nodes' clocks may differ), marked ones first.
_OVERDUE: Final = """
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', cutoff), 'LIMIT', 0, ARGV[2])
"""

CallKey = Callable[[str, str, str], str]  # (account, call_id, suffix) → the call's key
EventOf = Callable[[str, str], Event]  # (account, frame) → the event


def _unescape(account: str) -> str:
    return account.replace("%3A", ":").replace("%25", "%")


class UnstoredLedger:
    """The unstored sets, their index and the repair locks of one broker (see the module doc)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        call_key: CallKey,
        escape: Callable[[str], str],
        event_of: EventOf,
        command: Runner,
        *,
        unstored_after_s: float = UNSTORED_AFTER_S,
    ) -> None:
        self._redis = redis
        self.index_key = f"{prefix}unstored"
        self._call_key = call_key
        self._escape = escape
        self._event_of = event_of
        self._command = command
        self.unstored_after_ms = int(unstored_after_s * 1000)
        self._stored = redis.register_script(_STORED)
        self._mark = redis.register_script(_MARK)
        self._repaired = redis.register_script(_REPAIRED)
        self._overdue = redis.register_script(_OVERDUE)

    def member(self, account: str, call_id: str) -> str:
        """The call's member in the index: the escaped account has no ':', the call id may."""
        return f"{self._escape(account)}:{call_id}"

    @staticmethod
    def _call_of(member: str) -> tuple[str, str]:
        account, _, call_id = member.partition(":")
        return _unescape(account), call_id

    async def stored(self, events: Sequence[Event]) -> None:
        await self._per_call(self._stored, "unstored", events, lambda seqs: [len(seqs), *seqs])

    async def mark(self, events: Sequence[Event]) -> None:
        await self._per_call(self._mark, "state", events, lambda seqs: [max(seqs)])

    async def _per_call(
        self,
        script: AsyncScript,
        suffix: str,
        events: Sequence[Event],
        call_args: Callable[[list[int]], list[int]],
    ) -> None:
        """Run `script` once for the calls of `events` (partials left out): KEYS each call's
        `suffix` key, then the index; ARGV per call its index member, then `call_args` of its seqs."""
        seqs: dict[tuple[str, str], list[int]] = {}
        for event in events:
            if not event.is_partial:
                seqs.setdefault((event.account, event.call_id), []).append(event.seq)
        if not seqs:
            return
        keys = [self._call_key(account, call_id, suffix) for account, call_id in seqs]
        keys.append(self.index_key)
        args: list[str | int] = []
        for (account, call_id), held in seqs.items():
            args += [self.member(account, call_id), *call_args(held)]
        await self._command(script(keys=keys, args=args))

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
        """The seqs a repair takes: those up to the mark, and those unconfirmed for too long
        (younger ones belong to a commit under way on some node), with the log's events."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.time()
        pipe.hget(self._call_key(account, call_id, "state"), "repair")
        pipe.zrange(self._call_key(account, call_id, "unstored"), 0, -1, withscores=True)
        (now_s, now_us), mark_raw, entries = await self._command(pipe.execute())
        mark = int(mark_raw or 0)
        cutoff = now_s * 1000 + now_us // 1000 - self.unstored_after_ms  # on Redis's clock
        seqs = sorted(int(seq) for seq, ts in entries if int(seq) <= mark or ts < cutoff)
        if not seqs:
            return Unstored([], [], mark)
        stream = self._call_key(account, call_id, "log")
        found = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self._command(self._redis.xrange(stream, min=f"{seqs[0]}-0", max=f"{seqs[-1]}-0")),
        )
        wanted = set(seqs)
        events = [self._event_of(account, fields[b"f"].decode()) for _, fields in found]
        return Unstored(seqs, [e for e in events if e.seq in wanted], mark)

    async def repaired(self, account: str, call_id: str, work: Unstored) -> None:
        keys = [
            self._call_key(account, call_id, "state"),
            self._call_key(account, call_id, "unstored"),
            self.index_key,
        ]
        args: list[str | int] = [self.member(account, call_id), work.mark, *work.seqs]
        await self._command(self._repaired(keys=keys, args=args))

    async def overdue(self) -> list[tuple[str, str]]:
        args = [self.unstored_after_ms, _OVERDUE_BATCH]
        members = await self._command(self._overdue(keys=[self.index_key], args=args))
        return [self._call_of(m.decode() if isinstance(m, bytes) else m) for m in members]
