"""Live audio across nodes on Redis pub/sub: one channel per call, `…:<call_id>:au`.

Why this shape:

- **Subscribed only where someone listens.** A node SUBSCRIBEs a call's audio channel while it
  has listeners of that call (on the broker's own pub/sub connection, resubscribed with the rest
  after a reconnect), so a node hears no audio it would throw away.
- **Published only while someone hears it.** PUBLISH answers how many connections received the
  message. A call whose audio reached no other node is muted for `MUTE_S`: the node then sends
  nothing of it until the mute runs out, and probes again. A call nobody listens to costs a few
  PUBLISHes a second, not one per frame; a new listener on another node hears it within `MUTE_S`.
- **Bounded, in order, never waiting.** `publish` appends to one queue the node drains in
  pipelined batches on one task, so a call's frames leave in the order they came; when Redis
  falls behind, the queue drops its oldest messages (late audio is lost audio) and the events'
  path never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis

from callstream import metrics
from callstream.broker.base import AudioHeard, BrokerUnavailableError

log = logging.getLogger("callstream.broker.redis")

T = TypeVar("T")

MUTE_S: Final = 0.25
QUEUE_MAX: Final = 8192  # messages waiting for Redis (about 160 ms of 1,000 calls' two tracks)
_BATCH: Final = 256
_MUTES_MAX: Final = 100_000


class AudioChannels:
    """The node's audio channels: those it listens to, and its outbound queue."""

    def __init__(
        self,
        redis: aioredis.Redis,
        channel_of: Callable[[str, str], str],
        command: Callable[[Awaitable[Any]], Awaitable[Any]],
    ) -> None:
        self._redis = redis
        self._channel_of = channel_of
        self._command = command
        self._watches: dict[bytes, tuple[str, str]] = {}  # channel → (account, call_id)
        self._out: deque[tuple[str, bytes]] = deque(maxlen=QUEUE_MAX)
        self._wake = asyncio.Event()
        self._muted: dict[str, float] = {}  # channel → monotonic time its mute ends
        self._failing = False

    # ---- listening ---------------------------------------------------------------------------

    def watch(self, account: str, call_id: str) -> str | None:
        """Listen to the call's channel; the channel to SUBSCRIBE, or None if already listened."""
        channel = self._channel_of(account, call_id)
        key = channel.encode()
        if key in self._watches:
            return None
        self._watches[key] = (account, call_id)
        return channel

    def unwatch(self, account: str, call_id: str) -> str | None:
        """Stop; the channel to UNSUBSCRIBE, or None if it was not listened."""
        channel = self._channel_of(account, call_id)
        return channel if self._watches.pop(channel.encode(), None) is not None else None

    def channels(self) -> list[str]:
        """Every channel listened to (to SUBSCRIBE again on a new connection)."""
        return [c.decode() for c in self._watches]

    @staticmethod
    def is_audio(channel: object) -> bool:
        """An audio channel's name (a call's event channel ends in `:ev`, no other in `:au`)."""
        return isinstance(channel, bytes) and channel.endswith(b":au")

    def heard(self, channel: bytes, message: bytes, on_audio: AudioHeard | None) -> None:
        watched = self._watches.get(channel)
        if watched is not None and on_audio is not None:
            try:
                on_audio(watched[0], watched[1], message)
            except Exception:  # one listener's failure must not make the node deaf
                log.exception("audio fan-out failed")

    # ---- publishing --------------------------------------------------------------------------

    def publish(self, account: str, call_id: str, message: bytes, *, always: bool = False) -> None:
        """Queue the message for the call's channel, unless the call is muted (`always`: even so)."""
        channel = self._channel_of(account, call_id)
        if not always and (until := self._muted.get(channel)) is not None:
            if until > time.monotonic():
                return
            del self._muted[channel]
        if len(self._out) == QUEUE_MAX:
            metrics.AUDIO_FRAMES_DROPPED.inc()
        self._out.append((channel, message))
        self._wake.set()

    async def send_forever(self) -> None:
        """Drain the queue in pipelined batches, in order; mute the calls nobody else hears."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                batch = [self._out.popleft() for _ in range(min(len(self._out), _BATCH))]
                try:
                    await self._send(batch)
                except Exception:  # a bug must not silence every later call's audio
                    log.exception("relaying audio failed")

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for channel, message in batch:
            pipe.publish(channel, message)
        try:
            heard: list[int] = await self._command(pipe.execute())
        except BrokerUnavailableError as exc:
            if not self._failing:
                log.warning("live audio not relayed to other nodes: %s", exc)
            self._failing = True
            return  # audio is live only: what Redis could not take now is lost
        self._failing = False
        ends = time.monotonic() + MUTE_S
        for (channel, _), receivers in zip(batch, heard, strict=True):
            own = 1 if channel.encode() in self._watches else 0  # this node hears its own too
            if receivers - own <= 0:
                self._muted[channel] = ends
            else:  # heard after all (a mute set by an earlier batch is over)
                self._muted.pop(channel, None)
        if len(self._muted) > _MUTES_MAX:
            now = time.monotonic()
            self._muted = {c: t for c, t in self._muted.items() if t > now}
