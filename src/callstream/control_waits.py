"""What a client waits for after a control request (docs/control.md): its `control_ack` (or the
`error` refusing it), matched by `ref`, then its `control.result`, matched by `request_id`.

Kept apart from the socket so :class:`~callstream.Client` only feeds it messages: a result may
arrive before the program starts waiting for it (the producer can be that quick), so the recent
ones are remembered.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from callstream.errors import ControlError

__all__ = ["ControlOutcome", "ControlWaits"]

_RECENT: Final = 1_000  # results remembered before anyone waited for them


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """A control request's ack (`request_id`, the `seq` of its `control.requested`) and its
    one result: `ok`, and `error` when not (``"timeout"`` when the producer never answered)."""

    request_id: str
    seq: int
    ok: bool
    error: str | None


class ControlWaits:
    def __init__(self) -> None:
        self._refs = itertools.count(1)
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def expect_ack(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A fresh `ref` for a request, and the future of its ack's data (or its refusal)."""
        ref = f"control-{next(self._refs)}"
        future = self._acks[ref] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._acks.pop(ref, None))
        return ref, future

    def expect_result(self, request_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if (data := self._recent.pop(request_id, None)) is not None:
            future.set_result(data)
            return future
        self._results[request_id] = future
        future.add_done_callback(lambda _: self._results.pop(request_id, None))
        return future

    def on_message(self, message: dict[str, Any]) -> bool:
        """Take a `control_ack` or an `error` answering a request; True when it was one."""
        future = self._acks.get(str(message.get("ref")))
        if future is None or future.done():
            return False
        data = message.get("data")
        data = data if isinstance(data, dict) else {}
        if message.get("type") == "control_ack":
            future.set_result(data)
        else:
            future.set_exception(ControlError(str(data.get("code", "internal")), str(data.get("message", ""))))
        return True

    def on_result(self, data: dict[str, Any]) -> None:
        """A `control.result` event arrived (of any request: only awaited ones are kept long)."""
        request_id = str(data.get("request_id"))
        future = self._results.get(request_id)
        if future is not None:
            if not future.done():
                future.set_result(data)
            return
        self._recent[request_id] = data
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    def fail_all(self, error: Exception) -> None:
        """The connection is gone: no ack will come on it."""
        for future in list(self._acks.values()):
            if not future.done():
                future.set_exception(error)
