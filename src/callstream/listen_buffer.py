"""A listener's outbound audio, without I/O: bounded, oldest first to go.

Audio waits apart from a connection's events (`outbox.Outbox`), so the socket writes events
first and audio never holds them back. Live audio that is late is worth less than audio that is
now: when the buffered bytes pass the cap, the oldest frames are dropped to make room. A
listener that loses a whole buffer's worth of audio without the buffer once running empty is
not catching up at all, and `push` then reports it too slow (the socket closes it as a slow
consumer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class ListenBuffer:
    """Bounded FIFO of binary frames; `push` returns False once the listener is too slow."""

    __slots__ = ("_frames", "_max_bytes", "_on_drop", "dropped", "dropped_since_empty", "queued_bytes")

    def __init__(self, max_bytes: int, on_drop: Callable[[int], None] | None = None) -> None:
        # Made by the first push: every socket has a buffer and few ever listen, so an idle
        # socket holds no deque (bench/README.md, `lazy-listen`).
        self._frames: deque[bytes] | None = None
        self._max_bytes = max_bytes
        self._on_drop = on_drop  # told how many frames each push dropped
        self.queued_bytes = 0
        self.dropped = 0  # frames dropped over the connection's life
        self.dropped_since_empty = 0  # bytes dropped since the buffer was last empty

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    def push(self, frame: bytes) -> bool:
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        frames.append(frame)
        self.queued_bytes += len(frame)
        if self.queued_bytes <= self._max_bytes:
            return True
        dropped = 0
        while self.queued_bytes > self._max_bytes and len(frames) > 1:
            old = frames.popleft()
            self.queued_bytes -= len(old)
            self.dropped_since_empty += len(old)
            dropped += 1
        self.dropped += dropped
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
        return self.dropped_since_empty <= self._max_bytes

    def pop_batch(self, max_bytes: int) -> list[bytes]:
        """Oldest frames up to about `max_bytes` (at least one): what one socket write carries."""
        frames = self._frames
        batch: list[bytes] = []
        size = 0
        while frames and size < max_bytes:
            frame = frames.popleft()
            size += len(frame)
            batch.append(frame)
        self.queued_bytes -= size
        if not frames:
            self.dropped_since_empty = 0
        return batch

    def drop_where(self, doomed: Callable[[bytes], bool]) -> None:
        """Drop the frames queued that `doomed` picks, say one call's of a socket listening to
        several (counted as dropped, not as falling behind)."""
        frames = self._frames
        if not frames:
            return
        kept = deque(frame for frame in frames if not doomed(frame))
        dropped = len(frames) - len(kept)
        if not dropped:
            return
        self._frames = kept
        self.queued_bytes = sum(map(len, kept))
        self.dropped += dropped
        if self._on_drop is not None:
            self._on_drop(dropped)
        if not kept:
            self.dropped_since_empty = 0

    def clear(self) -> None:
        """Drop every frame queued (counted as dropped, not as falling behind)."""
        queued = len(self)
        if queued and self._on_drop is not None:
            self._on_drop(queued)
        self.dropped += queued
        if self._frames is not None:
            self._frames.clear()
        self.queued_bytes = 0
        self.dropped_since_empty = 0
