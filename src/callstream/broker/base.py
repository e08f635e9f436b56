"""The broker interface: per-call sequencing, the replay log, and fan-out to every node.

Per-call order is decided here and nowhere else. `publish` assigns `seq` and `ts`, appends to
the call's replay log and hands the events to every node's `deliver` callback (its own
included) in `seq` order. Implementations: `memory` (one process) and `redis` (several nodes).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

from callstream.control import WaitingRequest
from callstream.errors import UnavailableError
from callstream.events import CallState, Event, NewEvent
from callstream.metadata import Metadata, MetadataError, merge

Deliver = Callable[[Sequence[Event]], None]  # a batch, in per-call seq order
Relayed = Callable[[str, bytes], None]  # a control request for a producer socket of this node: (its id, frame)
Erased = Callable[[str, Sequence[str]], None]  # calls erased: (account, their ids)
AudioHeard = Callable[[str, str, bytes], None]  # a node's audio message on a call's channel: (account, call_id, it)

#: A live call idle this long is forgotten by the broker (and stops counting as live); the store
#: still has it, and its next event brings it back.
LIVE_TTL_S = 7 * 86_400


CallLoader = Callable[[str, str], Awaitable[CallState | None]]


class CallEndedError(Exception):
    """An event was published after its call's `call.ended`; nothing of the batch was applied."""

    def __init__(self, call_id: str, index: int) -> None:
        super().__init__(f"event {index}: call {call_id} has ended; no events are accepted after call.ended")
        self.call_id = call_id
        self.index = index


# A live call or a socket frees when a call ends or a socket closes: a modest fixed hint.
QUOTA_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-account quotas the broker enforces where it sequences (0: unlimited).

    `live_calls`: calls of the account that are live at once (counted from their first event to
    `call.ended`, or until they stayed idle for the live TTL). `events_per_call`: a call's last
    `seq`, partials included (a `call.ended` past it is still accepted, so a call at its quota
    can end). `sockets`: open /v1/events + /v1/ingest sockets of the account. The `…_exceeded`
    methods build the error that refuses what would pass one of them.
    """

    live_calls: int = 0
    events_per_call: int = 0
    sockets: int = 0

    def live_calls_exceeded(self, call_id: str, index: int) -> QuotaExceededError:
        reason = (
            f"call {call_id} would pass the account's quota of {self.live_calls} live calls; end one first"
        )
        return QuotaExceededError(
            "live_calls", reason, call_id=call_id, index=index, retry_after_s=QUOTA_RETRY_S
        )

    def events_exceeded(self, call_id: str, index: int) -> QuotaExceededError:
        reason = f"call {call_id} would pass the quota of {self.events_per_call} events per call"
        return QuotaExceededError("events_per_call", reason, call_id=call_id, index=index)

    def sockets_exceeded(self) -> QuotaExceededError:
        reason = f"the account has its quota of {self.sockets} open sockets; close one first"
        return QuotaExceededError("sockets", reason, retry_after_s=QUOTA_RETRY_S)


class QuotaExceededError(Exception):
    """A publish or a socket would pass one of the account's `Quotas`; nothing was applied.

    `quota` names it (`live_calls`, `events_per_call`, `sockets`); `reason` says why in a
    sentence; `index` is the batch's first event past it (None for sockets); `retry_after_s` is
    None when waiting cannot help (a call's events only grow).
    """

    def __init__(
        self,
        quota: str,
        reason: str,
        *,
        call_id: str | None = None,
        index: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.message = reason if index is None else f"event {index}: {reason}"
        super().__init__(self.message)
        self.quota = quota
        self.reason = reason
        self.call_id = call_id
        self.index = index
        self.retry_after_s = retry_after_s


class ControlResultError(Exception):
    """A `control.result` for a request that waits for none: unknown, or answered already (by
    its producer, by the server's timeout, or by the call's end). Nothing of the batch applied."""

    def __init__(self, call_id: str, index: int, request_id: str) -> None:
        super().__init__(
            f"event {index}: call {call_id} has no control request {request_id} waiting for a result"
            " (unknown, answered already, or timed out)"
        )
        self.call_id = call_id
        self.index = index
        self.request_id = request_id


class PendingControlsError(Exception):
    """A `call.ended` would end a call while control requests wait for their result; the
    runtime settles them (`control.settles_at_end`) in the same batch and publishes it again.
    `pending` maps each waiting request_id to its action."""

    def __init__(self, call_id: str, index: int, pending: dict[str, str]) -> None:
        super().__init__(f"event {index}: call {call_id} ends with {len(pending)} control request(s) unanswered")
        self.call_id = call_id
        self.index = index
        self.pending = pending


class MetadataRefusedError(Exception):
    """An event's `data.metadata` would take its call's metadata past a limit (`metadata.merge`);
    nothing of the batch was applied."""

    def __init__(self, call_id: str, index: int, reason: str) -> None:
        super().__init__(f"event {index}: {reason}")
        self.call_id = call_id
        self.index = index
        self.reason = reason


def merged_metadata(
    events: Sequence[NewEvent], current: dict[str, Metadata | None], repeats: Collection[int] = ()
) -> list[Metadata | None]:
    """Each event's call metadata once it is applied, from `current` (call id → what the call
    holds): the patches (`data.metadata`) merged in order; None for the `repeats` (positions of
    events already applied, idempotent publish), which change nothing. Raises
    MetadataRefusedError, before the broker applies anything, when a merge would pass a limit;
    `current` is left as it was."""
    held = dict(current)
    out: list[Metadata | None] = []
    for index, new in enumerate(events):
        if index in repeats:
            out.append(None)
            continue
        if "metadata" in new.data:
            try:
                held[new.call_id] = merge(held[new.call_id], new.data["metadata"])
            except MetadataError as exc:
                raise MetadataRefusedError(new.call_id, index, str(exc)) from None
        out.append(held[new.call_id])
    return out


class BrokerUnavailableError(UnavailableError):
    """The broker's backing service cannot be reached; the caller should answer 503 / 1013."""


class RepairNeededError(Exception):
    """The store may lack events of this call that the broker sequenced: they are to be stored
    (`Broker.repairing`) before anything more of the call is sequenced. Nothing was applied."""

    def __init__(self, account: str, call_id: str) -> None:
        super().__init__(f"call {call_id}: events sequenced before are not stored yet")
        self.account = account
        self.call_id = call_id


class RepairBusyError(BrokerUnavailableError):
    """Another node is storing this call's unstored events right now; retry in a moment."""


#: An event the store has not confirmed after this long is taken for lost by the node that
#: sequenced it (the node died, or its commit failed unseen): any node may then store it.
UNSTORED_AFTER_S = 30.0


@dataclass(slots=True)
class Unstored:
    """A call's events the store may lack (a repair's work): `seqs` whose commit failed or was
    not confirmed in time, in order; `events` those of them the replay log still holds, in seq
    order."""

    seqs: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


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
    #: Called with the control requests relayed to this node's producer sockets (`relay`).
    on_relay: Relayed | None = None
    #: Called on every node, this one included, once calls were erased (`erase`): the node drops
    #: whatever it still keeps of them.
    on_erased: Erased | None = None
    #: Called with each audio message another node published on a call this node listens to
    #: (`listen_audio`); live only, nothing of it is kept.
    on_audio: AudioHeard | None = None
    _deliver: Deliver | None = None
    _load_call: CallLoader | None = None

    async def start(self, deliver: Deliver, load_call: CallLoader) -> None:
        """Begin delivering events to `deliver`; `load_call` seeds calls the log does not know."""
        self._deliver = deliver
        self._load_call = load_call
        await self._open()

    @abc.abstractmethod
    async def _open(self) -> None:
        """Start what the implementation runs (connections, tasks); `start` has set the callbacks."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, account: str, events: Sequence[NewEvent], holder: str | None = None) -> list[Event]:
        """Sequence a batch atomically (all or nothing); one event returned per event given.

        An event whose `id` its call holds (or an earlier event of the batch has) is a repeat
        (`broker.ids`): it is not applied, and comes back with `repeat` set and the seq that id
        got. A call remembers its ids for as long as the broker holds the call: while it is live
        (up to the live TTL idle) and the history TTL after it ended; a call loaded again from the
        store comes with the ids of its stored events (`CallState.ids`).

        Control requests are kept with their call here, in the same step: a `control.requested`
        makes its request wait for a result (timed out after the broker's control timeout), a
        `control.result` takes the one result of a waiting request. `holder` (an encoded
        `control.Holder`), when given, becomes the producer socket holding the batch's calls.

        Raises CallEndedError, QuotaExceededError (the batch would pass `Quotas.events_per_call`
        or `Quotas.live_calls`), ControlResultError, PendingControlsError, BrokerUnavailableError.
        """

    @abc.abstractmethod
    async def state(self, account: str, call_id: str) -> CallState: ...

    @abc.abstractmethod
    async def history(self, account: str, call_id: str, since: int) -> HeldHistory:
        """Events of the call with seq > since that the log holds (superseded partials left out)."""

    @abc.abstractmethod
    async def acquire_socket(self, account: str) -> None:
        """Count one more open socket of the account; raises QuotaExceededError past the quota."""

    @abc.abstractmethod
    async def release_socket(self, account: str) -> None:
        """A socket `acquire_socket` counted has closed."""

    # ---- live control (docs/protocol.md, Live control) ----------------------------------

    @property
    @abc.abstractmethod
    def node_id(self) -> str:
        """This node's name among the nodes sharing the broker (its producer sockets' holders name it)."""

    @abc.abstractmethod
    async def holder(self, account: str, call_id: str) -> str | None:
        """The encoded `control.Holder` of the call, or None: nobody published on a socket that is
        still open, on a node that is still alive."""

    async def control_target(self, account: str, call_id: str) -> tuple[str, str | None]:
        """What a control request is checked against, read together: the call's status
        (`CallState.status`) and, while it is live, its `holder` (else None). A broker that
        keeps them elsewhere reads both in one round trip."""
        status = (await self.state(account, call_id)).status
        return status, await self.holder(account, call_id) if status == "live" else None

    @abc.abstractmethod
    async def release(self, account: str, call_ids: Collection[str], holder: str) -> None:
        """A producer socket closed: it stops holding those of `call_ids` it still holds."""

    @abc.abstractmethod
    async def relay(self, holder: str, frame: bytes) -> None:
        """Hand a control request to the holder's socket, on whichever node (`on_relay` there)."""

    @abc.abstractmethod
    async def due_controls(self) -> list[tuple[str, str, str]]:
        """(account, call_id, request_id) of requests still waiting past their deadline; the
        caller publishes their timeout result (whichever node's publish comes first wins)."""

    @property
    def forgets_controls(self) -> bool:
        """True when the requests waiting for a result live in this process alone (the embedded
        broker): the node that restarts gives them back (`resume_controls`) from the store. On
        Redis they outlive the node, deadlines included, and any node times them out."""
        return False

    async def resume_controls(self, waiting: Sequence[WaitingRequest]) -> None:  # noqa: B027 - optional hook
        """Requests the store's history shows waiting (a restart forgot them): they wait again,
        each until its deadline (its `control.requested`'s ts plus the control timeout), and
        are timed out at once when that has passed."""

    @property
    def fans_out_on_publish(self) -> bool:
        """False when the runtime must call `deliver_stored` once the store committed the events."""
        return True

    def deliver_stored(self, events: Sequence[Event]) -> None:  # noqa: B027 - optional hook
        """The store committed these events (in seq order); a broker that waits for that fans out now."""

    # ---- unstored events (server/repair.py) -------------------------------------------------

    @property
    def tracks_unstored(self) -> bool:
        """True when `publish` records what it sequenced as unstored until `stored` is called."""
        return False

    async def stored(self, events: Sequence[Event]) -> None:  # noqa: B027 - optional hook
        """The store committed these events: they no longer need a repair."""

    @abc.abstractmethod
    async def mark_unstored(self, events: Sequence[Event]) -> None:
        """The store failed to commit these events: their calls need a repair before `publish`
        sequences more of them (it raises RepairNeededError until `repaired`), on every node.
        Events a commit already confirmed (`stored`) stay confirmed."""

    @abc.abstractmethod
    def repairing(self, account: str, call_id: str) -> contextlib.AbstractAsyncContextManager[Unstored]:
        """Claim the call's repair (RepairBusyError when another node holds it) for the block,
        which receives the call's `Unstored` events."""

    @abc.abstractmethod
    async def repaired(self, account: str, call_id: str, work: Unstored) -> None:
        """The store holds `work` now (or never will): forget it."""

    @abc.abstractmethod
    async def overdue(self) -> list[tuple[str, str]]:
        """(account, call_id) of calls whose unstored events wait for a repair: failed, or
        unconfirmed for `UNSTORED_AFTER_S` (their node may be dead)."""

    # ---- erasure (docs/privacy.md) -----------------------------------------------------------

    @abc.abstractmethod
    async def unsettled(self, account: str, call_ids: Sequence[str]) -> set[str]:
        """Those of `call_ids` with events no commit has confirmed yet (`stored`): erased now, a
        commit still under way could bring some of their rows back."""

    @abc.abstractmethod
    async def erase(self, account: str, call_ids: Sequence[str]) -> None:
        """The store erased these calls: forget them too (their sequencing state, replay log,
        control requests and every set that counts them), on every node, and tell each node's
        `on_erased`. A call id published again then starts a new call at seq 1."""

    def forget_history(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """The store refused some of this call's events: the replay log must not serve what it
        never stored, so `since` is answered from the store from now on."""

    async def watch(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """This node has a subscriber for the call (or '*' for the account); returns once live."""

    async def unwatch(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """The node's last subscriber for the call (or '*') left."""

    # ---- live audio (docs/protocol.md, Live audio; server/audio_desk.py) -------------------

    @property
    def relays_audio(self) -> bool:
        """True when audio must cross nodes (`publish_audio`); one process hears its own directly."""
        return False

    def publish_audio(  # noqa: B027 - optional hook
        self, account: str, call_id: str, message: bytes, *, always: bool = False
    ) -> None:
        """Hand an audio message to the nodes listening to the call; never waits, may drop
        (audio is live only: late is lost) unless `always` (a call's end)."""

    async def listen_audio(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """This node has a listener of the call: hear what other nodes publish (`on_audio`)."""

    async def unlisten_audio(self, account: str, call_id: str) -> None:  # noqa: B027 - optional hook
        """This node's last listener of the call left."""

    @property
    def healthy(self) -> bool:
        return True
