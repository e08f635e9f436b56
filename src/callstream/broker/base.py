"""The broker interface: per-call sequencing, the replay log, and fan-out to every node.

Per-call order is decided here and nowhere else. `publish` assigns `seq` and `ts`, appends to
the call's replay log and hands the events to every node's `deliver` callback (its own
included) in `seq` order. Implementations: `memory` (one process) and `redis` (several nodes).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from callstream.events import Event, NewEvent

Deliver = Callable[[Sequence[Event]], None]  # a batch, in per-call seq order


@dataclass(slots=True)
class CallState:
    """Where a call stands: `pending` (no event yet), `live` or `ended`; `last_seq` 0 if none."""

    status: str
    last_seq: int
    started_at: int | None = None


CallLoader = Callable[[str, str], Awaitable[CallState | None]]


class CallEndedError(Exception):
    """An event was published after its call's `call.ended`; nothing of the batch was applied."""

    def __init__(self, call_id: str, index: int) -> None:
        super().__init__(f"event {index}: call {call_id} has ended; no events are accepted after call.ended")
        self.call_id = call_id
        self.index = index


class BrokerUnavailableError(Exception):
    """The broker's backing service cannot be reached; the caller should answer 503 / 1013."""


@dataclass(slots=True)
class HeldHistory:
    """Events the broker's log holds after `since`; the log is complete from `first_seq` on."""

    events: list[Event]
    first_seq: int


class Broker(abc.ABC):
    """Sequencer + replay log + cross-node fan-out. One per node."""

    #: Called after the broker lost and regained its link to the backing service: events
    #: published meanwhile never reached this node, so the node makes its subscribers resume.
    on_reconnect: Callable[[], Awaitable[None]] | None = None

    @abc.abstractmethod
    async def start(self, deliver: Deliver, load_call: CallLoader) -> None:
        """Begin delivering events to `deliver`; `load_call` seeds calls the log does not know."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, account: str, events: Sequence[NewEvent]) -> list[Event]:
        """Sequence a batch atomically (all or nothing); raises CallEndedError, BrokerUnavailableError."""

    @abc.abstractmethod
    async def state(self, account: str, call_id: str) -> CallState: ...

    @abc.abstractmethod
    async def history(self, account: str, call_id: str, since: int) -> HeldHistory:
        """Events of the call with seq > since that the log holds (superseded partials left out)."""

    @property
    def fans_out_on_publish(self) -> bool:
        """False when the runtime must call `deliver_stored` once the store committed the events."""
        return True

    def deliver_stored(self, events: Sequence[Event]) -> None:  # noqa: B027 - optional hook
        """The store committed these events (in seq order); a broker that waits for that fans out now."""

    async def watch(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """This node has a subscriber for the call (or '*' for the account); returns once live."""

    async def unwatch(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """The node's last subscriber for the call (or '*') left."""

    @property
    def healthy(self) -> bool:
        return True
