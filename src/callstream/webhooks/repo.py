"""Every webhook query, in one place, for SQLite and PostgreSQL alike.

All reads and writes of the API filter by `account`; the worker's queries do not, because the
worker serves every tenant, but it only ever acts on rows it claimed.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callstream.events import Event
from callstream.store import tables as st
from callstream.store.chunks import StoredEvent
from callstream.store.sql import read_events, store_errors
from callstream.webhooks import tables as wt
from callstream.webhooks.config import WebhookConfig
from callstream.webhooks.payloads import EVENT_TYPES, build_payload

__all__ = [
    "Attempt",
    "ClaimedMessage",
    "Endpoint",
    "EndpointLimitError",
    "ReplayError",
    "WebhookRepo",
    "new_secret",
    "now_ms",
]

EP = wt.webhook_endpoints
MSG = wt.webhook_messages
ATT = wt.webhook_attempts

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class EndpointLimitError(Exception):
    """The account already has as many endpoints as the server allows."""


class ReplayError(Exception):
    """The message cannot be sent again (its endpoint is disabled)."""


@dataclass(slots=True)
class Endpoint:
    id: str
    account: str
    url: str
    events: list[str]
    created_at: int
    disabled_at: int | None
    disabled_reason: str | None
    secret: str
    previous_secret: str | None
    previous_secret_until: int | None

    def signing_secrets(self, at_ms: int) -> list[str]:
        """The current secret, plus the previous one while the rotation overlap lasts."""
        keys = [self.secret]
        if self.previous_secret and (self.previous_secret_until or 0) > at_ms:
            keys.append(self.previous_secret)
        return keys

    def to_json(self) -> dict[str, Any]:
        """The public view: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "created_at": self.created_at,
            "disabled": self.disabled_at is not None,
            "disabled_at": self.disabled_at,
            "disabled_reason": self.disabled_reason,
        }


@dataclass(slots=True)
class ClaimedMessage:
    id: str
    account: str
    endpoint_id: str
    event_type: str
    call_id: str
    payload: str
    attempts: int
    give_up_at: int
    lease_owner: str


@dataclass(slots=True)
class Attempt:
    """One try, as recorded: what happened and what comes next. Its fields are columns of
    `webhook_attempts`, stored and shown under their names."""

    attempted_at: int
    status_code: int | None
    latency_ms: int
    error: str | None
    result: str  # succeeded | retry | failed | gone
    next_attempt_at: int | None


#: What the delivery log shows of an attempt: its number, then the fields of `Attempt`.
_ATTEMPT_JSON = ("attempt", *(f.name for f in fields(Attempt)))


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        row.id,
        row.account,
        row.url,
        [e for e in row.events.split(",") if e],
        row.created_at,
        row.disabled_at,
        row.disabled_reason,
        row.secret,
        row.previous_secret,
        row.previous_secret_until,
    )


class WebhookRepo:
    def __init__(self, engine: AsyncEngine, dialect: str, config: WebhookConfig) -> None:
        self.engine = engine
        self.dialect = dialect
        self.config = config

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # ---- endpoints -----------------------------------------------------------------------

    @store_errors
    async def create_endpoint(self, account: str, url: str, events: list[str]) -> tuple[Endpoint, str]:
        """Create an endpoint; its secret is returned here and never listed again."""
        secret = new_secret()
        values = {
            "id": "wh_" + secrets.token_hex(10),
            "account": account,
            "url": url,
            "events": ",".join(events),
            "secret": secret,
            "created_at": now_ms(),
        }
        count = sa.select(sa.func.count()).select_from(EP).where(EP.c.account == account)
        async with self.engine.begin() as conn:
            if (await conn.scalar(count) or 0) >= self.config.max_endpoints:
                raise EndpointLimitError(
                    f"an account may have at most {self.config.max_endpoints} webhook endpoints"
                )
            await conn.execute(EP.insert().values(**values))
            row = (await conn.execute(sa.select(EP).where(EP.c.id == values["id"]))).one()
        return _endpoint(row), secret

    @store_errors
    async def list_endpoints(self, account: str) -> list[Endpoint]:
        query = sa.select(EP).where(EP.c.account == account).order_by(EP.c.created_at, EP.c.id)
        async with self.engine.connect() as conn:
            return [_endpoint(r) for r in await conn.execute(query)]

    @store_errors
    async def get_endpoint(self, account: str | None, endpoint_id: str) -> Endpoint | None:
        """`account=None` only for the worker, which serves every account."""
        query = sa.select(EP).where(EP.c.id == endpoint_id)
        if account is not None:
            query = query.where(EP.c.account == account)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _endpoint(row)

    @store_errors
    async def delete_endpoint(self, account: str, endpoint_id: str) -> bool:
        """Remove the endpoint with its queue and log: nothing more is sent to it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(EP.delete().where(EP.c.account == account, EP.c.id == endpoint_id))
            if not result.rowcount:
                return False
            await conn.execute(ATT.delete().where(ATT.c.endpoint_id == endpoint_id))
            await conn.execute(MSG.delete().where(MSG.c.endpoint_id == endpoint_id))
        return True

    @store_errors
    async def rotate_secret(self, account: str, endpoint_id: str) -> tuple[Endpoint, str] | None:
        """A new secret signs from now on; the old one also signs until the overlap ends."""
        secret = new_secret()
        until = now_ms() + int(self.config.secret_overlap_s * 1000)
        query = (
            EP.update()
            .where(EP.c.account == account, EP.c.id == endpoint_id)
            .values(secret=secret, previous_secret=EP.c.secret, previous_secret_until=until)
        )
        async with self.engine.begin() as conn:
            if not (await conn.execute(query)).rowcount:
                return None
            row = (await conn.execute(sa.select(EP).where(EP.c.id == endpoint_id))).one()
        return _endpoint(row), secret

    # ---- the outbox: written in the store's transaction --------------------------------

    async def enqueue_for_call(
        self, conn: AsyncConnection, event: Event, recording_url: str | None = None
    ) -> int:
        """Queue one message per (endpoint, wanted type) for the call `event` ended
        (`recording_url`: where its recording is served, for `call.ended`).

        Runs inside the transaction that stores `call.ended`, so the call's events are already
        there and the messages commit (or roll back) with them. Returns how many were queued.
        """
        endpoints = (
            await conn.execute(
                sa.select(EP.c.id, EP.c.events).where(
                    EP.c.account == event.account, EP.c.disabled_at.is_(None)
                )
            )
        ).all()
        wanted = [(ep.id, t) for ep in endpoints for t in EVENT_TYPES if t in ep.events.split(",")]
        if not wanted:
            return 0
        call = await self._call_row(conn, event)
        events = await self._call_events(conn, event)
        bodies = {
            t: orjson.dumps(build_payload(t, call, events, event.ts, recording_url)).decode() for t in {t for _, t in wanted}
        }
        at = now_ms()
        rows = [
            {
                "id": "msg_" + secrets.token_hex(12),
                "account": event.account,
                "endpoint_id": endpoint_id,
                "event_type": event_type,
                "call_id": event.call_id,
                "payload": bodies[event_type],
                "status": PENDING,
                "attempts": 0,
                "created_at": at,
                "next_attempt_at": at,
                "give_up_at": self.config.schedule.give_up_at(at),
            }
            for endpoint_id, event_type in wanted
        ]
        insert = self._insert(MSG).on_conflict_do_nothing(
            index_elements=["endpoint_id", "call_id", "event_type"]
        )
        await conn.execute(insert, rows)
        return len(rows)

    @staticmethod
    async def _call_row(conn: AsyncConnection, event: Event) -> dict[str, Any]:
        c = st.calls.c
        row = (
            await conn.execute(
                sa.select(st.calls).where(c.account == event.account, c.call_id == event.call_id)
            )
        ).first()
        if row is None:  # the store upserts calls before its hooks; be safe anyway
            return {"call_id": event.call_id, "ended_at": event.ts}
        return dict(row._mapping)

    @staticmethod
    async def _call_events(conn: AsyncConnection, event: Event) -> list[StoredEvent]:
        return await read_events(conn, event.account, event.call_id)

    # ---- the worker's side ---------------------------------------------------------------

    @store_errors
    async def claim(
        self, limit: int, at_ms: int | None = None, *, busy: Mapping[str, int] | None = None
    ) -> list[ClaimedMessage]:
        """Take up to `limit` due messages under a fresh lease, taking turns across accounts.

        `busy` counts the attempts each account already has in flight on this node: an account
        gets at most `concurrency_per_account` minus that, and the least busy account goes
        first, so one tenant's backlog (or hanging endpoints) never takes every turn.

        PostgreSQL: the SELECT … FOR UPDATE SKIP LOCKED lets several workers claim
        concurrently without waiting on or taking each other's rows (a row another worker
        holds is skipped, not replaced: this claim is smaller, the next one goes on). SQLite:
        writers are serialized, so the UPDATE … RETURNING is atomic on its own. Either way a
        row whose lease ran out (its worker crashed) is due again.
        """
        now = now_ms() if at_ms is None else at_ms
        owner = "lease_" + secrets.token_hex(8)
        due = sa.and_(
            MSG.c.status == PENDING,
            MSG.c.next_attempt_at <= now,
            sa.or_(MSG.c.lease_until.is_(None), MSG.c.lease_until < now),
        )
        async with self.engine.begin() as conn:
            cap = self.config.concurrency_per_account
            heads = (await conn.execute(self._heads(now, min(limit, cap)))).all()
            ids = _take_turns(heads, limit, cap, busy or {})
            if not ids:
                return []
            pick = sa.select(MSG.c.id).where(MSG.c.id.in_(ids))
            if self.dialect == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            rows = (await conn.execute(self._lease(pick, due, owner, now + self.config.lease_ms))).all()
        return [
            ClaimedMessage(
                r.id,
                r.account,
                r.endpoint_id,
                r.event_type,
                r.call_id,
                r.payload,
                r.attempts,
                r.give_up_at,
                owner,
            )
            for r in rows
        ]

    @staticmethod
    def _heads(now: int, depth: int) -> sa.Select[Any]:
        """Each account's `depth` oldest due messages: rows (account, id, due, n = 1, 2, …).

        Two recursive walks down `ix_webhook_messages_turns`, one index probe per step: over
        the accounts with pending messages, then along each account's due messages. The cost
        grows with the number of accounts, not with the backlog (a hanging tenant may have
        100,000 messages due), so claiming stays cheap when it matters most.
        """
        m, y = MSG.alias("m"), MSG.alias("y")
        first = sa.select(sa.func.min(MSG.c.account).label("account")).where(MSG.c.status == PENDING)
        accounts = first.cte("accounts", recursive=True)
        a = accounts.alias("a")
        after = sa.select(sa.func.min(m.c.account)).where(m.c.status == PENDING, m.c.account > a.c.account)
        walked = accounts.union_all(sa.select(after.scalar_subquery()).where(a.c.account.is_not(None))).alias(
            "t"
        )

        def oldest_due(account: Any, *after_key: Any) -> list[Any]:
            """The (id, due) of the account's oldest due message after `after_key`, if any."""
            query = sa.select(y.c.id).where(
                y.c.status == PENDING,
                y.c.account == account,
                y.c.next_attempt_at <= now,
                sa.or_(y.c.lease_until.is_(None), y.c.lease_until < now),
            )
            if after_key:
                query = query.where(sa.tuple_(y.c.next_attempt_at, y.c.id) > sa.tuple_(*after_key))
            query = query.order_by(y.c.next_attempt_at, y.c.id).limit(1)
            return [query.scalar_subquery(), query.with_only_columns(y.c.next_attempt_at).scalar_subquery()]

        id_, due = oldest_due(walked.c.account)
        start = sa.select(walked.c.account, id_.label("id"), due.label("due"), sa.literal(1).label("n"))
        heads = start.where(walked.c.account.is_not(None)).cte("heads", recursive=True)
        h = heads.alias("h")
        step = sa.select(h.c.account, *oldest_due(h.c.account, h.c.due, h.c.id), h.c.n + 1)
        walk = heads.union_all(step.where(h.c.id.is_not(None), h.c.n < depth))
        return sa.select(walk.c.account, walk.c.id, walk.c.due, walk.c.n).where(walk.c.id.is_not(None))

    @staticmethod
    def _lease(pick: sa.Select[Any], due: sa.ColumnElement[bool], owner: str, until: int) -> Any:
        return (
            MSG.update()
            .where(MSG.c.id.in_(pick), due)
            .values(lease_owner=owner, lease_until=until)
            .returning(
                MSG.c.id,
                MSG.c.account,
                MSG.c.endpoint_id,
                MSG.c.event_type,
                MSG.c.call_id,
                MSG.c.payload,
                MSG.c.attempts,
                MSG.c.give_up_at,
            )
        )

    @store_errors
    async def record(self, message: ClaimedMessage, attempt: Attempt) -> bool:
        """Log the attempt and move the message on; False if our lease had been taken over."""
        status = {"succeeded": SUCCEEDED, "retry": PENDING}.get(attempt.result, FAILED)
        finished = None if status == PENDING else attempt.attempted_at
        async with self.engine.begin() as conn:
            await conn.execute(
                ATT.insert().values(
                    account=message.account,
                    message_id=message.id,
                    endpoint_id=message.endpoint_id,
                    attempt=message.attempts + 1,
                    **asdict(attempt),
                )
            )
            updated = await conn.execute(
                MSG.update()
                .where(MSG.c.id == message.id, MSG.c.lease_owner == message.lease_owner)
                .values(
                    status=status,
                    attempts=MSG.c.attempts + 1,
                    next_attempt_at=attempt.next_attempt_at,
                    lease_owner=None,
                    lease_until=None,
                    last_status_code=attempt.status_code,
                    last_error=attempt.error,
                    finished_at=finished,
                )
            )
            if attempt.result == "gone":
                await self._disable(conn, message.endpoint_id, "the endpoint answered 410 Gone")
        return bool(updated.rowcount)

    @store_errors
    async def abandon(self, message: ClaimedMessage, reason: str) -> None:
        """Fail a message without an attempt (its endpoint was disabled or removed)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                MSG.update()
                .where(MSG.c.id == message.id, MSG.c.lease_owner == message.lease_owner)
                .values(
                    status=FAILED,
                    lease_owner=None,
                    lease_until=None,
                    next_attempt_at=None,
                    last_error=reason,
                    finished_at=now_ms(),
                )
            )

    async def _disable(self, conn: AsyncConnection, endpoint_id: str, reason: str) -> None:
        at = now_ms()
        await conn.execute(
            EP.update()
            .where(EP.c.id == endpoint_id, EP.c.disabled_at.is_(None))
            .values(disabled_at=at, disabled_reason=reason)
        )
        await conn.execute(
            MSG.update()
            .where(MSG.c.endpoint_id == endpoint_id, MSG.c.status == PENDING)
            .values(
                status=FAILED,
                next_attempt_at=None,
                last_error="endpoint disabled: " + reason,
                finished_at=at,
            )
        )

    # ---- the delivery log and replays (API) ----------------------------------------------

    @store_errors
    async def deliveries(
        self, account: str, endpoint_id: str, *, limit: int, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest messages first, each with every attempt in order."""
        query = sa.select(MSG).where(MSG.c.account == account, MSG.c.endpoint_id == endpoint_id)
        if status is not None:
            query = query.where(MSG.c.status == status)
        query = query.order_by(MSG.c.created_at.desc(), MSG.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            messages = (await conn.execute(query)).all()
            ids = [m.id for m in messages]
            attempts = (
                await conn.execute(
                    sa.select(ATT)
                    .where(ATT.c.account == account, ATT.c.message_id.in_(ids))
                    .order_by(ATT.c.message_id, ATT.c.attempt, ATT.c.id)
                )
            ).all()
        by_message: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_message.setdefault(a.message_id, []).append({k: a._mapping[k] for k in _ATTEMPT_JSON})
        return [_message_json(m, by_message.get(m.id, [])) for m in messages]

    @store_errors
    async def message(self, account: str, message_id: str) -> dict[str, Any] | None:
        query = sa.select(MSG).where(MSG.c.account == account, MSG.c.id == message_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _message_json(row, None)

    def _replay_values(self, at: int) -> dict[str, Any]:
        return {
            "status": PENDING,
            "next_attempt_at": at,
            "give_up_at": self.config.schedule.give_up_at(at),
            "lease_owner": None,
            "lease_until": None,
            "finished_at": None,
        }

    @store_errors
    async def replay(self, account: str, message_id: str) -> dict[str, Any] | None:
        """Send a message again now (same `webhook-id`), with a fresh retry window."""
        mine = sa.and_(MSG.c.account == account, MSG.c.id == message_id)
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(MSG.c.endpoint_id).where(mine))).first()
            if row is None:
                return None
            disabled = await conn.scalar(
                sa.select(EP.c.disabled_reason).where(
                    EP.c.id == row.endpoint_id, EP.c.disabled_at.is_not(None)
                )
            )
            if disabled is not None:
                raise ReplayError(f"the endpoint is disabled ({disabled})")
            await conn.execute(MSG.update().where(mine).values(**self._replay_values(now_ms())))
            message = (await conn.execute(sa.select(MSG).where(mine))).one()
        return _message_json(message, None)

    @store_errors
    async def replay_failed(self, account: str, since_ms: int, endpoint_id: str | None = None) -> list[str]:
        """Re-queue every message of the account that failed at or after `since_ms`."""
        live_endpoints = sa.select(EP.c.id).where(EP.c.account == account, EP.c.disabled_at.is_(None))
        if endpoint_id is not None:
            live_endpoints = live_endpoints.where(EP.c.id == endpoint_id)
        query = (
            MSG.update()
            .where(
                MSG.c.account == account,
                MSG.c.status == FAILED,
                MSG.c.finished_at >= since_ms,
                MSG.c.endpoint_id.in_(live_endpoints),
            )
            .values(**self._replay_values(now_ms()))
            .returning(MSG.c.id)
        )
        async with self.engine.begin() as conn:
            return sorted(r[0] for r in await conn.execute(query))


def _take_turns(heads: Sequence[Any], limit: int, per_account: int, busy: Mapping[str, int]) -> list[str]:
    """Round-robin over accounts: a message's turn is its place in its account's queue plus
    what that account already has in flight; turns past the per-account cap wait."""
    turns = sorted((h.n + busy.get(h.account, 0), h.due, h.id) for h in heads)
    return [message_id for turn, _, message_id in turns if turn <= per_account][:limit]


def _message_json(m: Any, attempts: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": m.id,
        "endpoint_id": m.endpoint_id,
        "type": m.event_type,
        "call_id": m.call_id,
        "status": m.status,
        "attempt_count": m.attempts,
        "created_at": m.created_at,
        "next_attempt_at": m.next_attempt_at if m.status == PENDING else None,
        "give_up_at": m.give_up_at,
        "last_status_code": m.last_status_code,
        "last_error": m.last_error,
        "finished_at": m.finished_at,
    }
    if attempts is not None:
        body["attempts"] = attempts
    return body
