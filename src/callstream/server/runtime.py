"""Everything one node runs, wired together: store, broker, hub, auth, and the publish path.

The route of an event. REST, the ingest socket (and therefore `Publisher`) all call
`Runtime.publish`, the one place that orders the steps:

1. validate: the producer's frame was parsed and checked at the edge (`protocol.parse_event`,
   `events.check_payload`); here a call the store refused takes no more events;
2. enrich: personal data redacted (`pii.redact_event`, when `--redact` names kinds: the original
   text goes no further), then sentiment on finals (pure functions, before anything is sequenced);
3. sequence: `Broker.publish` answers an event whose `id` its call holds with the seq it got
   the first time (a repeat: nothing more of it is done, `broker.ids`), gives each other event
   its seq and ts, measures the call's turns at that ts (`turns.TurnTracker`, which writes
   `latency_ms` and `interrupted` into the events: where seq and ts are assigned, so every node
   and every replay carries the same figures) and keeps it in the replay log, once the calls'
   earlier events that a commit failed to store are stored (`HistoryRepair`: from the broker's
   log, when the store is back);
4. append: `SqlStore.append` queues it for the next commit and returns a future, durable when
   it resolves; the store knows nothing of what follows (it tells `HistoryRepair` which events
   each commit stored or failed to store);
5. fan out: on the embedded broker once the append is durable, in the store's writer task
   right after the commit (`_stored` gathers every append one commit settled, and the store's
   `on_settled` hands them to `Broker.deliver_stored` in one call: no loop iteration between the
   commit and the fan-out, so a loop busy with audio frames does not hold events back once per
   step); on Redis as the broker delivers them to every node. The hub then writes each
   subscriber's socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from callstream import metrics
from callstream.audio import AudioFormat, AudioFrame
from callstream.auth import Authenticator, TokenSigner, new_signing_secret
from callstream.broker import (
    Broker,
    BrokerUnavailableError,
    ControlResultError,
    HeldHistory,
    PendingControlsError,
    Quotas,
    create_broker,
)
from callstream.broker.base import RepairNeededError
from callstream.control import RESULT, result_data, settles_at_end
from callstream.events import ENDED, FINAL, MAX_INT64, Event, NewEvent
from callstream.hub import Hub
from callstream.outages import OutageLog
from callstream.pii import Redactor, redact_event
from callstream.server.audio_desk import AudioDesk
from callstream.server.control_desk import ControlDesk
from callstream.server.erasure import Erasure
from callstream.server.recordings import Recordings
from callstream.server.repair import HistoryRepair
from callstream.server.retention import RetentionSweep
from callstream.server.tasks import TaskSet
from callstream.settings import Settings
from callstream.store import CallFailedError, SqlStore, StoreUnavailableError, database_url

log = logging.getLogger("callstream")

REPLAY_PAGE = 1_000  # stored events a `since` replay reads at a time
_SETTLE_ATTEMPTS = 10  # tries at ending a call while its producer answers control requests
_TASKS_GRACE_S = 2.0  # how long `stop` lets short tasks (closes, unwatches) finish before cancelling


class Closable(Protocol):
    """A live socket the runtime may end: on revocation, on shutdown."""

    key_id: str

    async def terminate(self, code: int, error_code: str | None, message: str) -> None: ...


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = SqlStore(
            database_url(settings.database, settings.data_dir), ids_after_end_s=settings.history_ttl_s
        )
        quotas = Quotas(settings.quota_live_calls, settings.quota_events_per_call, settings.quota_sockets)
        self.broker: Broker = create_broker(
            settings.broker,
            history_ttl_s=settings.history_ttl_s,
            quotas=quotas,
            control_timeout_s=settings.control_timeout_s,
        )
        self.hub = Hub()
        self.history = HistoryRepair(self.store, self.broker, self._repaired)
        self.control = ControlDesk(self)
        self.recordings = Recordings(
            Path(settings.recordings_dir or Path(settings.data_dir) / "recordings"), enabled=settings.record
        )
        self.erasure = Erasure(self.store, self.broker, self.recordings)
        self._stored_events: list[Event] = []  # durable, to fan out once the commit's appends settled
        self.store.on_settled = self._deliver_stored
        # What writes the sockets a fan-out queued frames for, at its end rather than a loop
        # iteration later (the events sockets' flusher: `events_socket._Flusher`).
        self.after_fan_out: list[Callable[[], None]] = []
        self.connections: set[Closable] = set()
        self.signer: TokenSigner | None = None
        self.auth: Authenticator | None = None
        self.draining = False
        self._workers = TaskSet()  # run for the node's life: cancelled by `stop`
        self.tasks = TaskSet()  # short ones (a socket's close, an unwatch): given a moment by `stop`
        self.audio = AudioDesk(self.broker, self.tasks.start)  # live audio's listeners (never stored)
        self._sentiment_enabled = settings.sentiment
        self._redactor = Redactor(settings.redact, settings.redact_region) if settings.redact else None
        # Background workers (the webhook deliverer) that run for the node's life.
        self.start_hooks: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = []

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        secret = self.settings.secret or await self.store.meta_value("jwt_secret", new_signing_secret)
        self.signer = TokenSigner(
            secret,
            default_ttl_s=self.settings.token_ttl_s,
            max_ttl_s=self.settings.token_max_ttl_s,
        )
        self.auth = Authenticator(self.store, self.signer, outage_grace_s=self.settings.key_outage_grace_s)
        await self.broker.start(self._deliver, self.store.call_state)
        if self.broker.forgets_controls:  # before any socket: each request keeps its one result
            await self.broker.resume_controls(await self.store.waiting_controls())
        self.broker.on_reconnect = self._resync_subscribers
        self.broker.on_erased = self._erased
        self.broker.on_audio = self.audio.relayed
        self._workers.start(self._watch_revocations(), name="revocations")
        self._workers.start(self.history.run_forever(), name="history-repair")
        self._workers.start(self.control.time_out_forever(), name="control-timeouts")
        if self.settings.retention_days:
            sweep = RetentionSweep(
                self.store, self.erasure, self.settings.retention_days, every_s=self.settings.retention_sweep_s
            )
            self._workers.start(sweep.run_forever(), name="retention")
        if self.settings.record:
            self._workers.start(self.recordings.run_forever(), name="recordings")
        for start_hook in self.start_hooks:
            self._workers.start(start_hook(self), name="start-hook")

    async def stop(self) -> None:
        await self.drain()
        await self.tasks.stop(grace_s=_TASKS_GRACE_S)
        await self._workers.stop()
        await self.store.flush()  # so the broker hears of the last commits
        await self.history.close()
        await self.broker.close()
        await self.recordings.close()
        await self.store.close()

    async def drain(self, code: int = 1001) -> None:
        """Close every socket with 1001 so clients reconnect (to another node) and resume."""
        self.draining = True
        conns = list(self.connections)
        await asyncio.gather(
            *(c.terminate(code, None, "server going away") for c in conns), return_exceptions=True
        )

    @property
    def healthy(self) -> bool:
        return self.broker.healthy and self.store.healthy

    # ---- publish and replay --------------------------------------------------------------

    async def publish(
        self, account: str, events: Sequence[NewEvent], holder: str | None = None
    ) -> tuple[list[Event], asyncio.Future[None]]:
        """Sequence, store and fan out `events`; returns them sequenced (one per given event, in
        order) and the future of their commit. `holder`: the producer socket they came from,
        which holds their calls from now on (live control)."""
        if self.store.failed_calls:
            self._refuse_failed_calls(account, events)
        if self._redactor is not None:
            for event in events:
                redact_event(self._redactor, event.type, event.data)
        if self._sentiment_enabled:
            self._enrich(events)
        if self.history.broken:
            await self.history.repair_first(account, events)
        sequenced, added = await self._sequence(account, events, holder)
        # Repeats (an id the call holds: `broker.ids`) answer their first seq; nothing else of
        # them is stored or sent. Their future is the next commit's, which every earlier append
        # of this node is part of (or before).
        fresh = [e for e in sequenced if not e.repeat] if any(e.repeat for e in sequenced) else sequenced
        metrics.count_sequenced(fresh)
        for accepted in fresh:
            if accepted.type == ENDED:
                self.audio.ended(account, accepted.call_id)  # its listens are over, on every node
                self.recordings.end(account, accepted.call_id)  # closed before the webhook is built
        stored = None if self.broker.fans_out_on_publish else functools.partial(self._stored, fresh)
        durable = self.store.append(fresh, then=stored)
        if added:
            sequenced = [e for i, e in enumerate(sequenced) if i not in added]
        return sequenced, durable

    async def _sequence(
        self, account: str, events: Sequence[NewEvent], holder: str | None
    ) -> tuple[list[Event], set[int]]:
        """`Broker.publish`, with the control requests a `call.ended` leaves unanswered settled in
        the same batch, just before it: each request gets exactly one result, and a call's
        history never ends with one open. Returns the positions of the results added."""
        batch, added = list(events), set[int]()
        for _ in range(_SETTLE_ATTEMPTS):
            try:
                return await self._publish_repairing(account, batch, holder), {i for i, e in enumerate(batch) if id(e) in added}
            except PendingControlsError as exc:
                status = batch[exc.index].data.get("status")
                results = [
                    NewEvent(exc.call_id, RESULT, result_data(request_id, *settles_at_end(action, status)))
                    for request_id, action in exc.pending.items()
                ]
                added.update(map(id, results))
                batch[exc.index : exc.index] = results
            except ControlResultError as exc:
                if id(batch[exc.index]) not in added:
                    raise
                del batch[exc.index]  # its producer answered meanwhile: that answer stands
        raise BrokerUnavailableError("the call's control requests kept changing while it ended; try again")

    async def _publish_repairing(self, account: str, events: list[NewEvent], holder: str | None) -> list[Event]:
        """`Broker.publish`; a call whose earlier events a node failed to store is repaired first."""
        try:
            return await self.broker.publish(account, events, holder)
        except RepairNeededError as exc:
            return await self.history.sequence_after(exc, events, holder)

    def _stored(self, events: list[Event], durable: asyncio.Future[None]) -> None:
        """An append settled: what it stored fans out. The appends one commit settles call this
        one after the other in the store's writer, then `_deliver_stored` fans them out together,
        in append order (a subscriber's events of several producers' frames leave in one write)."""
        if durable.cancelled():
            return
        error = durable.exception()
        if error is not None:
            if not isinstance(error, CallFailedError):
                return  # nothing of it was stored: no subscriber may see it
            for account, call_id in error.calls:
                self.broker.forget_history(account, call_id)  # replay then asks the store
            events = [e for e in events if (e.account, e.call_id) not in error.calls]
        self._stored_events.extend(events)

    def _repaired(self, events: list[Event]) -> None:
        """A repair stored these (in seq order): the embedded broker fans them out now (on Redis
        they went out when they were sequenced)."""
        if not self.broker.fans_out_on_publish:
            self._deliver_logging(events, "delivery after a repair failed")

    def _deliver_stored(self) -> None:
        events, self._stored_events = self._stored_events, []
        if events:
            self._deliver_logging(events, "delivery after commit failed")

    def _deliver_logging(self, events: list[Event], failure: str) -> None:
        """Fan out stored events; a fan-out bug is logged, so it neither leaves later commits
        undelivered nor fails the publish or the repair that stored them."""
        try:
            self.broker.deliver_stored(events)
        except Exception:
            log.exception(failure)

    def _refuse_failed_calls(self, account: str, events: Sequence[NewEvent]) -> None:
        """A call whose rows the store refused takes no more events: its history would have a hole."""
        for event in events:
            if self.store.call_failed(account, event.call_id):
                message = f"call {event.call_id} failed: the store refused its events; start a new call"
                raise CallFailedError(message, frozenset([(account, event.call_id)]))

    @staticmethod
    def _enrich(events: Sequence[NewEvent]) -> None:
        from callstream.sentiment import score_text

        for event in events:
            if event.type == FINAL and "sentiment" not in event.data:
                event.data["sentiment"] = score_text(str(event.data.get("text", "")))

    # ---- live audio (docs/protocol.md, Live audio) ---------------------------------------------

    def audio_format(self, account: str, call_id: str, fmt: AudioFormat) -> None:
        """A producer declared (or changed) a call's audio format: every format accepted on this
        node comes through here. Never waits."""
        self.audio.format(account, call_id, fmt)

    def audio_frame(self, account: str, call_id: str, fmt: AudioFormat, frame: AudioFrame) -> None:
        """An audio frame accepted from a producer (parsed, checked against `fmt`, within the
        limits): every accepted frame comes through here, once. Relayed live to the call's
        listeners, never stored in the replay log, and into its recording (`--record`); never
        waits, so events are never delayed."""
        self.audio.frame(account, call_id, fmt, frame)
        self.recordings.frame(account, call_id, fmt, frame)

    async def replay(self, account: str, call_id: str, since: int) -> AsyncGenerator[list[Event], None]:
        """Every held event with seq > since, in pages in seq order: the part older than the broker's
        log from the store, `REPLAY_PAGE` events at a time (a long call is never read whole into
        memory), then what the log holds. A call the store refused is replayed from the store
        alone: the log may hold events the store never took."""
        held = await self.broker.history(account, call_id, since)
        if self.store.call_failed(account, call_id):
            self.broker.forget_history(account, call_id)
            held = HeldHistory([], MAX_INT64)
        until = held.first_seq - 1
        while since < until:
            stored, more = await self.store.events_page(account, call_id, since, REPLAY_PAGE, until)
            if not stored:
                break
            since = stored[-1].seq
            page = [Event(account, call_id, s.seq, s.ts, s.type, s.data, id=s.id) for s in stored]
            del stored
            yield page
            del page  # before the next page is read: one page in memory at a time
            if not more:
                break
        if held.events:
            yield held.events

    def _deliver(self, events: Sequence[Event]) -> None:
        written = self.hub.deliver(events)
        if written:
            metrics.EVENTS_DELIVERED.inc(written)  # the rest is counted as its socket is written
        for event in events:
            if event.type != ENDED:
                continue
            self.recordings.end(event.account, event.call_id)  # one a producer on this node recorded
            if over := self.hub.end_call(event.account, event.call_id):
                self.tasks.start(self._unwatch(event.account, event.call_id, len(over)))
        for flush in self.after_fan_out:
            flush()

    async def _unwatch(self, account: str, call_id: str, times: int) -> None:
        """Balance the broker's watches of subscriptions the hub ended (one per subscription)."""
        for _ in range(times):
            await self.broker.unwatch(account, call_id)

    def _erased(self, account: str, call_ids: Sequence[str]) -> None:
        """Calls were erased (by any node): this node keeps nothing of them either."""
        self.store.forget_calls(account, call_ids)
        self.history.forget(account, call_ids)
        self.recordings.forget(account, list(call_ids))

    async def _resync_subscribers(self) -> None:
        """The broker's pub/sub link was down for a while: frames published meanwhile never
        reached this node. Its subscribers reconnect and resume with `since` (1013: try again)."""
        doomed = [c for c in self.connections if getattr(c, "subs", None)]
        await asyncio.gather(
            *(c.terminate(1013, None, "broker reconnected; resume with since") for c in doomed),
            return_exceptions=True,
        )

    # ---- revocation ----------------------------------------------------------------------

    async def _watch_revocations(self) -> None:
        """Poll the store for revoked keys and end their sockets (every node does this).

        While the store is down the poll logs once (`OutageLog`) and catches up, from where it
        last succeeded, once the store is back."""
        since = int(time.time() * 1000) - 1000
        outage = OutageLog(log, "the revocation poll")
        while True:
            await asyncio.sleep(self.settings.revocation_poll_s)
            now = int(time.time() * 1000)
            try:
                revoked = set(await self.store.revoked_since(since - 1000))
            except StoreUnavailableError as exc:  # /healthz says so; try again next tick
                outage.failed(exc)
                continue
            outage.recovered()
            since = now
            if revoked:
                await self.end_keys(revoked)

    async def end_keys(self, revoked: set[str]) -> None:
        """Keys were revoked: forget them and end this node's connections that use them (or a
        token they minted). Every node does this from the poll; the node that revoked at once."""
        assert self.auth is not None
        self.auth.forget(revoked)
        doomed = [c for c in self.connections if c.key_id in revoked]
        for conn in doomed:
            await conn.terminate(4001, "unauthorized", "the API key was revoked")
