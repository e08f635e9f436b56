"""The per-connection outbound buffer and its slow-consumer policy, without I/O.

It holds complete WebSocket frames (bytes), so draining it is a join and one socket write.

A connection's writer drains this buffer at the speed of its socket; fan-out only appends. When
the buffered bytes pass the high-water mark, partials that a newer transcript of the same key
already supersedes are dropped (they carry nothing the client still needs); if that is not
enough the buffer reports overflow and the connection is closed with `slow_consumer`. Nothing
else is ever dropped, so a client that resumes with `since` loses only superseded partials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# (frame, supersede key, is partial): a plain tuple, built without a Python-level constructor
# (a NamedTuple's __new__ is one, on the fan-out's path) and untracked by the garbage collector.
_Item = tuple[bytes, str | None, bool]


@dataclass(slots=True)
class OutboxStatistics:
    queued: int
    queued_bytes: int
    dropped_partials: int
    high_water: int
    overflowed: bool


class Outbox:
    """Bounded FIFO of text frames; `push` returns False once the consumer is too slow."""

    def __init__(self, high_water_bytes: int, on_drop: Callable[[int], None] | None = None) -> None:
        # A list, replaced by a fresh one whenever a write takes everything (the common case): an
        # idle connection's outbox costs an empty list, where a deque keeps a 64-slot block.
        self._items: list[_Item] = []
        # A plain attribute, not a property: fan-out asks "is anything queued?" once per delivery
        # (frames are never empty, so 0 bytes means nothing queued), and a Python-level call
        # (`__len__`) there would run once per delivery.
        self.queued_bytes = 0
        self._high_water = high_water_bytes
        self._dropped = 0
        self._on_drop = on_drop  # told how many superseded partials each clean-up dropped
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def has_room(self) -> bool:
        """Below half the high-water mark: a replay may add more without risking overflow."""
        return self.queued_bytes * 2 < self._high_water

    def push(self, frame: bytes, key: str | None = None, partial: bool = False) -> bool:
        if self.overflowed:
            return False
        self._items.append((frame, key, partial))
        self.queued_bytes += len(frame)
        if self.queued_bytes > self._high_water:
            self._drop_superseded_partials()
            if self.queued_bytes > self._high_water:
                self.overflowed = True
                return False
        return True

    def pop(self) -> bytes | None:
        if not self._items:
            return None
        item = self._items.pop(0)
        self.queued_bytes -= len(item[0])
        return item[0]

    def pop_batch(self, max_bytes: int) -> list[bytes]:
        """Oldest frames up to about `max_bytes` (at least one): what one socket write carries."""
        items = self._items
        if self.queued_bytes <= max_bytes:  # everything: hand the frames over, keep nothing
            self._items, self.queued_bytes = [], 0
            return [item[0] for item in items]
        batch, size, taken = [], 0, 0
        for item in items:
            if size >= max_bytes:
                break
            size += len(item[0])
            batch.append(item[0])
            taken += 1
        del items[:taken]
        self.queued_bytes -= size
        return batch

    def _drop_superseded_partials(self) -> None:
        """Keep, per key, only transcripts newer than every other of that key; O(n), rare."""
        seen: set[str] = set()
        kept: list[_Item] = []
        for item in reversed(self._items):
            frame, key, partial = item
            if key is not None:
                if partial and key in seen:
                    self.queued_bytes -= len(frame)
                    self._dropped += 1
                    continue
                seen.add(key)
            kept.append(item)
        kept.reverse()
        if self._on_drop is not None and len(kept) < len(self._items):
            self._on_drop(len(self._items) - len(kept))
        self._items = kept

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            len(self._items), self.queued_bytes, self._dropped, self._high_water, self.overflowed
        )
