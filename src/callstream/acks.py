"""The acks an ingest socket owes (docs/protocol.md, Producing), in order, each once its event is durable.

Sans-I/O: the store's futures say when a frame's events are committed, a clock says when a commit
is overdue; `server.ingest` does the writing.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import CancelledError
from collections import deque
from collections.abc import Callable
from typing import Any

from callstream import protocol as p

_Refs = list[tuple[Any, int, str]]  # (ref, seq, call_id) of one frame's events that carry a ref


class AckLine:
    """The acks a socket owes, in the order its frames arrived, and when each one comes due.

    Sans-I/O: `add` a frame's refs with the future the store resolves once they are durable;
    `due` returns the messages (acks, or errors saying why there is none) that are ready at the
    head of the line, stopping at the first frame still waiting, so no ack ever overtakes an
    earlier one. A frame whose commit takes longer than `timeout_s` gets an error instead (a
    hung database must not hang the producer); its commit, should it come, is ignored.
    """

    __slots__ = ("_clock", "_line", "timeout_s")

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._line: deque[tuple[_Refs, asyncio.Future[None], float]] = deque()

    def __len__(self) -> int:
        return len(self._line)

    def add(self, refs: _Refs, durable: asyncio.Future[None]) -> None:
        self._line.append((refs, durable, self._clock() + self.timeout_s))

    def next_deadline(self) -> float | None:
        """When the frame at the head times out (on the line's clock: the ingest socket passes
        its event loop's, so the deadline goes to `loop.call_at` as is), if any frame waits."""
        return self._line[0][2] if self._line else None

    def due(self) -> list[bytes]:
        messages: list[bytes] = []
        line = self._line
        now: float | None = None
        while line:
            refs, durable, deadline = line[0]
            if durable.done():
                error = CancelledError() if durable.cancelled() else durable.exception()
                messages.extend(_outcome(refs, error))
            else:
                if now is None:
                    now = self._clock()
                if now < deadline:
                    break
                message = f"not confirmed: the store did not commit within {self.timeout_s:g} s"
                messages.extend(p.error_message(p.ErrorCode.INTERNAL, message, None, ref) for ref, _, _ in refs)
            line.popleft()
        return messages


def _outcome(refs: _Refs, error: BaseException | None) -> list[bytes]:
    """Acks for a frame's stored events, errors for the others: a store error that names the
    calls it failed (`store.CallFailedError.calls`) leaves the frame's other calls stored."""
    if error is None:
        return [p.ack_message(ref, seq) for ref, seq, _ in refs]
    failed: set[tuple[str, str]] | None = getattr(error, "calls", None)
    failed_ids = None if failed is None else {call_id for _, call_id in failed}
    text = f"not stored: {error}"
    return [
        p.ack_message(ref, seq)
        if failed_ids is not None and call_id not in failed_ids
        else p.error_message(p.ErrorCode.INTERNAL, text, call_id, ref)
        for ref, seq, call_id in refs
    ]
