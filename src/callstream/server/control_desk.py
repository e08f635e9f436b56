"""Live control on one node (docs/protocol.md, Live control): a supervisor's request checked,
written into the call's history, relayed to the producer socket holding the call, and answered
by the server itself when the producer does not answer in time.

The socket (`control` on /v1/events) and REST (`POST /v1/calls/{id}/control`) both come here,
so both make the same checks in the same order and give the same answers. What is shared
between nodes (who holds a call, which requests wait for a result, the relay) is the broker's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from callstream import protocol as p
from callstream.auth import Principal
from callstream.broker import (
    BrokerUnavailableError,
    CallEndedError,
    ControlResultError,
    QuotaExceededError,
)
from callstream.control import (
    REQUESTED,
    RESULT,
    TIMEOUT_ERROR,
    ControlRequest,
    Holder,
    new_request_id,
    relay_frame,
    result_data,
)
from callstream.events import NewEvent
from callstream.store import CallFailedError

if TYPE_CHECKING:
    from callstream.server.runtime import Runtime

log = logging.getLogger("callstream.control")

def _log_unstored(durable: asyncio.Future[None]) -> None:
    if not durable.cancelled() and (error := durable.exception()) is not None:
        log.warning("a control.requested was relayed but its commit failed (%s); it is stored from the broker's log", error)


# HTTP status of each refusal on REST (the socket answers an `error` with the same code).
STATUS = {
    p.ErrorCode.FORBIDDEN: 403,
    p.ErrorCode.CALL_NOT_LIVE: 409,
    p.ErrorCode.NO_PRODUCER: 409,
    p.ErrorCode.UNSUPPORTED_ACTION: 409,
    p.ErrorCode.INVALID_MESSAGE: 422,
    p.ErrorCode.QUOTA_EXCEEDED: 429,
    p.ErrorCode.INTERNAL: 503,
}


class ControlRefusedError(Exception):
    """A request refused with one of the contract's codes; nothing was written nor relayed."""

    def __init__(self, code: p.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS[code]


class ProducerSocket(Protocol):
    """What the desk needs of an ingest connection: a way to hand it a request."""

    def send_control(self, frame: bytes) -> None:
        """Write the request now if the socket takes it, else queue it (never waits)."""


class ControlDesk:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._producers: dict[str, ProducerSocket] = {}  # this node's producer sockets by id
        runtime.broker.on_relay = self._relayed

    # ---- producers -------------------------------------------------------------------------

    def register(self, conn: ProducerSocket) -> str:
        """A producer socket opened on this node: its id, for the holder it becomes."""
        conn_id = secrets.token_hex(8)
        self._producers[conn_id] = conn
        return conn_id

    def holder(self, conn_id: str, actions: frozenset[str]) -> str:
        return Holder(self.runtime.broker.node_id, conn_id, actions).encode()

    async def producer_gone(self, conn_id: str, account: str, call_ids: set[str], holder: str) -> None:
        """The socket closed: it holds no call any more (`no_producer` until another publishes)."""
        self._producers.pop(conn_id, None)
        if not call_ids:
            return
        try:
            await self.runtime.broker.release(account, call_ids, holder)
        except BrokerUnavailableError:  # its node's liveness ends the holding on the broker
            log.warning("could not release %d held calls; they are released when this node's heartbeat lapses", len(call_ids))

    def _relayed(self, conn_id: str, frame: bytes) -> None:
        conn = self._producers.get(conn_id)
        if conn is not None:  # gone meanwhile: the request times out
            conn.send_control(frame)

    # ---- requests --------------------------------------------------------------------------

    async def request(
        self,
        principal: Principal,
        call_id: str,
        action: str,
        args: object,
        acknowledge: Callable[[str, int], None] | None = None,
    ) -> tuple[str, int]:
        """Check, record, acknowledge, relay (docs/protocol.md, Live control, steps 1 and 2): the
        request_id and the seq of its `control.requested`. `acknowledge(request_id, seq)` runs
        before the relay, so a requester's ack always precedes its result, however fast the
        producer answers. Raises ControlRefusedError, or UnavailableError while the store or the
        broker cannot be reached (nothing was recorded nor relayed)."""
        account, broker = principal.account, self.runtime.broker
        if not principal.may("control") or not principal.may_see(call_id):
            raise ControlRefusedError(p.ErrorCode.FORBIDDEN, "this credential may not control that call")
        # One read (one round trip on Redis); an outage raises UnavailableError: 503 / internal.
        status, encoded = await broker.control_target(account, call_id)
        if status != "live":
            why = "has ended" if status == "ended" else "has not started (or does not exist)"
            raise ControlRefusedError(p.ErrorCode.CALL_NOT_LIVE, f"call {call_id} {why}")
        if encoded is None:
            message = f"no producer socket holds call {call_id}: its producer is not connected (or has not published since it reconnected)"
            raise ControlRefusedError(p.ErrorCode.NO_PRODUCER, message)
        holder = Holder.decode(encoded)
        if action not in holder.actions:
            can = ", ".join(sorted(holder.actions)) or "nothing"
            raise ControlRefusedError(p.ErrorCode.UNSUPPORTED_ACTION, f"the producer of call {call_id} does not do {action} (it declared: {can})")
        try:
            checked = p.control_args(p.Control(call_id, action, args))
        except p.ProtocolError as exc:
            raise ControlRefusedError(p.ErrorCode.INVALID_MESSAGE, exc.message) from None
        request = ControlRequest(call_id, new_request_id(), action, checked)
        seq = await self._record(principal, request)
        if acknowledge is not None:
            acknowledge(request.request_id, seq)
        try:
            await broker.relay(encoded, relay_frame(request))
        except BrokerUnavailableError:  # recorded: it times out like a request its producer dropped
            log.warning("could not relay control request %s; it will time out", request.request_id)
        return request.request_id, seq

    async def _record(self, principal: Principal, request: ControlRequest) -> int:
        """Append `control.requested` (the audit trail): nothing is relayed that the call's
        history does not hold. On the embedded broker that is once it is stored (its subscribers
        see it then too); on Redis once it is sequenced (the broker's log holds it)."""
        by: dict[str, Any] = {"key_id": principal.key_id}
        if name := principal.shown_as:
            by["name"] = name
        data = {"request_id": request.request_id, "action": request.action, "args": request.args, "by": by}
        timeout = self.runtime.settings.store_timeout_s
        try:
            sequenced, durable = await self.runtime.publish(principal.account, [NewEvent(request.call_id, REQUESTED, data)])
            if self.runtime.broker.fans_out_on_publish:
                # Sequenced on Redis, it is in the call's history already: in the broker's log,
                # delivered, and stored from that log should the store fail (protocol.md, Producing).
                durable.add_done_callback(_log_unstored)
            else:
                await asyncio.wait_for(asyncio.shield(durable), timeout)
        except CallEndedError:
            raise ControlRefusedError(p.ErrorCode.CALL_NOT_LIVE, f"call {request.call_id} has ended") from None
        except QuotaExceededError as exc:
            raise ControlRefusedError(p.ErrorCode.QUOTA_EXCEEDED, exc.reason) from None
        except (CallFailedError, TimeoutError) as exc:
            message = f"the request could not be recorded ({exc or 'the store did not confirm in time'}); nothing was sent to the producer"
            raise ControlRefusedError(p.ErrorCode.INTERNAL, message) from None
        return sequenced[0].seq

    # ---- timeouts --------------------------------------------------------------------------

    async def time_out_forever(self) -> None:
        """Answer every request its producer left unanswered past the timeout. Every node runs
        this; the broker lets exactly one result per request through, so the node that gets
        there first answers it and the others' attempts are refused (and ignored)."""
        interval = min(0.25, self.runtime.settings.control_timeout_s / 10)
        while True:
            await asyncio.sleep(interval)
            try:
                due = await self.runtime.broker.due_controls()
            except BrokerUnavailableError:
                continue
            for account, call_id, request_id in due:
                await self._time_out(account, call_id, request_id)

    async def _time_out(self, account: str, call_id: str, request_id: str) -> None:
        event = NewEvent(call_id, RESULT, result_data(request_id, False, TIMEOUT_ERROR))
        try:
            await self.runtime.publish(account, [event])
        except (ControlResultError, CallEndedError):
            pass  # answered meanwhile (its producer, another node, or the call's end)
        except Exception:
            log.warning("could not publish the timeout of control request %s", request_id, exc_info=True)
