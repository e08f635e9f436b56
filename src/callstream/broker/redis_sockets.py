"""Open sockets per account, counted across every node that shares one Redis.

Each node counts its own sockets in one field of the account's hash (the field is the node's
id) and beats every second in the nodes' sorted set (score: the ms of its last beat). A
handshake sums the fields of the nodes that beat recently, drops the fields of those that
stopped (a crashed node's sockets died with it) and takes a slot, in one script: two nodes can
never both take the last slot, and a dead node holds no quota for longer than `dead_after_s`.
A node that Redis took for dead (a long outage, a restart that lost the keys) writes its counts
back on its next beat. Only handshakes and closes touch Redis, never a message.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

import redis.asyncio as aioredis

__all__ = ["SocketCounter"]

T = TypeVar("T")


class Runner(Protocol):
    """Runs one Redis call, mapping driver errors to the project's own."""

    def __call__(self, awaitable: Awaitable[T], /) -> Awaitable[T]: ...


# KEYS: the account's hash, the nodes' set. ARGV: limit, node id, dead after (ms), hash ttl (s).
_ACQUIRE: Final = """
local limit, node, dead_after, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - dead_after
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local beat = redis.call('ZSCORE', KEYS[2], fields[i])
  if fields[i] ~= node and (not beat or tonumber(beat) < cutoff) then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    total = total + tonumber(fields[i + 1])
  end
end
if total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], node, 1)
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""

# KEYS: the account's hash. ARGV: node id.
_RELEASE: Final = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: the nodes' set. ARGV: node id, dead after (ms). Returns 1 when the node was taken for dead.
_BEAT: Final = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], string.format('%d', ms), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', ms - 86400000))
if not last or tonumber(last) < ms - tonumber(ARGV[2]) then return 1 end
return 0
"""

# An account hash no handshake touched for this long is dropped; its counts then restart at 0.
_HASH_TTL_S: Final = 7 * 86_400


class SocketCounter:
    """This node's share of each account's open sockets, kept in Redis for every node to sum.

    `run` wraps each Redis call (the broker maps driver errors to BrokerUnavailableError there).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        account_key: Callable[[str], str],
        run: Runner,
        dead_after_s: float,
    ) -> None:
        self.node = secrets.token_hex(8)
        self._client = client
        self.nodes_key = f"{prefix}nodes"  # the nodes' heartbeats (control holders are read against it too)
        self._account_key = account_key
        self._run = run
        self.dead_after_ms = int(dead_after_s * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._beat = client.register_script(_BEAT)
        self.open: Counter[str] = Counter()  # account → this node's open sockets
        self._unsynced: set[str] = set()  # accounts whose release did not reach Redis

    async def acquire(self, account: str, limit: int) -> bool:
        """Take a slot of the account's `limit`; False when every slot is taken."""
        keys = [self._account_key(account), self.nodes_key]
        args: list[str | int] = [limit, self.node, self.dead_after_ms, _HASH_TTL_S]
        if not await self._run(self._acquire(keys=keys, args=args)):
            return False
        self.open[account] += 1
        return True

    async def release(self, account: str) -> None:
        self.open[account] -= 1
        if self.open[account] <= 0:
            del self.open[account]
        try:
            await self._run(self._release(keys=[self._account_key(account)], args=[self.node]))
        except Exception:
            self._unsynced.add(account)  # the next beat writes the right count
            raise

    async def beat(self) -> None:
        """Say this node is alive; rewrite its counts if Redis stopped counting them or missed
        a release."""
        dead = await self._run(self._beat(keys=[self.nodes_key], args=[self.node, self.dead_after_ms]))
        accounts = set(self.open) | self._unsynced if dead else self._unsynced
        if not accounts:
            return
        self._unsynced = set()
        pipe = self._client.pipeline(transaction=False)
        for account in accounts:
            key = self._account_key(account)
            if self.open[account] > 0:
                pipe.hset(key, self.node, str(self.open[account]))
                pipe.expire(key, _HASH_TTL_S)
            else:
                pipe.hdel(key, self.node)
        try:
            await self._run(pipe.execute())
        except Exception:
            self._unsynced |= accounts
            raise

    async def leave(self) -> None:
        """A node shutting down: its fields stop counting at once."""
        await self._run(self._client.zrem(self.nodes_key, self.node))
