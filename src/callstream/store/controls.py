"""Control requests still waiting for their result, read back from the stored history.

Every control request gets exactly one `control.result` (docs/control.md). The embedded broker
keeps the requests waiting for one in the node's memory, so a node that stops (or dies) between
a request and its result forgets them; the restarted node reads them back from here and times
them out. A request waits when a live call's history holds its `control.requested` and no
`control.result` for it. Only the chunks of live calls that hold a control event are read, a few
at a time: a long call is never held in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callstream.control import REQUESTED, RESULT, WaitingRequest
from callstream.store import tables as t

__all__ = ["WaitingRequests", "waiting_requests"]

# Every stored frame of a control event has this (frames are compact JSON, `type` first); a
# chunk without it is not read.
_CONTROL_MARK: Final = '"type":"control.'
_CHUNKS_AT_ONCE: Final = 16  # stored chunks decoded at a time (at most 1 MiB each)


class WaitingRequests:
    """The control events of one account's calls, fed chunk by chunk in any order: what waits."""

    def __init__(self, account: str) -> None:
        self.account = account
        self._requested: dict[tuple[str, str], tuple[str, int]] = {}  # (call, request) → (action, ts)
        self._answered: set[tuple[str, str]] = set()

    def feed(self, call_id: str, chunk: str) -> None:
        if _CONTROL_MARK not in chunk:
            return
        for frame in orjson.loads(chunk):
            kind, data = frame.get("type"), frame.get("data")
            if not isinstance(data, dict) or not isinstance(data.get("request_id"), str):
                continue
            key = (call_id, data["request_id"])
            if kind == REQUESTED:
                self._requested[key] = (str(data.get("action")), int(frame["ts"]))
            elif kind == RESULT:
                self._answered.add(key)

    def waiting(self) -> list[WaitingRequest]:
        """Requests without a result, oldest first."""
        found = [
            WaitingRequest(self.account, call_id, request_id, action, ts)
            for (call_id, request_id), (action, ts) in self._requested.items()
            if (call_id, request_id) not in self._answered
        ]
        return sorted(found, key=lambda w: w.requested_at)


def _chunks_query() -> Any:
    c, e = t.calls.c, t.event_chunks.c
    joined = t.event_chunks.join(t.calls, sa.and_(c.account == e.account, c.call_id == e.call_id))
    return (
        sa.select(e.call_id, e.events)
        .select_from(joined)
        .where(c.account == sa.bindparam("account"), c.status == "live", e.events.contains(_CONTROL_MARK, autoescape=True))
    )


_QUERY: Final = _chunks_query()


async def waiting_requests(conn: AsyncConnection, accounts: Iterable[str]) -> list[WaitingRequest]:
    """The requests of the accounts' live calls that wait for a result, per account oldest first."""
    found: list[WaitingRequest] = []
    for account in accounts:
        requests = WaitingRequests(account)
        result = await conn.stream(_QUERY, {"account": account})
        async for partition in result.partitions(_CHUNKS_AT_ONCE):
            for row in partition:
                requests.feed(row.call_id, row.events)
        found += requests.waiting()
    return found
