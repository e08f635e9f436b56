"""Erasing calls from Redis: every key of each call, its place in the shared sets, and word to
every node, in one script.

A call's keys are its state hash, replay log, unstored set, control hash and repair lock; the
sets that name it are its account's live set, the unstored index and (while a control request
waits) the control deadlines. The script also publishes the erasure on the nodes' shared
`erased` channel, in the same step: Redis hands a subscriber its messages in the order it ran
the scripts that published them, so every node hears of the erasure before it can hear the
first event of a new call that takes the id again, and drops what it kept of the old one first
(`RedisBroker` forgets the call's last seq, which would otherwise make it skip that new call's
first events as duplicates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import orjson
import redis.asyncio as aioredis

from callstream.broker.redis_sockets import Runner

__all__ = ["CALL_SUFFIXES", "Eraser", "erased_calls"]

#: The suffixes of a call's keys (`RedisBroker._call_key`), in the order the script takes them.
CALL_SUFFIXES: Final = ("state", "log", "unstored", "ctl", "repairing", "ids")

# KEYS: per call, its keys in the order of CALL_SUFFIXES (in sixes); then the account's live set,
#       the unstored index and the control deadlines' set.
# ARGV: the erased channel, the message; then per call: its member in the live set (the call id
#       as JSON) and the tail its deadline members end with (`redis._PUBLISH`).
# A call's member in the unstored index is the name of its state hash. Its deadline members are
# looked for only while its control hash exists (requests wait): an ended call has none.
_ERASE: Final = """
local n = (#KEYS - 3) / 6
local live, index, deadlines = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local due = nil
for c = 1, n do
  if redis.call('EXISTS', KEYS[6 * c - 2]) == 1 then
    due = due or redis.call('ZRANGE', deadlines, 0, -1)
    local tail = ARGV[2 + 2 * c]
    for _, member in ipairs(due) do
      if string.sub(member, -#tail) == tail then redis.call('ZREM', deadlines, member) end
    end
  end
  redis.call('ZREM', live, ARGV[1 + 2 * c])
  redis.call('ZREM', index, KEYS[6 * c - 5])
  redis.call('DEL', KEYS[6 * c - 5], KEYS[6 * c - 4], KEYS[6 * c - 3], KEYS[6 * c - 2], KEYS[6 * c - 1], KEYS[6 * c])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"""

CallKey = Callable[[str, str, str], str]  # (account, call_id, suffix) → the call's key


def erased_calls(message: str) -> tuple[str, list[str]]:
    """(account, call ids) of a message on the erased channel; ValueError if it is not one."""
    body = orjson.loads(message)
    if (
        not isinstance(body, list)
        or len(body) != 2
        or not isinstance(body[0], str)
        or not isinstance(body[1], list)
        or not all(isinstance(c, str) for c in body[1])
    ):
        raise ValueError("not an erasure")
    return str(body[0]), [str(call_id) for call_id in body[1]]


class Eraser:
    """Runs the erase script for one broker (see the module doc)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        call_key: CallKey,
        shared_keys: Callable[[str], list[str]],
        command: Runner,
    ) -> None:
        """`shared_keys(account)`: the account's live set, the unstored index, the deadlines' set."""
        self.channel = channel
        self._call_key = call_key
        self._shared_keys = shared_keys
        self._command = command
        self._script = redis.register_script(_ERASE)
        self._redis = redis

    async def unsettled(self, account: str, call_ids: Sequence[str]) -> set[str]:
        """The calls whose unstored set is not empty (a commit has not confirmed all their events)."""
        pipe = self._redis.pipeline(transaction=False)
        for call_id in call_ids:
            pipe.zcard(self._call_key(account, call_id, "unstored"))
        counts = await self._command(pipe.execute())
        return {call_id for call_id, n in zip(call_ids, counts, strict=True) if n}

    async def erase(self, account: str, call_ids: Sequence[str]) -> None:
        keys = [self._call_key(account, cid, suffix) for cid in call_ids for suffix in CALL_SUFFIXES]
        keys += self._shared_keys(account)
        args: list[str] = [self.channel, orjson.dumps([account, list(call_ids)]).decode()]
        for cid in call_ids:
            tail = orjson.dumps([account, cid, self._call_key(account, cid, "ctl")]).decode()[1:]
            args += [orjson.dumps(cid).decode(), tail]
        await self._command(self._script(keys=keys, args=args))
