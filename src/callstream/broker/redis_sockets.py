"""Open sockets per account, counted across every node that shares one Redis.

Each node counts its own sockets in one field of the account's hash (the field is the node's
id) and beats every second in the nodes' sorted set (score: the ms of its last beat). A
handshake sums the fields of the nodes that beat recently, drops the fields of those that
stopped (a crashed node's sockets died with it) and takes a slot, in one script: two nodes can
never both take the last slot, and a dead node holds no quota for longer than `dead_after_s`.
Only handshakes and closes touch Redis, never a message.

A reply can be lost after Redis ran the command (the connection broke, or the handshake was
cancelled while it waited). So every count and release carries an id of its own, recorded by
the script that applied it: the next beat settles each one whose outcome the node did not
learn (a count is undone if it was applied, a release applied if it was not), and a copy that
reaches Redis after it was settled does nothing (each record is a key of a few bytes that
expires after a minute or so). A node that Redis took for dead (a long outage, a restart that
lost the keys) writes its counts back on its next beat, holding its own counts and releases
meanwhile so that none lands between its reading and its writing.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

__all__ = ["SocketCounter"]

T = TypeVar("T")


class Runner(Protocol):
    """Runs one Redis call, mapping driver errors to the project's own."""

    def __call__(self, awaitable: Awaitable[T], /) -> Awaitable[T]: ...


# KEYS: the account's hash, the nodes' set, the count's record. ARGV: limit, node id, dead after
# (ms), hash ttl (s), record ttl (ms).
_ACQUIRE: Final = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
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
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
return 1
"""

# A count the node gives back: applied once per record, however often it is sent.
# KEYS: the account's hash, the release's record. ARGV: node id, record ttl (ms).
_RELEASE: Final = """
if not redis.call('SET', KEYS[2], 'r', 'NX', 'PX', ARGV[2]) then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

# A count whose reply the node never got: undone if it was applied, void if it arrives later.
# KEYS: the account's hash, the count's record. ARGV: node id, record ttl (ms).
_CANCEL: Final = """
local applied = redis.call('GET', KEYS[2]) == '1'
redis.call('SET', KEYS[2], 'x', 'PX', ARGV[2])
if applied and redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
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
# How long a count's or a release's record outlives it: past the beat that settles a lost reply
# (a longer outage makes the node dead to the others, and it then writes its counts back anyway).
_RECORD_TTL_MIN_MS: Final = 60_000
# Lost replies held for settling at most; past it (a long outage with handshakes going on) the
# node forgets the oldest and writes its counts back instead.
_MAX_UNSETTLED: Final = 10_000


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
        self._records = f"{prefix}sockop:{self.node}:"
        self._account_key = account_key
        self._run = run
        self.dead_after_ms = int(dead_after_s * 1000)
        self._record_ttl_ms = max(_RECORD_TTL_MIN_MS, 12 * self.dead_after_ms)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._cancel = client.register_script(_CANCEL)
        self._beat = client.register_script(_BEAT)
        self.open: Counter[str] = Counter()  # account → this node's open sockets
        self._ops = 0  # the last record id handed out
        self._unsettled: list[tuple[AsyncScript, str, str]] = []  # (script, account, record) to send again
        self._releasing: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._drained = asyncio.Event()  # set while no count or release awaits Redis
        self._drained.set()
        self._running = asyncio.Event()  # cleared while the node writes its counts back
        self._running.set()
        self._rewrite_due = False

    async def acquire(self, account: str, limit: int) -> bool:
        """Take a slot of the account's `limit`; False when every slot is taken."""
        await self._until_running()
        record = self._record()
        keys = [self._account_key(account), self.nodes_key, record]
        args: list[str | int] = [limit, self.node, self.dead_after_ms, _HASH_TTL_S, self._record_ttl_ms]
        self._begin()
        try:
            taken = await self._run(self._acquire(keys=keys, args=args))
        except BaseException:  # cancelled too: it may have been applied all the same
            self._unsettle(self._cancel, account, record)
            raise
        finally:
            self._end()
        if not taken:
            return False
        self.open[account] += 1
        return True

    async def release(self, account: str) -> None:
        """Give a slot back; it reaches Redis even if the caller is cancelled meanwhile."""
        task = asyncio.create_task(self._give_back(account), name="redis-socket-release")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    async def _give_back(self, account: str) -> None:
        await self._until_running()
        self.open[account] -= 1
        if self.open[account] <= 0:
            del self.open[account]
        record = self._record()
        self._begin()
        try:
            await self._run(self._release(keys=[self._account_key(account), record], args=self._settle_args()))
        except BaseException:
            self._unsettle(self._release, account, record)
            raise
        finally:
            self._end()

    async def beat(self) -> None:
        """Say this node is alive; settle what lost its reply; write the counts back if Redis
        took the node for dead."""
        dead = await self._run(self._beat(keys=[self.nodes_key], args=[self.node, self.dead_after_ms]))
        self._rewrite_due = self._rewrite_due or bool(dead)
        if not self._rewrite_due:
            if self._unsettled:
                await self._send_settled(rewrite=False)
            return
        self._running.clear()  # no count or release of this node may land between reading and writing
        try:
            while self._in_flight:
                await self._drained.wait()
            await self._send_settled(rewrite=True)
            self._rewrite_due = False
        finally:
            self._running.set()

    async def _send_settled(self, *, rewrite: bool) -> None:
        """One pipeline: every unsettled count and release, then (`rewrite`) this node's counts."""
        unsettled, self._unsettled = self._unsettled, []
        pipe = self._client.pipeline(transaction=False)
        for script, account, record in unsettled:
            await script(keys=[self._account_key(account), record], args=self._settle_args(), client=pipe)
        if rewrite:
            for account, count in self.open.items():
                key = self._account_key(account)
                pipe.hset(key, self.node, str(count))
                pipe.expire(key, _HASH_TTL_S)
        try:
            await self._run(pipe.execute())
        except BaseException:
            self._unsettled = unsettled + self._unsettled
            raise

    async def leave(self) -> None:
        """A node shutting down: its fields stop counting at once."""
        await self._run(self._client.zrem(self.nodes_key, self.node))

    async def _until_running(self) -> None:
        while not self._running.is_set():
            await self._running.wait()

    def _unsettle(self, script: AsyncScript, account: str, record: str) -> None:
        self._unsettled.append((script, account, record))
        if len(self._unsettled) > _MAX_UNSETTLED:
            del self._unsettled[: len(self._unsettled) - _MAX_UNSETTLED]
            self._rewrite_due = True

    def _record(self) -> str:
        self._ops += 1
        return f"{self._records}{self._ops}"

    def _settle_args(self) -> list[str | int]:
        return [self.node, self._record_ttl_ms]

    def _begin(self) -> None:
        self._in_flight += 1
        self._drained.clear()

    def _end(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._drained.set()
