"""The Redis broker: several nodes share one sequencer, one replay log and one fan-out.

Why this shape:

- **One Lua script per batch.** Checking that no call has ended, incrementing `seq`, appending
  to the call's stream and publishing the frame happen in one atomic script, so producers on
  different nodes can never interleave a call's `seq` nor publish it out of order: a node's
  pub/sub connection receives a call's frames in the order Redis executed the scripts.
- **Seeding from the store.** A call Redis does not know (new, expired, or lost in a Redis
  restart) is loaded from the store and seeded before its first `seq` is assigned, which keeps
  `seq` gap-free across a restart that lost every key.
- **Fan-out by subscription.** A node SUBSCRIBEs only the channels of the calls (and, for `*`,
  the accounts) its clients watch, on one connection that this module owns end to end:
  redis-py's PubSub reconnects and resubscribes silently, which would hide the messages lost
  while it was away (encode/broadcaster#144). Here a lost connection makes the node unhealthy,
  and the reconnect calls `on_reconnect` so the server can make its subscribers resume with
  `since`.
- **The frame is encoded once.** The script builds the wire frame from JSON fragments the
  publishing node encoded; every node forwards those bytes unchanged.
- **Delivered before stored.** Fan-out does not wait for the commit, so the script also keeps
  each seq a commit has not confirmed yet (`redis_unstored`): one whose commit failed, or whose
  node died, is stored later from the log (`server/repair.py`), and the call takes no new event
  until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeVar

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from callstream.broker import base
from callstream.broker.redis_audio import AudioChannels
from callstream.broker.redis_erase import Eraser, erased_calls
from callstream.broker.redis_sockets import SocketCounter
from callstream.broker.redis_unstored import UnstoredLedger
from callstream.control import REQUESTED, RESULT, Holder
from callstream.events import PARTIAL, CallState, Event, NewEvent, repeat_of
from callstream.metadata import MAX_BYTES, MAX_KEYS
from callstream.turns import Marks, role

__all__ = ["RedisBroker"]

log = logging.getLogger("callstream.broker.redis")

T = TypeVar("T")

# KEYS: state hash, log stream, unstored set, control hash and ids hash of each call of the batch,
#       in fives; then the account's live set, the unstored index (`redis_unstored`) and the control
#       deadlines' set.
# ARGV: ncalls, maxlen, live ttl, ended ttl, account channel, events quota, live calls quota,
#       unstored after (ms), holder ('' for none), control timeout (ms), metadata's most keys and
#       bytes, per call: its channel, its call_id as JSON (also its member in the live set), the
#       tail of its deadline members (`"account","call_id","control hash"]`),
#       per event: call index (1-based), type, type as JSON, data as JSON, request_id ('' if none),
#       its turn role (`turns.role`), its metadata patch ('' if none, else a JSON array of
#       [key as JSON, value as JSON or '' to remove]), its producer's id ('' if none).
# A call's member in the unstored index is the name of its state hash.
# The live set scores each live call with its last event's ts: a member older than the live TTL
# (its state key expired with it) no longer counts, so calls that never end decay.
# Every stored type's seq goes into the call's unstored set (score: its ts) until a node says the
# store holds it (`redis_unstored`); a call with a seq that failed (score 0) or that no node
# confirmed within `unstored after` is refused with 'repair' (nothing applied) until a repair
# stored what the log holds of it.
# The control hash maps each request waiting for its result to its action: a `control.requested`
# adds it (and its deadline), a `control.result` takes it (refused when it is not there), and a
# `call.ended` is refused while one waits ('pending', with the waiting ones) for the node to
# settle them in the same batch.
# The call's turn tracker (`turns.TurnTracker`, the same steps) lives in its state hash: `spk`,
# `fin`, `usr` (ts, absent when None) and `ovr` ('1' when true). The reply holds, per event, its
# seq, what it measured: '' or 'latency,interrupted,agent_ms,user_ms' (latency '' if none), and
# the call's metadata after it when it patched it ('' if not).
# The call's metadata (`metadata.py`) lives in its state hash too: `meta` (the merged object as
# JSON) and one field `m:<key as JSON>` per key (its value as JSON). The script merges patches
# on these fragments (it never decodes a value), refuses a batch whose merge would pass a limit
# ('metadata', the event, why) before applying anything, and publishes each frame followed by
# '\n' and the call's metadata when it has some: every node judges `where` subscriptions by it.
# The ids hash maps each producer's id of the call's events to its seq (`broker.ids`, the same
# rule): an event whose id the hash (or an earlier event of the batch) holds is a repeat, left
# out of every check, merge and step, and answered with that seq and 'r' in place of what it
# measured. Only calls that took an event have their keys' TTLs, holder and place in the live set
# renewed.
_PUBLISH: Final = """
local ncalls = tonumber(ARGV[1])
local maxlen, live_ttl, ended_ttl, account_channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_events, max_live = tonumber(ARGV[6]), tonumber(ARGV[7])
local unstored_after = tonumber(ARGV[8])
local holder, control_ms = ARGV[9], tonumber(ARGV[10])
local max_keys, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12])
local live_set, index, deadlines = KEYS[5 * ncalls + 1], KEYS[5 * ncalls + 2], KEYS[5 * ncalls + 3]
local ev = 13 + 3 * ncalls
local W = 8
local nevents = (#ARGV - ev + 1) / W
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ts = string.format('%d', now_ms)
local ended, last, count, first, answered = {}, {}, {}, {}, {}
local spk, fin, usr, ovr, was = {}, {}, {}, {}, {}
local meta, mkeys, mvals, mgone, emeta = {}, {}, {}, {}, {}
for c = 1, ncalls do
  local state = redis.call('HMGET', KEYS[5 * c - 4], 'status', 'last_seq', 'spk', 'fin', 'usr', 'ovr', 'meta')
  if not state[1] then return {'unknown', c} end
  local lowest = redis.call('ZRANGE', KEYS[5 * c - 2], 0, 0, 'WITHSCORES')
  if #lowest > 0 and tonumber(lowest[2]) < now_ms - unstored_after then return {'repair', c} end
  ended[c] = state[1] == 'ended'
  last[c] = tonumber(state[2] or '0')
  count[c] = 0
  spk[c], fin[c], usr[c], ovr[c] = tonumber(state[3]), tonumber(state[4]), tonumber(state[5]), state[6] == '1'
  was[c] = {state[3] or nil, state[4] or nil, state[5] or nil, state[6] or nil}
  meta[c] = state[7] or ''
end
local repeats, firsts = {}, {}
for j = 0, nevents - 1 do
  local c = tonumber(ARGV[ev + W * j])
  local kind, rid, eid = ARGV[ev + W * j + 1], ARGV[ev + W * j + 4], ARGV[ev + W * j + 7]
  if eid ~= '' then
    local twin = firsts[c .. '|' .. eid]
    if twin then
      repeats[j] = -1 - twin
    else
      local known = redis.call('HGET', KEYS[5 * c], eid)
      if known then repeats[j] = tonumber(known) else firsts[c .. '|' .. eid] = j end
    end
  end
  if not repeats[j] then
    if ended[c] then return {'ended', j} end
    count[c] = count[c] + 1
    if max_events > 0 and last[c] + count[c] > max_events and kind ~= 'call.ended' and kind ~= 'control.result' then
      return {'events', j}
    end
    if kind == 'control.result' then
      if answered[c .. '|' .. rid] or redis.call('HEXISTS', KEYS[5 * c - 1], rid) == 0 then return {'claimed', j} end
      answered[c .. '|' .. rid] = true
    elseif kind == 'call.ended' then
      local waiting = redis.call('HGETALL', KEYS[5 * c - 1])
      local out = {'pending', j}
      for i = 1, #waiting, 2 do
        if not answered[c .. '|' .. waiting[i]] then
          out[#out + 1] = waiting[i]
          out[#out + 1] = waiting[i + 1]
        end
      end
      if #out > 2 then return out end
    end
    if not first[c] then first[c] = j end
    if kind == 'call.ended' then ended[c] = true end
  end
end
-- The patches (of events not repeated), merged in order on the calls' fragments: every limit
-- checked before any write.
for j = 0, nevents - 1 do
  local c = tonumber(ARGV[ev + W * j])
  local patch = ARGV[ev + W * j + 6]
  if patch ~= '' and not repeats[j] then
    if not mkeys[c] then
      mkeys[c], mvals[c], mgone[c] = {}, {}, {}
      local fields = redis.call('HGETALL', KEYS[5 * c - 4])
      for i = 1, #fields, 2 do
        if string.sub(fields[i], 1, 2) == 'm:' then
          local k = string.sub(fields[i], 3)
          mkeys[c][#mkeys[c] + 1] = k
          mvals[c][k] = fields[i + 1]
        end
      end
    end
    for _, pair in ipairs(cjson.decode(patch)) do
      local k, v = pair[1], pair[2]
      if v == '' then
        if mvals[c][k] then mgone[c][k] = true end
        mvals[c][k] = nil
      else
        if not mvals[c][k] then mkeys[c][#mkeys[c] + 1] = k end
        mvals[c][k] = v
        mgone[c][k] = nil
      end
    end
    local kept, parts = {}, {}
    for _, k in ipairs(mkeys[c]) do
      if mvals[c][k] then
        kept[#kept + 1] = k
        parts[#parts + 1] = k .. ':' .. mvals[c][k]
      end
    end
    mkeys[c] = kept
    meta[c] = '{' .. table.concat(parts, ',') .. '}'
    if #kept > max_keys then
      return {'metadata', j, "the call's metadata would hold " .. #kept .. ' keys; at most ' .. max_keys}
    end
    if #meta[c] > max_bytes then
      return {'metadata', j, "the call's metadata would take " .. #meta[c] .. ' bytes as JSON; at most ' .. max_bytes}
    end
  end
  emeta[j] = meta[c]
end
local function int(n) return string.format('%d', n) end
-- One step of the call's turn tracker: what the event measured, and what its data gains.
local function step(c, part, at)
  if part == 'p' then
    if not usr[c] then usr[c] = at end
    if spk[c] then ovr[c] = true end
  elseif part == 'f' then
    local since = usr[c] or at
    usr[c], fin[c] = nil, at
    if spk[c] then ovr[c] = true end
    if at > since then return ',0,0,' .. int(at - since), '' end
  elseif part == 's' then
    if not spk[c] then
      spk[c], ovr[c] = at, false
      if fin[c] then
        local latency = int(math.max(0, at - fin[c]))
        fin[c] = nil
        return latency .. ',0,0,0', ',"latency_ms":' .. latency
      end
    end
  elseif part == 'l' or part == 'e' then
    local agent, user, interrupted = 0, 0, false
    if spk[c] then
      agent = math.max(0, at - spk[c])
      interrupted = ovr[c] and part == 'l'
      spk[c], ovr[c] = nil, false
    end
    if part == 'e' and usr[c] then
      user = math.max(0, at - usr[c])
      usr[c] = nil
    end
    if interrupted then return ',1,' .. int(agent) .. ',' .. int(user), ',"interrupted":true' end
    if agent > 0 or user > 0 then return ',0,' .. int(agent) .. ',' .. int(user), '' end
  end
  return '', ''
end
if max_live > 0 then
  local cutoff = now_ms - tonumber(live_ttl) * 1000
  local n = -1
  for c = 1, ncalls do
    local score = redis.call('ZSCORE', live_set, ARGV[11 + 3 * c])
    if first[c] and not ended[c] and (not score or tonumber(score) < cutoff) then
      if n < 0 then
        redis.call('ZREMRANGEBYSCORE', live_set, '-inf', '(' .. string.format('%d', cutoff))
        n = redis.call('ZCARD', live_set)
      end
      n = n + 1
      if n > max_live then return {'live', first[c]} end
    end
  end
end
local out = {'ok', ts}
local unstored, seqs = {}, {}
for j = 0, nevents - 1 do
  local c = tonumber(ARGV[ev + W * j])
  local kind, rid, eid = ARGV[ev + W * j + 1], ARGV[ev + W * j + 4], ARGV[ev + W * j + 7]
  local state, stream = KEYS[5 * c - 4], KEYS[5 * c - 3]
  local seq, marks, patched = '', 'r', ''
  if repeats[j] then
    if repeats[j] > 0 then seq = string.format('%d', repeats[j]) else seq = seqs[-1 - repeats[j]] end
  else
    seq = string.format('%d', redis.call('HINCRBY', state, 'last_seq', 1))
    redis.call('HSETNX', state, 'started_at', ts)
    local data, more = ARGV[ev + W * j + 3], ''
    marks = ''
    if ARGV[ev + W * j + 5] ~= '' then
      marks, more = step(c, ARGV[ev + W * j + 5], now_ms)
      if more ~= '' then data = string.sub(data, 1, -2) .. more .. '}' end
    end
    local id_field = ''
    if eid ~= '' then
      id_field = ',"id":"' .. eid .. '"'
      redis.call('HSET', KEYS[5 * c], eid, seq)
    end
    local frame = '{"type":' .. ARGV[ev + W * j + 2] .. ',"call_id":' .. ARGV[11 + 3 * c]
      .. ',"seq":' .. seq .. ',"ts":' .. ts .. id_field .. ',"data":' .. data .. '}'
    if ARGV[ev + W * j + 6] ~= '' then
      patched = emeta[j]
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-0', 'f', frame, 'm', patched)
    else
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-0', 'f', frame)
    end
    local message = frame
    if emeta[j] ~= '' then message = frame .. '\\n' .. emeta[j] end
    redis.call('PUBLISH', ARGV[10 + 3 * c], message)
    redis.call('PUBLISH', account_channel, message)
    if kind ~= 'transcript.partial' then
      redis.call('ZADD', KEYS[5 * c - 2], ts, seq)
      unstored[c] = true
    end
    if kind == 'call.ended' then
      redis.call('HSET', state, 'status', 'ended')
    else
      redis.call('HSET', state, 'status', 'live')
    end
    if kind == 'control.result' then
      redis.call('HDEL', KEYS[5 * c - 1], rid)
      redis.call('ZREM', deadlines, '["' .. rid .. '",' .. ARGV[12 + 3 * c])
    elseif kind == 'control.requested' then
      redis.call('HSET', KEYS[5 * c - 1], rid, cjson.decode(ARGV[ev + W * j + 3])['action'])
      redis.call('ZADD', deadlines, string.format('%d', now_ms + control_ms), '["' .. rid .. '",' .. ARGV[12 + 3 * c])
    end
  end
  seqs[j] = seq
  out[#out + 1] = seq
  out[#out + 1] = marks
  out[#out + 1] = patched
end
for c = 1, ncalls do
  if mkeys[c] then
    for k in pairs(mgone[c]) do redis.call('HDEL', KEYS[5 * c - 4], 'm:' .. k) end
    for _, k in ipairs(mkeys[c]) do redis.call('HSET', KEYS[5 * c - 4], 'm:' .. k, mvals[c][k]) end
    redis.call('HSET', KEYS[5 * c - 4], 'meta', meta[c])
  end
end
local names = {'spk', 'fin', 'usr', 'ovr'}
for c = 1, ncalls do
  local kept = {spk[c] and int(spk[c]), fin[c] and int(fin[c]), usr[c] and int(usr[c]), ovr[c] and '1' or nil}
  for i = 1, 4 do
    if kept[i] ~= was[c][i] then
      if kept[i] then redis.call('HSET', KEYS[5 * c - 4], names[i], kept[i])
      else redis.call('HDEL', KEYS[5 * c - 4], names[i]) end
    end
  end
end
for c = 1, ncalls do
  if first[c] then
    local ttl = live_ttl
    if ended[c] then ttl = ended_ttl end
    if holder ~= '' then redis.call('HSET', KEYS[5 * c - 4], 'holder', holder) end
    redis.call('EXPIRE', KEYS[5 * c - 4], ttl)
    redis.call('EXPIRE', KEYS[5 * c - 3], ttl)
    redis.call('EXPIRE', KEYS[5 * c - 1], ttl)
    redis.call('EXPIRE', KEYS[5 * c], ttl)
    if unstored[c] then
      redis.call('EXPIRE', KEYS[5 * c - 2], ttl)
      redis.call('ZADD', index, 'NX', ts, KEYS[5 * c - 4])
    end
    if max_live > 0 then
      if ended[c] then
        redis.call('ZREM', live_set, ARGV[11 + 3 * c])
      else
        redis.call('ZADD', live_set, ts, ARGV[11 + 3 * c])
      end
    end
  end
end
if max_live > 0 then redis.call('EXPIRE', live_set, live_ttl) end
return out
"""

# KEYS: the call's state hash, the nodes' set. ARGV: dead after (ms). What a control request is
# checked against, in one round trip: {} when Redis does not know the call, else {status} and,
# while its node beats (`SocketCounter`), its holder: a dead node's sockets hold no call.
_CONTROL_TARGET: Final = """
local state = redis.call('HMGET', KEYS[1], 'status', 'holder')
if not state[1] then return {} end
local holder = state[2]
if not holder then return {state[1]} end
local beat = redis.call('ZSCORE', KEYS[2], string.match(holder, '^[^|]*'))
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if not beat or tonumber(beat) < now_ms - tonumber(ARGV[1]) then return {state[1]} end
return {state[1], holder}
"""

# KEYS: state hashes of the calls a closed socket held. ARGV: its holder.
_RELEASE: Final = """
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'holder') == ARGV[1] then redis.call('HDEL', KEYS[i], 'holder') end
end
return 1
"""

# KEYS: the control deadlines' set. ARGV: how many at most. Members past their deadline whose
# request still waits; those answered meanwhile (or whose call expired) are dropped.
_DUE: Final = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = {}
local range = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms), 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(range) do
  local m = cjson.decode(member)
  if redis.call('HEXISTS', m[4], m[1]) == 1 then
    due[#due + 1] = member
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return due
"""

# KEYS: state hash, log stream, ids hash. ARGV: status, last_seq, started_at ('' if none), live,
# ended ttl, metadata ('' if none, else as a patch: see _PUBLISH), then the ids the store holds of
# the call's events: id, seq, id, seq…
# The log wins over the store when it holds a later seq (the store writes behind the broker).
_SEED: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
local last = tonumber(ARGV[2])
local tail = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #tail > 0 then
  local held = tonumber(string.match(tail[1][1], '^(%d+)'))
  if held > last then last = held end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'last_seq', string.format('%d', last))
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[3]) end
if ARGV[6] ~= '' then
  local parts = {}
  for _, pair in ipairs(cjson.decode(ARGV[6])) do
    redis.call('HSET', KEYS[1], 'm:' .. pair[1], pair[2])
    parts[#parts + 1] = pair[1] .. ':' .. pair[2]
  end
  redis.call('HSET', KEYS[1], 'meta', '{' .. table.concat(parts, ',') .. '}')
end
local ttl = ARGV[4]
if ARGV[1] == 'ended' then ttl = ARGV[5] end
redis.call('EXPIRE', KEYS[1], ttl)
if #ARGV > 6 then redis.call('EXPIRE', KEYS[3], ttl) end
return 1
"""

_CONTROL_TYPES: Final = frozenset({REQUESTED, RESULT})
_DUE_BATCH: Final = 100  # timed-out control requests read at a time
_DEDUPE_CALLS: Final = 100_000
_READ_BYTES: Final = 256 * 1024


class _Watch:
    """One subscribed channel: whose it is, how many local watchers, and whether it is live."""

    __slots__ = ("account", "confirmed", "refs", "skip")

    def __init__(self, account: str) -> None:
        self.account = account
        self.refs = 1
        self.confirmed = asyncio.Event()
        self.skip = 0  # confirmations owed to SUBSCRIBEs sent before this watch existed


class _StaleConnectionError(Exception):
    """The pub/sub connection stopped answering PING: treat it as lost."""


def _escape(account: str) -> str:
    """Accounts may contain ':'; escaping keeps `prefix:account:call_id:suffix` unambiguous."""
    return account.replace("%", "%25").replace(":", "%3A")


class RedisBroker(base.Broker):
    """Sequencer on Lua scripts, replay log on streams, fan-out on pub/sub. One per node.

    `on_reconnect`, when set, is awaited (in a task) every time the pub/sub connection comes
    back after a loss: frames published meanwhile never reached this node, so the server must
    make its subscribers resume with `since` (closing their sockets with 1013 does that).
    """

    def __init__(
        self,
        url: str,
        *,
        history_ttl_s: float,
        prefix: str = "cs:",
        maxlen: int = 100_000,
        live_ttl_s: float = base.LIVE_TTL_S,
        quotas: base.Quotas | None = None,
        ping_interval_s: float = 1.0,
        ping_timeout_s: float = 3.0,
        watch_timeout_s: float = 5.0,
        unstored_after_s: float = base.UNSTORED_AFTER_S,
        control_timeout_s: float = 10.0,
    ) -> None:
        no_retry = Retry(NoBackoff(), 0)  # a retried EVALSHA could apply a batch twice
        options: dict[str, Any] = {
            "protocol": 2,  # pub/sub frames as plain replies we read ourselves; stable shapes
            "retry": no_retry,
            "socket_connect_timeout": 3.0,
            "socket_keepalive": True,
        }
        self.url = url
        self._redis = aioredis.Redis.from_url(url, socket_timeout=5.0, **options)
        self._sub_pool = ConnectionPool.from_url(url, **options)
        self._prefix = prefix
        self._maxlen = maxlen
        self._ended_ttl = max(1, math.ceil(history_ttl_s))
        self._live_ttl = max(self._ended_ttl, math.ceil(live_ttl_s))
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._watch_timeout_s = watch_timeout_s
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._seed_script = self._redis.register_script(_SEED)
        self._target_script = self._redis.register_script(_CONTROL_TARGET)
        self._release_script = self._redis.register_script(_RELEASE)
        self._due_script = self._redis.register_script(_DUE)
        self._control_timeout_ms = int(control_timeout_s * 1000)
        self._deadlines = f"{prefix}control:due"
        self._quotas = quotas or base.Quotas()
        self._sockets = SocketCounter(
            self._redis,
            prefix,
            lambda account: self._account_key(account, "sockets"),
            self._command,
            dead_after_s=5 * ping_interval_s,
        )
        self._unstored = UnstoredLedger(
            self._redis,
            prefix,
            self._call_key,
            self._logged,
            self._command,
            unstored_after_s=unstored_after_s,
        )
        self._node_channel = f"{prefix}node:{self._sockets.node}"  # control requests relayed here
        self._eraser = Eraser(
            self._redis,
            f"{prefix}erased",  # every node subscribes: calls erased (`redis_erase`)
            self._call_key,
            lambda account: [self._account_key(account, "live"), self._unstored.index_key, self._deadlines],
            self._command,
        )
        self._audio = AudioChannels(self._redis, lambda a, c: self._call_key(a, c, "au"), self._command)
        self._watches: dict[str, _Watch] = {}
        self._inflight: dict[str, int] = {}  # SUBSCRIBEs sent, confirmation not read yet
        self._last_seq: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._conn: AbstractConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._sub_ok = False
        self._cmd_ok = True
        self._sessions = 0
        self._last_pong = 0.0
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.reconnects = 0

    # ---- life cycle ----------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, or fail fast with a clear error: a node that cannot reach Redis cannot serve."""
        await self._command(self._redis.ping())
        self._tasks = [
            asyncio.create_task(self._subscriber_forever(), name="redis-broker-subscriber"),
            asyncio.create_task(self._ping_forever(), name="redis-broker-ping"),
            asyncio.create_task(self._audio.send_forever(), name="redis-broker-audio"),
        ]
        try:
            await asyncio.wait_for(self._connected.wait(), self._watch_timeout_s)
        except TimeoutError as exc:
            await self.close()
            raise base.BrokerUnavailableError(f"cannot subscribe on Redis at {self._safe_url()}") from exc

    async def close(self) -> None:
        with contextlib.suppress(base.BrokerUnavailableError):
            await self._sockets.leave()  # its sockets stop counting and holding calls at once
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._redis.aclose()
        await self._sub_pool.disconnect()

    @property
    def healthy(self) -> bool:
        """False while either connection fails: a node deaf to Redis must not look healthy."""
        return self._sub_ok and self._cmd_ok

    def _safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    # ---- keys ----------------------------------------------------------------------------

    def _call_key(self, account: str, call_id: str, suffix: str) -> str:
        return f"{self._prefix}{_escape(account)}:{call_id}:{suffix}"

    def _account_key(self, account: str, suffix: str) -> str:
        return f"{self._prefix}{_escape(account)}:{suffix}"  # one ':' fewer than any call's key

    def _account_channel(self, account: str) -> str:
        return f"{self._prefix}{_escape(account)}:*:ev"  # '*' is never a call id

    def _channel(self, account: str, call_id: str) -> str:
        if call_id == "*":
            return self._account_channel(account)
        return self._call_key(account, call_id, "ev")

    async def _command(self, awaitable: Awaitable[T]) -> T:
        """Run one Redis command, mapping driver errors to BrokerUnavailableError at the boundary.

        A cancelled caller stays cancelled: redis-py can swallow a cancellation that lands
        while it finishes a command (returning its result, or an error), and a loop that goes
        on after that (the pings) would never let `close` return."""
        try:
            result = await awaitable
        except (RedisError, OSError) as exc:
            _still_cancelled()
            self._cmd_ok = False
            raise base.BrokerUnavailableError(f"Redis failed: {exc.__class__.__name__}") from exc
        _still_cancelled()
        self._cmd_ok = True
        return result

    # ---- publish -------------------------------------------------------------------------

    async def publish(self, account: str, events: Sequence[NewEvent], holder: str | None = None) -> list[Event]:
        if not events:
            return []
        call_ids = list(dict.fromkeys(e.call_id for e in events))
        position = {cid: i for i, cid in enumerate(call_ids, 1)}
        keys = [
            self._call_key(account, cid, suffix)
            for cid in call_ids
            for suffix in ("state", "log", "unstored", "ctl", "ids")
        ]
        keys += [self._account_key(account, "live"), self._unstored.index_key, self._deadlines]
        args: list[str | int] = [
            len(call_ids),
            self._maxlen,
            self._live_ttl,
            self._ended_ttl,
            self._account_channel(account),
            self._quotas.events_per_call,
            self._quotas.live_calls,
            self._unstored.unstored_after_ms,
            holder or "",
            self._control_timeout_ms,
            MAX_KEYS,
            MAX_BYTES,
        ]
        call_json = {cid: orjson.dumps(cid).decode() for cid in call_ids}
        for cid in call_ids:
            tail = orjson.dumps([account, cid, self._call_key(account, cid, "ctl")]).decode()[1:]
            args += [self._call_key(account, cid, "ev"), call_json[cid], tail]
        fragments = [(orjson.dumps(e.type).decode(), orjson.dumps(e.data).decode()) for e in events]
        for new, (type_json, data_json) in zip(events, fragments, strict=True):
            request_id = str(new.data.get("request_id", "")) if new.type in _CONTROL_TYPES else ""
            args += [
                position[new.call_id], new.type, type_json, data_json, request_id, role(new.type, new.data),
                _patch_arg(new.data["metadata"]) if "metadata" in new.data else "", new.id or "",
            ]
        for _ in range(len(call_ids) + 2):
            reply = await self._command(self._publish_script(keys=keys, args=args))
            outcome = reply[0].decode()
            if outcome == "unknown":
                await self._seed(account, call_ids[int(reply[1]) - 1])
                continue
            if outcome == "repair":
                raise base.RepairNeededError(account, call_ids[int(reply[1]) - 1])
            if outcome != "ok":
                raise self._refusal(outcome, reply, events)
            ts = int(reply[1])
            out: list[Event] = []
            replies = zip(events, fragments, reply[2::3], reply[3::3], reply[4::3], strict=True)
            for new, (tj, dj), seq, measured, meta in replies:
                if measured == b"r":  # its id was in the call: the seq it got the first time
                    out.append(repeat_of(new, account, int(seq)))
                    continue
                marks = _marks(measured) if measured else None
                if marks is not None and (marks.latency_ms is not None or marks.interrupted):
                    marks.write_into(new.data)  # as the script appended them to the frame's data
                    dj = orjson.dumps(new.data).decode()
                id_field = "" if new.id is None else f',"id":"{new.id}"'  # as the script writes it
                frame = f'{{"type":{tj},"call_id":{call_json[new.call_id]},"seq":{int(seq)},"ts":{ts}{id_field},"data":{dj}}}'
                event = Event(account, new.call_id, int(seq), ts, new.type, new.data, frame=frame, marks=marks, id=new.id)
                event.meta = _metadata_of(meta) if meta else None  # what the store keeps of a patch
                out.append(event)
            return out
        raise base.BrokerUnavailableError("Redis keeps losing the calls' state; is it evicting keys?")

    def _refusal(self, outcome: str, reply: list[Any], events: Sequence[NewEvent]) -> Exception:
        """The error of a batch the publish script refused (nothing of it was applied)."""
        index = int(reply[1])
        call_id = events[index].call_id
        if outcome == "ended":
            return base.CallEndedError(call_id, index)
        if outcome == "events":
            return self._quotas.events_exceeded(call_id, index)
        if outcome == "live":
            return self._quotas.live_calls_exceeded(call_id, index)
        if outcome == "metadata":
            return base.MetadataRefusedError(call_id, index, reply[2].decode())
        if outcome == "claimed":
            return base.ControlResultError(call_id, index, str(events[index].data.get("request_id")))
        waiting = [item.decode() for item in reply[2:]]
        return base.PendingControlsError(call_id, index, dict(zip(waiting[::2], waiting[1::2], strict=True)))

    async def _seed(self, account: str, call_id: str) -> None:
        """Give Redis the store's view of a call it does not know, unless another node just did."""
        assert self._load_call is not None
        state = await self._load_call(account, call_id) or CallState("pending", 0)
        keys = [self._call_key(account, call_id, suffix) for suffix in ("state", "log", "ids")]
        started = "" if state.started_at is None else str(state.started_at)
        metadata = "" if state.metadata is None else _patch_arg(state.metadata)
        args: list[str | int] = [state.status, state.last_seq, started, self._live_ttl, self._ended_ttl, metadata]
        for event_id, seq in (state.ids or {}).items():
            args += [event_id, seq]
        await self._command(self._seed_script(keys=keys, args=args))

    # ---- unstored events (`redis_unstored`) ------------------------------------------------

    @property
    def tracks_unstored(self) -> bool:
        return True

    async def stored(self, events: Sequence[Event]) -> None:
        await self._unstored.stored(events)

    async def mark_unstored(self, events: Sequence[Event]) -> None:
        await self._unstored.failed(events)

    def repairing(self, account: str, call_id: str) -> AbstractAsyncContextManager[base.Unstored]:
        return self._unstored.repairing(account, call_id)

    async def repaired(self, account: str, call_id: str, work: base.Unstored) -> None:
        await self._unstored.repaired(account, call_id, work)

    async def overdue(self) -> list[tuple[str, str]]:
        return await self._unstored.overdue()

    # ---- erasure (`redis_erase`) ---------------------------------------------------------------

    async def unsettled(self, account: str, call_ids: Sequence[str]) -> set[str]:
        return await self._eraser.unsettled(account, call_ids)

    async def erase(self, account: str, call_ids: Sequence[str]) -> None:
        """Every node, this one included, hears of it on the erased channel (`_on_erased`)."""
        if call_ids:
            await self._eraser.erase(account, call_ids)

    def _on_erased(self, message: str) -> None:
        try:
            account, call_ids = erased_calls(message)
        except ValueError:
            log.warning("ignored a message on the erased channel that is not an erasure")
            return
        for call_id in call_ids:
            self._last_seq.pop((account, call_id), None)
        if self.on_erased is not None:
            try:
                self.on_erased(account, call_ids)
            except Exception:  # the pub/sub session must go on for the other calls
                log.exception("on_erased failed for %d calls", len(call_ids))

    # ---- live control --------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._sockets.node

    async def holder(self, account: str, call_id: str) -> str | None:
        found = await self._control_target(account, call_id)
        return found[1].decode() if len(found) > 1 else None

    async def control_target(self, account: str, call_id: str) -> tuple[str, str | None]:
        found = await self._control_target(account, call_id)
        if not found:  # unknown to Redis, so held by nobody: the store says whether it is live
            assert self._load_call is not None
            return (await self._load_call(account, call_id) or CallState("pending", 0)).status, None
        return found[0].decode(), found[1].decode() if len(found) > 1 else None

    async def _control_target(self, account: str, call_id: str) -> list[bytes]:
        keys = [self._call_key(account, call_id, "state"), self._sockets.nodes_key]
        found: list[bytes] = await self._command(self._target_script(keys=keys, args=[self._sockets.dead_after_ms]))
        return found

    async def release(self, account: str, call_ids: Collection[str], holder: str) -> None:
        keys = [self._call_key(account, call_id, "state") for call_id in call_ids]
        for start in range(0, len(keys), 1000):
            await self._command(self._release_script(keys=keys[start : start + 1000], args=[holder]))

    async def relay(self, holder: str, frame: bytes) -> None:
        """To the holder's node over its own channel (this node's own: without a round trip)."""
        target = Holder.decode(holder)
        if target.node == self.node_id:
            if self.on_relay is not None:
                self.on_relay(target.conn, frame)
            return
        message = target.conn.encode() + b"\n" + frame
        await self._command(self._redis.publish(f"{self._prefix}node:{target.node}", message))

    async def due_controls(self) -> list[tuple[str, str, str]]:
        members = await self._command(self._due_script(keys=[self._deadlines], args=[_DUE_BATCH]))
        due = []
        for member in members:
            request_id, account, call_id, _ = orjson.loads(member)
            due.append((account, call_id, request_id))
        return due

    # ---- sockets quota -------------------------------------------------------------------

    async def acquire_socket(self, account: str) -> None:
        """Cluster-wide: the account's sockets on every node that is alive (`SocketCounter`)."""
        limit = self._quotas.sockets
        if limit and not await self._sockets.acquire(account, limit):
            raise self._quotas.sockets_exceeded()

    async def release_socket(self, account: str) -> None:
        if self._quotas.sockets:
            await self._sockets.release(account)

    # ---- reads ---------------------------------------------------------------------------

    async def state(self, account: str, call_id: str) -> CallState:
        key = self._call_key(account, call_id, "state")
        status, last_seq, started, meta = await self._command(
            self._redis.hmget(key, ["status", "last_seq", "started_at", "meta"])
        )
        if status is None:
            assert self._load_call is not None
            return await self._load_call(account, call_id) or CallState("pending", 0)
        status = status.decode() if isinstance(status, bytes) else status
        metadata = _metadata_of(meta) if meta else None
        return CallState(status, int(last_seq or 0), None if started is None else int(started), metadata)

    async def history(self, account: str, call_id: str, since: int) -> base.HeldHistory:
        """The stream's entries after `since`, superseded partials left out, read atomically."""
        stream = self._call_key(account, call_id, "log")
        pipe = self._redis.pipeline(transaction=True)
        pipe.xrange(stream, min=str(since + 1), max="+")
        pipe.xrange(stream, min="-", max="+", count=1)
        pipe.hget(self._call_key(account, call_id, "state"), "last_seq")
        entries, head, last_seq = await self._command(pipe.execute())
        if head:
            first_seq = int(head[0][0].split(b"-")[0])
        elif last_seq is not None:
            first_seq = int(last_seq) + 1
        else:
            assert self._load_call is not None
            stored = await self._load_call(account, call_id)
            first_seq = (stored.last_seq if stored else 0) + 1
        events = [self._event(account, fields[b"f"].decode()) for _, fields in entries]
        return base.HeldHistory(_drop_superseded(events), first_seq)

    @staticmethod
    def _event(account: str, frame: str) -> Event:
        """Rebuild an Event around its frame, keeping the frame's bytes as they are."""
        body = orjson.loads(frame)
        return Event(
            account, body["call_id"], body["seq"], body["ts"], body["type"], body["data"], frame=frame, id=body.get("id")
        )

    @classmethod
    def _logged(cls, account: str, fields: dict[bytes, bytes]) -> Event:
        """An event of the call's log, with the metadata it left the call with when it patched it."""
        event = cls._event(account, fields[b"f"].decode())
        if b"m" in fields:
            event.meta = _metadata_of(fields[b"m"])
        return event

    # ---- fan-out -------------------------------------------------------------------------

    async def watch(self, account: str, call_id: str) -> None:
        """Subscribe the call's (or, for '*', the account's) channel; return once Redis confirmed.

        The watch is counted even when this raises BrokerUnavailableError (it is resubscribed
        when Redis is back), so the caller balances it with `unwatch` as usual.
        """
        channel = self._channel(account, call_id)
        watch = self._watches.get(channel)
        if watch is not None:
            watch.refs += 1
        else:
            watch = self._watches[channel] = _Watch(account)
            watch.skip = self._inflight.get(channel, 0)
            await self._send_subscription("SUBSCRIBE", channel)
        try:
            await asyncio.wait_for(watch.confirmed.wait(), self._watch_timeout_s)
        except TimeoutError as exc:
            raise base.BrokerUnavailableError("Redis did not confirm the subscription in time") from exc

    async def unwatch(self, account: str, call_id: str) -> None:
        channel = self._channel(account, call_id)
        watch = self._watches.get(channel)
        if watch is None:
            return
        watch.refs -= 1
        if watch.refs <= 0:
            del self._watches[channel]
            await self._send_subscription("UNSUBSCRIBE", channel)

    # ---- live audio (`redis_audio`) -----------------------------------------------------------

    @property
    def relays_audio(self) -> bool:
        return True

    def publish_audio(self, account: str, call_id: str, message: bytes, *, always: bool = False) -> None:
        self._audio.publish(account, call_id, message, always=always)

    async def listen_audio(self, account: str, call_id: str) -> None:
        channel = self._audio.watch(account, call_id)
        if channel is not None:
            await self._send_raw("SUBSCRIBE", channel)

    async def unlisten_audio(self, account: str, call_id: str) -> None:
        channel = self._audio.unwatch(account, call_id)
        if channel is not None:
            await self._send_raw("UNSUBSCRIBE", channel)

    async def _send_raw(self, command: str, channel: str) -> None:
        """On the pub/sub connection if it is up (a reconnect subscribes what is listened)."""
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.send_command(command, channel, check_health=False)
        except (RedisError, OSError):
            log.warning("pub/sub %s failed; the reconnect will resubscribe", command)

    async def _send_subscription(self, command: str, channel: str) -> None:
        """Send on the pub/sub connection if it is up; a reconnect resubscribes what is watched."""
        conn = self._conn
        if conn is None:
            return
        if command == "SUBSCRIBE":
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
        try:
            await conn.send_command(command, channel, check_health=False)
        except (RedisError, OSError):
            log.warning("pub/sub %s failed; the reconnect will resubscribe", command)

    async def _subscriber_forever(self) -> None:
        """Own the pub/sub connection: (re)connect, resubscribe, read until it breaks, repeat."""
        backoff = 0.05
        while True:
            conn: AbstractConnection = self._sub_pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                _still_cancelled()
                await self._session(conn)
            except (RedisError, OSError, _StaleConnectionError) as exc:
                if self._sub_ok:
                    log.warning("lost the Redis pub/sub connection: %s", exc.__class__.__name__)
            except Exception:  # a bug must not leave the node deaf: log it, reconnect, resubscribe
                log.exception("the Redis pub/sub session failed")
                backoff = 0.05 if self._sub_ok else min(backoff * 2, 2.0)
            finally:
                self._sub_ok = False
                self._conn = None
                self._inflight.clear()
                for watch in self._watches.values():
                    watch.confirmed.clear()
                    watch.skip = 0
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            await asyncio.sleep(backoff)

    async def _session(self, conn: AbstractConnection) -> None:
        self._conn = conn
        self._last_seq.clear()  # after a restart Redis may restart seq from the store's view
        channels = list(self._watches)
        for channel in channels:
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
        await conn.send_command(
            "SUBSCRIBE",
            self._node_channel,
            self._eraser.channel,
            *channels,
            *self._audio.channels(),
            check_health=False,
        )
        _still_cancelled()
        self._sub_ok = True
        self._sessions += 1
        self._connected.set()
        if self._sessions > 1:
            self.reconnects += 1
            log.warning("Redis pub/sub reconnected; subscribers must resume with since")
            self._notify_reconnect()
        tasks = [asyncio.create_task(self._read(conn)), asyncio.create_task(self._keepalive(conn))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise why the session ended

    def _notify_reconnect(self) -> None:
        hook = self.on_reconnect
        if hook is None:
            return

        async def run() -> None:
            try:
                await hook()
            except Exception:
                log.exception("on_reconnect hook failed")

        self._tasks.append(asyncio.create_task(run(), name="redis-broker-on-reconnect"))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _keepalive(self, conn: AbstractConnection) -> None:
        """PING on the pub/sub connection: a half-open socket otherwise looks like silence."""
        while True:
            sent = time.monotonic()
            await conn.send_command("PING", check_health=False)
            _still_cancelled()
            await asyncio.sleep(self._ping_interval_s)
            while self._last_pong < sent:
                if time.monotonic() - sent > self._ping_timeout_s:
                    raise _StaleConnectionError
                await asyncio.sleep(0.05)

    async def _read(self, conn: AbstractConnection) -> None:
        """Read the pub/sub stream in bulk: one socket read, then every whole reply in it.

        redis-py's `read_response` costs an await chain per message, on the path of every
        event a node receives (bench/README.md holds the measurement). This connection only ever
        receives pub/sub pushes and PONGs after the handshake, so it reads the socket itself
        into hiredis' parser (commands still go out through redis-py). The events of one read are
        fanned out together: the hub joins each call's frames of a batch once, and a subscriber
        gets them in one socket write.
        """
        # redis-py ran its handshake on it; from here on it is ours. A private attribute:
        # tests/broker/test_redis_reader_contract.py checks it on the installed redis-py.
        stream = conn._reader
        if stream is None:
            raise ConnectionError("the pub/sub connection is not open")
        parser = hiredis.Reader()
        while True:
            data = await stream.read(_READ_BYTES)
            if not data:
                raise ConnectionError("Redis closed the pub/sub connection")
            parser.feed(data)
            batch: list[Event] = []
            while (reply := parser.gets()) is not False:
                self._on_reply(reply, batch)
            if batch and self._deliver is not None:
                try:
                    self._deliver(batch)
                except Exception:
                    log.exception("deliver failed for a batch of %d events", len(batch))

    def _on_reply(self, reply: object, batch: list[Event]) -> None:
        if reply == b"PONG":  # a PING answered while nothing is subscribed
            self._last_pong = time.monotonic()
            return
        if not isinstance(reply, list) or not reply:
            return  # an error reply (a hiredis.ReplyError object): nothing to route
        kind = reply[0]
        if len(reply) > 2 and AudioChannels.is_audio(reply[1]):  # binary: never decoded as text
            if kind == b"message":
                self._audio.heard(reply[1], reply[2], self.on_audio)
            return
        if kind == b"message":
            self._on_message(reply[1].decode(), reply[2].decode(), batch)
        elif kind == b"subscribe":
            self._on_subscribed(reply[1].decode())
        elif kind == b"pong":
            self._last_pong = time.monotonic()

    def _on_subscribed(self, channel: str) -> None:
        self._inflight[channel] = max(0, self._inflight.get(channel, 0) - 1)
        watch = self._watches.get(channel)
        if watch is None:
            return
        if watch.skip > 0:
            watch.skip -= 1  # the confirmation of an earlier SUBSCRIBE, before an UNSUBSCRIBE
        else:
            watch.confirmed.set()

    def _on_message(self, channel: str, message: str, batch: list[Event]) -> None:
        """Add each (account, call, seq) to the batch once: a node watching a call and its account
        hears it on both channels, always back to back (the script publishes them together). A
        message is the frame, then '\\n' and the call's metadata when it has some."""
        watch = self._watches.get(channel)
        if watch is None:
            if channel == self._node_channel and self.on_relay is not None:
                conn_id, _, request = message.partition("\n")
                self.on_relay(conn_id, request.encode())
            elif channel == self._eraser.channel:
                self._on_erased(message)
            return
        frame, _, meta = message.partition("\n")
        event = self._event(watch.account, frame)
        key = (event.account, event.call_id)
        last = self._last_seq.get(key)
        if last is not None and event.seq <= last:
            return
        self._last_seq[key] = event.seq
        self._last_seq.move_to_end(key)
        if len(self._last_seq) > _DEDUPE_CALLS:
            self._last_seq.popitem(last=False)
        if meta:
            event.meta = _metadata_of(meta)
        batch.append(event)

    async def _ping_forever(self) -> None:
        """The node's heartbeat, which also checks the command connection (so `healthy` turns
        false without traffic): the nodes that stop beating hold no sockets' quota and no calls."""
        while True:
            with contextlib.suppress(base.BrokerUnavailableError):
                await self._sockets.beat()
            await asyncio.sleep(self._ping_interval_s)


def _patch_arg(patch: Mapping[str, Any]) -> str:
    """A metadata patch as the scripts take it: [key as JSON, value as JSON or '' to remove]."""
    pairs = [[orjson.dumps(k).decode(), "" if v is None else orjson.dumps(v).decode()] for k, v in patch.items()]
    return orjson.dumps(pairs).decode()


@functools.lru_cache(maxsize=4096)
def _metadata_of(text: str | bytes) -> dict[str, Any]:
    """A call's metadata as the scripts keep it (JSON): decoded once for the many events of a
    call that carry the same, and shared by them (an event's `meta` is never mutated)."""
    return dict(orjson.loads(text))


def _marks(measured: bytes) -> Marks:
    """The script's 'latency,interrupted,agent_ms,user_ms' for one event."""
    latency, interrupted, agent_ms, user_ms = measured.split(b",")
    return Marks(int(latency) if latency else None, interrupted == b"1", int(agent_ms), int(user_ms))


def _still_cancelled() -> None:
    """Raise CancelledError if the running task was cancelled and the driver swallowed it
    (see `RedisBroker._command`): every loop here must end when `close` cancels it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _drop_superseded(events: list[Event]) -> list[Event]:
    """Leave out each partial a later partial or final of the same key replaced in this range."""
    seen: set[str] = set()
    kept: list[Event] = []
    for event in reversed(events):
        key = event.key
        if key is not None:
            if event.type == PARTIAL and key in seen:
                continue
            seen.add(key)
        kept.append(event)
    kept.reverse()
    return kept
