"""The durable store on SQLAlchemy: SQLite (embedded default, WAL) or PostgreSQL (asyncpg).

Events are written by one batching writer: whatever accumulated while the previous commit ran
goes into the next transaction, so the commit rate, not the event rate, bounds the database
work. A producer's ack waits for the commit that holds its event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any, ParamSpec, TypedDict, TypeVar, Unpack

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from callstream.call_filters import CallFilter
from callstream.control import WaitingRequest
from callstream.errors import UnavailableError
from callstream.events import ENDED, CallState, Event
from callstream.outages import OutageLog
from callstream.quality import call_metrics
from callstream.search import Snippet
from callstream.sentiment import NEGATIVE_THRESHOLD, POSITIVE_THRESHOLD, label_for
from callstream.session_names import code_with_name
from callstream.store import controls, erasure, fold_process, rows, search_sql
from callstream.store import tables as t
from callstream.store.chunks import (
    CHUNK_COLUMNS,
    CallEvents,
    StoredEvent,
    by_call,
    chunk_rows,
    events_in,
    final_rows,
    ids_in,
)
from callstream.store.fold import Fold, FoldError, JournalFolder
from callstream.store.journal import (
    FOLD_AT_ROWS,
    FOLD_EVERY_S,
    JOURNAL_MAX_BYTES,
    MARKER_PREFIX,
    EventJournal,
    journal_rows,
)
from callstream.store.metadata_query import metadata_filters
from callstream.store.pg_writer import PgEventWriter
from callstream.store.rows import FINAL_COLUMNS, MINUTE_COLUMNS, fts_merge
from callstream.store.sums import MinuteRow, call_sums, merged_minutes

log = logging.getLogger("callstream.store")

EndedHook = Callable[[AsyncConnection, Event], Awaitable[None]]


# A page of stored events stops once its chunks hold this much (at least one event comes).
PAGE_MAX_BYTES = 8 * 1024 * 1024
_LOOK_UP_CHUNK = 500  # call ids per look-up query (SQLite allows 32,766 parameters; stay far below)
_ID_CHUNKS_AT_ONCE = 16  # stored chunks decoded at a time for a call's ids (at most 1 MiB each)


class StoreUnavailableError(UnavailableError):
    """The database cannot be reached or refused the write; the caller answers 503 / `internal`."""


class CallFailedError(StoreUnavailableError):
    """These calls' rows could not be stored; they take no more events (other calls go on)."""

    def __init__(self, message: str, calls: frozenset[tuple[str, str]]) -> None:
        super().__init__(message)
        self.calls = calls  # (account, call_id) of every call of the append that failed


class CallUnsettledError(StoreUnavailableError):
    """A failed commit left events of this call unstored (`SqlStore.unsettled`): nothing newer
    of it is stored before them."""


_P = ParamSpec("_P")
_R = TypeVar("_R")
DRIVER_ERRORS = (SQLAlchemyError, OSError)  # what the database's driver raises when it cannot serve


def unavailable(exc: BaseException) -> BaseException:
    """A driver error as the project's `StoreUnavailableError` (anything else as it is)."""
    if isinstance(exc, DRIVER_ERRORS):
        error = StoreUnavailableError(f"the store is unavailable: {exc.__class__.__name__}")
        error.__cause__ = exc
        return error
    return exc


# SQLSTATE classes that say the connection or the server failed, not the statement: a connection
# exception, a transaction rolled back (a deadlock), insufficient resources (a full disk), operator
# intervention (a shutdown ending the sessions, a cancel), a system error, an internal error; and
# two codes of other classes that say the same (a session the server ended for idling in its
# transaction, a lock that could not be had).
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58", "XX"})
_OUTAGE_SQLSTATES = frozenset({"25P03", "55P03"})
_SQLITE_REFUSALS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.NotSupportedError)


def refused_rows(exc: BaseException) -> bool | None:
    """Whether `exc` is the database refusing a statement (a constraint, a type, a size, a
    trigger: True) or a lost connection, a shutdown or the server's fault (False); None when the
    error does not say (no SQLSTATE: a driver's own check, a value Python could not bind), and the
    database must be asked (`SqlStore.probe_write`). Only a refusal fails a call for good
    (`SqlStore.failed_calls`); after an outage the call's events are stored again
    (`server/repair.py`)."""
    error: BaseException | None = exc
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlite3.Error):
            return isinstance(error, _SQLITE_REFUSALS)
        state = getattr(error, "sqlstate", None)
        if isinstance(state, str) and state:
            return state[:2] not in _OUTAGE_SQLSTATE_CLASSES and state not in _OUTAGE_SQLSTATES
        error = getattr(error, "orig", None) or error.__cause__
    return None


def store_errors(method: Callable[_P, Coroutine[Any, Any, _R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Callers of the decorated method see `StoreUnavailableError`, never the driver's errors:
    REST and the sockets answer 503 / `internal` from the project's own errors alone."""

    @functools.wraps(method)
    async def mapped(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc

    return mapped


def database_url(url: str | None, data_dir: str) -> str:
    """Map the user's URL to the async driver SQLAlchemy needs; the default is SQLite in data_dir."""
    if not url:
        os.makedirs(data_dir, exist_ok=True)
        from callstream.store.migrate import DATA_DIR_FILE

        return f"sqlite+aiosqlite:///{os.path.join(data_dir, DATA_DIR_FILE)}"
    for prefix, driver in (
        ("postgresql+asyncpg://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(prefix):
            return driver + url[len(prefix) :]
    raise ValueError("unsupported database URL: use postgresql://… or sqlite:///path, or leave unset")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# The store cannot commit at all once writes have waited this long with no commit (or a fold
# has failed that long): /healthz answers 503 then (docs/protocol.md, Values and isolation).
STALLED_AFTER_S = 5.0


CONTROL_LOGIN_PREFIX = "ctl-"  # a login code whose session may control calls
LISTEN_LOGIN_PREFIX = "lsn-"  # …may listen to calls' audio (after CONTROL_LOGIN_PREFIX when both)


def login_code_scopes(code: str) -> frozenset[str]:
    """The scopes of the session a login code opens: `subscribe`, plus `control` and `listen`
    when the code starts with their prefixes (in that order). The prefixes are part of what is
    hashed, so they can be neither added to a code nor stripped from one."""
    scopes = {"subscribe"}
    if code.startswith(CONTROL_LOGIN_PREFIX):
        scopes.add("control")
        code = code[len(CONTROL_LOGIN_PREFIX) :]
    if code.startswith(LISTEN_LOGIN_PREFIX):
        scopes.add("listen")
    return frozenset(scopes)


def _login_secret() -> str:
    """A code's random part; never one that starts like a prefix, so a plain code cannot read
    as one that grants more."""
    while True:
        secret = secrets.token_urlsafe(24)
        if not secret.startswith((CONTROL_LOGIN_PREFIX, LISTEN_LOGIN_PREFIX)):
            return secret


Settled = Callable[[asyncio.Future[None]], None]


@dataclass(slots=True)
class _Pending:
    events: list[Event]
    future: asyncio.Future[None]
    at: float  # the event loop's clock when appended
    again: bool = False  # events a failed commit did not store, appended again (`append`)
    then: Settled | None = None  # run by the writer as it settles `future` (`append`)


@dataclass(slots=True)
class KeyRecord:
    id: str
    account: str
    name: str | None
    scopes: frozenset[str]
    created_at: int
    revoked_at: int | None


@dataclass(slots=True)
class CallRecord:
    call_id: str
    status: str
    started_at: int
    ended_at: int | None
    duration_ms: int | None
    end_status: str | None
    reason: str | None
    last_seq: int
    sentiment: float | None  # the mean of the finals' scores
    sentiment_n: int = 0  # how many finals had a score
    metrics: dict[str, Any] | None = None  # turns, latency, interruptions, talk (`quality.call_metrics`)
    hit: SearchHit | None = None  # a search's first matching final of the call
    metadata: dict[str, Any] = field(default_factory=dict)  # the call's metadata (`metadata.merge`)

    def to_json(self) -> dict[str, Any]:
        """Every field, the sentiment as its score, label and count (None before any score); a
        search hit's `snippet` and `match` (docs/protocol.md, Listing and searching calls)."""
        body = asdict(self)
        n = body.pop("sentiment_n")
        del body["hit"]
        if self.sentiment is not None:
            body["sentiment"] = {"score": self.sentiment, "label": label_for(self.sentiment), "n": n}
        if self.hit is not None:
            body["snippet"] = self.hit.snippet.text
            body["match"] = {"seq": self.hit.seq, "speaker": self.hit.speaker, "marks": self.hit.snippet.marks}
        return body


@dataclass(slots=True)
class SearchHit:
    """The final that made a call a search hit: its seq and speaker, and the snippet around the match."""

    seq: int
    speaker: str
    snippet: Snippet


class EventQuery(TypedDict, total=False):
    """Which of a call's stored events `read_events` returns."""

    since: int
    until: int | None
    types: Sequence[str] | None


async def read_events(
    conn: AsyncConnection,
    account: str,
    call_id: str,
    since: int = 0,
    until: int | None = None,
    types: Sequence[str] | None = None,
) -> list[StoredEvent]:
    """A call's stored events with since < seq ≤ until (of `types`), in `seq` order.

    Every chunk whose last seq is past `since` and whose first is not past `until` may hold some:
    the primary key's order (last_seq) finds them, `events_in` cuts them to the range.
    """
    c = t.event_chunks.c
    query = sa.select(c.events).where(c.account == account, c.call_id == call_id, c.last_seq > since)
    if until is not None:
        query = query.where(c.first_seq <= until)
    rows = await conn.execute(query.order_by(c.last_seq))
    return events_in(rows.scalars(), since, until, types)


# Chunk rows a page read takes from its cursor at a time: a chunk holds up to 256 events
# (`chunks.MAX_CHUNK_EVENTS`), so a few bound what is read past the page's end.
_CHUNKS_PER_FETCH = 4


async def read_page(
    conn: AsyncConnection, account: str, call_id: str, since: int, limit: int, until: int | None = None
) -> tuple[list[StoredEvent], bool]:
    """At most `limit` of a call's stored events with since < seq ≤ until, in `seq` order, and
    whether more follow: one page of a long call without reading the rest of it.

    Chunks come in last_seq order, a few at a time, until more than `limit` events, or more than
    `PAGE_MAX_BYTES` of them, are in hand (a page of large events must not hold the node's
    memory). Chunks of two nodes may interleave (see `chunks`), so a chunk not read yet can still
    hold a seq below the page's end: one more query takes the chunks that reach back that far.
    """
    c = t.event_chunks.c
    query = sa.select(c.last_seq, c.events).where(c.account == account, c.call_id == call_id, c.last_seq > since)
    if until is not None:
        query = query.where(c.first_seq <= until)
    held: dict[int, StoredEvent] = {}
    read_to, size, cut = since, 0, False
    result = await conn.stream(query.order_by(c.last_seq).execution_options(yield_per=_CHUNKS_PER_FETCH))
    try:
        async for row in result:
            for event in events_in((row.events,), since, until):
                held.setdefault(event.seq, event)
            read_to, size = row.last_seq, size + len(row.events)
            if len(held) > limit or size > PAGE_MAX_BYTES:
                cut = True
                break
    finally:
        await result.close()
    if not cut:
        return [held[seq] for seq in sorted(held)], False
    limit = min(limit, len(held))
    end = sorted(held)[limit - 1]
    reaching_back = query.where(c.last_seq > read_to, c.first_seq <= end)
    for event in events_in((row.events for row in await conn.execute(reaching_back)), since, end):
        held.setdefault(event.seq, event)
    return [held[seq] for seq in sorted(held)[:limit]], True


def hash_secret(secret: str) -> str:
    import hashlib

    return hashlib.sha256(secret.encode()).hexdigest()


class SqlStore:
    def __init__(self, url: str, *, batch_max: int = 5000, ids_after_end_s: float = 3600.0) -> None:
        """`ids_after_end_s`: how long after its end a call loaded again (`call_state`) still
        comes with its events' ids (idempotent publish): the replay window of ended calls.
        A URL the driver cannot use raises `StoreUnavailableError`, as an unreachable database
        does in `start`."""
        self.url = url
        self._ids_after_end_ms = int(ids_after_end_s * 1000)
        self.dialect = "postgresql" if url.startswith("postgresql") else "sqlite"
        try:
            self.engine: AsyncEngine = self._make_engine(url)
        except DRIVER_ERRORS as exc:
            raise unavailable(exc) from exc
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._batch_max = batch_max
        self.ended_hooks: list[EndedHook] = []
        self.on_settled: Callable[[], None] | None = None  # after each commit's appends (`append`)
        self.healthy = True
        self.commits = 0
        # Calls whose rows the database refused (not an outage: other calls' rows were taken).
        self.failed_calls: dict[tuple[str, str], str] = {}
        # Told, once per commit and in append order, of the events it stored (`on_commit`) or
        # could not store for an outage (`on_failure`; refused calls are `failed_calls`).
        self.on_commit: Callable[[list[Event]], None] | None = None
        self.on_failure: Callable[[list[Event]], None] | None = None
        # With `on_failure` set, the calls of the events it is told of: their later appends fail
        # too, so nothing newer of such a call is stored before those, until the caller appends
        # them again (`append(…, again=True)`) and calls `settle`.
        self.unsettled: set[tuple[str, str]] = set()
        self._waiting_since: float | None = None  # the oldest write not committed yet
        self._write_outage = OutageLog(log, "writing events to the store")
        self._fold_outage = OutageLog(log, "folding the event journal")
        self._fold_failing_since: float | None = None
        # SQLite: the event writer's batches go to the node's journal (store/journal.py, opened by
        # `start` for a node's writer) until the fold process (`fold.JournalFolder`) files them;
        # batches that end a call keep the SQLAlchemy path, whose hooks write the webhook outbox.
        path = url.split(":///", 1)[1] if self.dialect == "sqlite" and ":///" in url else ""
        self._journal_folder = JournalFolder(path) if path and path != ":memory:" else None
        # PostgreSQL: those batches go out as one statement on a connection of the writer's own.
        self._pg = PgEventWriter(self.engine) if self.dialect == "postgresql" else None
        self._journal: EventJournal | None = None
        self._background_fold: asyncio.Task[None] | None = None
        # One future per fold sent to the fold process, True once it committed: the journal's
        # files it took are out of the journal but not in the database until then.
        self._folds_in_flight: set[asyncio.Future[bool]] = set()
        self._forget: list[str] = []  # markers of folded journal files since deleted
        self._folder: asyncio.Task[None] | None = None
        # Call look-ups asked for in one loop iteration, answered by one query (`call_state`).
        self._wanted: dict[tuple[str, str], asyncio.Future[CallState | None]] = {}
        self._look_ups: set[asyncio.Task[None]] = set()

    def _make_engine(self, url: str) -> AsyncEngine:
        if self.dialect == "sqlite":
            engine = create_async_engine(url, connect_args={"timeout": 30})

            @sa.event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                for pragma in fold_process.PRAGMAS:
                    cursor.execute(pragma)
                cursor.close()

            return engine
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)

    # ---- life cycle ----------------------------------------------------------------------

    @store_errors
    async def start(self, *, writer: bool = True) -> None:
        """Bring the schema up to date and, for a node's `writer`, open its journal and start the
        writer and the folder. A database that cannot be reached or opened raises
        `StoreUnavailableError` (the driver's error its cause), so callers need not know the driver."""
        from callstream.store.migrate import upgrade

        await upgrade(self.engine)
        if writer:
            if self._journal_folder is not None:
                await self._open_journal()
            self._writer = asyncio.create_task(self._write_forever(), name="store-writer")
            if self._journal_folder is not None:
                self._folder = asyncio.create_task(self._fold_forever(), name="store-folder")

    async def _open_journal(self) -> None:
        """The node's journal, with the files nodes that died before left (folded before the
        first read); markers of folds whose files are gone are forgotten by the next fold."""
        assert self._journal_folder is not None
        async with self.engine.connect() as conn:
            query = sa.select(t.meta.c.key).where(t.meta.c.key.startswith(MARKER_PREFIX))
            markers = set((await conn.execute(query)).scalars())
        journal = self._journal = EventJournal(self._journal_folder.path)
        if recovered := journal.recover(markers):
            log.info("the event journal holds %d files a node left behind; they are folded first", recovered)
        self._forget.extend(markers - journal.markers_on_disk())

    async def close(self) -> None:
        if self._folder is not None:
            self._folder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._folder
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._background_fold is not None:
            await self._background_fold  # it logs its own failure
        with contextlib.suppress(Exception):  # else the next start folds it
            await self._fold_journal()
        if self._journal is not None:
            self._journal.close()
        if self._journal_folder is not None:
            await self._journal_folder.close()
        if self._pg is not None:
            await self._pg.close()
        # Let look-ups in flight answer their waiters before the engine goes.
        await asyncio.gather(*self._look_ups, return_exceptions=True)
        await self.engine.dispose()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:  # any driver error means "cannot serve"
            self.healthy = False
            return False
        self.healthy = True
        return True

    # ---- meta, accounts and keys ---------------------------------------------------------

    @store_errors
    async def meta_value(self, key: str, default: Callable[[], str]) -> str:
        """Read a server-wide value, creating it once; nodes sharing the database share it."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == key))).first()
            if row is not None:
                return str(row[0])
            value = default()
            await conn.execute(self._insert_ignore(t.meta, ["key"]).values(key=key, value=value))
            row = (await conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == key))).one()
            return str(row[0])

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _insert_ignore(self, table: sa.Table, keys: list[str]) -> Any:
        return self._insert(table).on_conflict_do_nothing(index_elements=keys)

    @store_errors
    async def create_key(
        self, account: str, scopes: frozenset[str], name: str | None = None
    ) -> tuple[KeyRecord, str]:
        """Create a key and return it with its secret, which is never stored or shown again."""
        key_id = "key_" + secrets.token_hex(8)
        secret = "cs_" + secrets.token_urlsafe(32)
        record = KeyRecord(key_id, account, name, scopes, now_ms(), None)
        async with self.engine.begin() as conn:
            await conn.execute(
                self._insert_ignore(t.accounts, ["id"]).values(id=account, created_at=record.created_at)
            )
            await conn.execute(
                t.api_keys.insert().values(
                    id=key_id,
                    account=account,
                    name=name,
                    key_hash=hash_secret(secret),
                    scopes=",".join(sorted(scopes)),
                    created_at=record.created_at,
                )
            )
        return record, secret

    @staticmethod
    def _key_record(row: Any) -> KeyRecord:
        scopes = frozenset(s for s in row.scopes.split(",") if s)
        return KeyRecord(row.id, row.account, row.name, scopes, row.created_at, row.revoked_at)

    @store_errors
    async def key_by_secret(self, secret: str) -> KeyRecord | None:
        query = sa.select(t.api_keys).where(t.api_keys.c.key_hash == hash_secret(secret))
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else self._key_record(row)

    @store_errors
    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key_id))).first()
        return None if row is None else self._key_record(row)

    @store_errors
    async def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        query = sa.select(t.api_keys).order_by(t.api_keys.c.created_at)
        if account is not None:
            query = query.where(t.api_keys.c.account == account)
        async with self.engine.connect() as conn:
            return [self._key_record(r) for r in await conn.execute(query)]

    @store_errors
    async def revoke_key(self, key_id: str) -> bool:
        query = (
            t.api_keys.update()
            .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now_ms())
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(query)
        return bool(result.rowcount)

    @store_errors
    async def revoked_since(self, since_ms: int) -> list[str]:
        query = sa.select(t.api_keys.c.id).where(t.api_keys.c.revoked_at >= since_ms)
        async with self.engine.connect() as conn:
            return [r[0] for r in await conn.execute(query)]

    @store_errors
    async def create_login_code(
        self,
        account: str,
        ttl_s: int = 600,
        control: bool = False,
        name: str | None = None,
        listen: bool = False,
    ) -> str:
        """A one-time dashboard login code; `control` and `listen` make its session carry those
        scopes (the code then starts with their prefixes, `login_code_scopes`), and `name` gives
        the session a name of its own, carried in the code the same way (`session_names`)."""
        prefix = (CONTROL_LOGIN_PREFIX if control else "") + (LISTEN_LOGIN_PREFIX if listen else "")
        code = code_with_name(prefix + _login_secret(), name)
        async with self.engine.begin() as conn:
            await conn.execute(
                t.login_codes.insert().values(
                    code_hash=hash_secret(code), account=account, expires_at=now_ms() + ttl_s * 1000
                )
            )
        return code

    @store_errors
    async def use_login_code(self, code: str) -> str | None:
        """Spend a one-time login code; returns its account, or None if unknown, used or expired."""
        table = t.login_codes
        query = (
            table.update()
            .where(
                table.c.code_hash == hash_secret(code),
                table.c.used_at.is_(None),
                table.c.expires_at > now_ms(),
            )
            .values(used_at=now_ms())
            .returning(table.c.account)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else str(row[0])

    # ---- calls and events (read) ---------------------------------------------------------

    async def call_state(self, account: str, call_id: str) -> CallState | None:
        """The stored state of a call, for the broker to sequence or replay it from.

        Every look-up asked for in the same loop iteration shares one query. A campaign that
        starts thousands of calls at once makes the broker ask for each new call's state on its
        first event; one query each (a connection check-out, a thread hop for SQLite) would queue
        seconds of work in front of those first events.
        """
        key = (account, call_id)
        wanted = self._wanted.get(key)
        if wanted is None:
            loop = asyncio.get_running_loop()
            if not self._wanted:
                loop.call_soon(self._look_up_wanted)
            wanted = self._wanted[key] = loop.create_future()
        return await asyncio.shield(wanted)

    def _look_up_wanted(self) -> None:
        wanted, self._wanted = self._wanted, {}
        task = asyncio.get_running_loop().create_task(self._look_up(wanted))
        self._look_ups.add(task)
        task.add_done_callback(self._look_ups.discard)

    async def _look_up(self, wanted: dict[tuple[str, str], asyncio.Future[CallState | None]]) -> None:
        try:
            await self._fold_journal()  # a call's last seq may be in the log (a restart must not reuse it)
        except Exception as exc:
            for future in wanted.values():
                if not future.done():
                    future.set_exception(unavailable(exc))
                    future.exception()
            return
        by_account: dict[str, list[str]] = {}
        for account, call_id in wanted:
            by_account.setdefault(account, []).append(call_id)
        for account, call_ids in by_account.items():
            for start in range(0, len(call_ids), _LOOK_UP_CHUNK):
                chunk = call_ids[start : start + _LOOK_UP_CHUNK]
                try:
                    async with self.engine.connect() as conn:
                        rows = (await conn.execute(self._call_states, {"account": account, "ids": chunk})).all()
                        found = {
                            row.call_id: CallState(
                                row.status, row.last_seq, row.started_at, _metadata_of(row._mapping["metadata"])
                            )
                            for row in rows
                        }
                        await self._with_ids(conn, account, found, [r.call_id for r in rows if self._keeps_ids(r)])
                except Exception as exc:
                    for call_id in chunk:
                        future = wanted[(account, call_id)]
                        if not future.done():
                            future.set_exception(unavailable(exc))
                            future.exception()  # retrieved: each waiter re-raises it
                    continue
                for call_id in chunk:
                    future = wanted[(account, call_id)]
                    if not future.done():
                        future.set_result(found.get(call_id))

    @functools.cached_property
    def _call_states(self) -> Any:
        c = t.calls.c
        return sa.select(c.call_id, c.status, c.last_seq, c.started_at, c.ended_at, c["metadata"]).where(
            c.account == sa.bindparam("account"), c.call_id.in_(sa.bindparam("ids", expanding=True))
        )

    def _keeps_ids(self, row: Any) -> bool:
        """Whether a call loaded again still remembers its ids: live, or ended within the window."""
        return row.status != "ended" or (row.ended_at or 0) >= now_ms() - self._ids_after_end_ms

    async def _with_ids(self, conn: AsyncConnection, account: str, found: dict[str, CallState], call_ids: list[str]) -> None:
        """Give the states of `call_ids` their events' ids, read from the calls' stored frames (one
        query): so a node that restarted answers a resend with the seq it got before it died. Only
        chunks that may hold an id are read, streamed a few at a time: a long call is never held
        in memory whole (its ids are)."""
        if not call_ids:
            return
        ids: dict[str, dict[str, int]] = {}
        result = await conn.stream(self._call_chunks, {"account": account, "ids": call_ids})
        async for partition in result.partitions(_ID_CHUNKS_AT_ONCE):
            for row in partition:
                held = ids.setdefault(row.call_id, {})
                for event_id, seq in ids_in((row.events,)).items():
                    held.setdefault(event_id, seq)
        for call_id in call_ids:
            found[call_id].ids = ids.get(call_id) or None

    @functools.cached_property
    def _call_chunks(self) -> Any:
        c = t.event_chunks.c
        return sa.select(c.call_id, c.events).where(
            c.account == sa.bindparam("account"),
            c.call_id.in_(sa.bindparam("ids", expanding=True)),
            c.events.contains('"id":', autoescape=True),
        )

    @staticmethod
    def _call_record(row: Any) -> CallRecord:
        sentiment = round(row.sentiment_sum / row.sentiment_n, 3) if row.sentiment_n else None
        return CallRecord(
            row.call_id,
            row.status,
            row.started_at,
            row.ended_at,
            row.duration_ms,
            row.end_status,
            row.reason,
            row.last_seq,
            sentiment,
            row.sentiment_n,
            call_metrics(row._mapping),
            metadata=_metadata_of(row._mapping["metadata"]) or {},
        )

    @store_errors
    async def get_call(self, account: str, call_id: str) -> CallRecord | None:
        await self._fold_journal()
        query = sa.select(t.calls).where(t.calls.c.account == account, t.calls.c.call_id == call_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else self._call_record(row)

    @store_errors
    async def quality_window(
        self, account: str, since: int, step: int, live_since: int
    ) -> tuple[list[tuple[int, str, int]], list[tuple[str, str | None, str, int]]]:
        """What /v1/stats sums (`quality.fleet_stats`), in two indexed reads that never touch an
        event: the account's `quality_minutes` from `since` on, added up per `step` ms and name;
        and its calls live now (an event since `live_since`) or ended since `since`, counted by
        status, end status and sentiment label."""
        await self._fold_journal()
        m = t.quality_minutes.c
        at = (m.minute - m.minute % sa.literal_column(str(int(step)))).label("at")
        minutes = (
            sa.select(at, m.name, sa.func.sum(m.n))
            .where(m.account == account, m.minute >= since)
            .group_by(at, m.name)
        )
        c = t.calls.c
        label = sa.case(
            (c.sentiment_n == 0, "unscored"),
            (c.sentiment_sum >= POSITIVE_THRESHOLD * c.sentiment_n, "positive"),
            (c.sentiment_sum <= NEGATIVE_THRESHOLD * c.sentiment_n, "negative"),
            else_="neutral",
        ).label("label")
        # Two reads, so that each takes its own range of (account, status, ended_at): one `OR`
        # would read every call of the account.
        counted = sa.select(c.status, c.end_status, label, sa.func.count()).group_by(c.status, c.end_status, label)
        live = counted.where(c.account == account, c.status == "live", c.last_ts >= live_since)
        ended = counted.where(c.account == account, c.status == "ended", c.ended_at >= since)
        async with self.engine.connect() as conn:
            minute_rows = [(int(r[0]), str(r[1]), int(r[2])) for r in await conn.execute(minutes)]
            call_rows = [(str(r[0]), r[1], str(r[2]), int(r[3])) for q in (live, ended) for r in await conn.execute(q)]
        return minute_rows, call_rows

    @store_errors
    async def list_calls(
        self,
        account: str,
        *,
        limit: int,
        cursor: str | None,
        filters: CallFilter | None = None,
        status: str | None = None,
        call_ids: frozenset[str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        """The account's calls that pass `filters` (`status`: a shorthand for its status alone) and
        hold every `metadata` key → text given (`metadata_filters`), newest first (`search_sql`); with
        `q`, each carries its hit. The cursor is opaque to users and names the last row returned."""
        await self._fold_journal()
        filters = filters or CallFilter(status=status)
        c = t.calls.c
        query = sa.select(t.calls).where(*search_sql.conditions(account, filters, call_ids))
        if metadata:
            query = query.where(*metadata_filters(self.dialect, metadata))
        if cursor is not None:
            query = query.where(search_sql.before(*decode_cursor(cursor)))
        query = query.order_by(c.started_at.desc(), c.call_id.desc())
        hits: dict[str, search_sql.Hit] = {}
        async with self.engine.connect() as conn:
            if filters.q is None:
                found = list((await conn.execute(query.limit(limit + 1))).all())
            else:
                found, hits = await search_sql.search(conn, self.dialect, account, query, filters.q, limit + 1)
        more = len(found) > limit
        rows = [self._call_record(r) for r in found[:limit]]
        for row in rows:
            if filters.q is not None and (final := hits.get(row.call_id)) is not None:
                row.hit = SearchHit(final[0], final[1], filters.q.snippet(final[2]))
        next_cursor = encode_cursor(rows[-1].started_at, rows[-1].call_id) if more else None
        return rows, next_cursor

    @store_errors
    async def events(self, account: str, call_id: str, **query: Unpack[EventQuery]) -> list[StoredEvent]:
        """`read_events` on a connection of the store's own, once the journal is folded."""
        await self._fold_journal()
        async with self.engine.connect() as conn:
            return await read_events(conn, account, call_id, **query)

    @store_errors
    async def events_page(
        self, account: str, call_id: str, since: int, limit: int, until: int | None = None
    ) -> tuple[list[StoredEvent], bool]:
        """One page of a call's stored events (`read_page`): at most `limit`, and whether more follow."""
        await self._fold_journal()
        async with self.engine.connect() as conn:
            return await read_page(conn, account, call_id, since, limit, until)

    # ---- erasure and retention (store/erasure.py) -----------------------------------------

    @store_errors
    async def erase_calls(self, account: str, call_ids: Sequence[str]) -> list[str]:
        """Erase those of the account's `call_ids` that have ended: every row of them, in one
        transaction, once the journal is folded (it then holds nothing of them either). Returns
        the ids erased; live calls and calls not there are left alone.

        On SQLite the deleted rows' bytes are overwritten too (`secure_delete`), not merely
        marked free in the database file."""
        await self._fold_journal()
        async with self.engine.begin() as conn:
            if self.dialect == "sqlite":
                await conn.exec_driver_sql("PRAGMA secure_delete = ON")
            erased = await erasure.erase_ended(conn, account, call_ids)
        self.forget_calls(account, erased)
        return erased

    def forget_calls(self, account: str, call_ids: Sequence[str]) -> None:
        """Calls erased (on any node): this node no longer holds them failed or unsettled, so a new
        call may take their ids."""
        for call_id in call_ids:
            self.failed_calls.pop((account, call_id), None)
            self.unsettled.discard((account, call_id))

    @store_errors
    async def waiting_controls(self) -> list[WaitingRequest]:
        """Control requests of live calls that wait for their result (`store.controls`): what a
        node whose broker kept them in memory answers once it restarts."""
        await self._fold_journal()
        accounts = await self.accounts()
        async with self.engine.connect() as conn:
            return await controls.waiting_requests(conn, accounts)

    @store_errors
    async def accounts(self) -> list[str]:
        """Every account that ever had a key (so every account that may have calls)."""
        async with self.engine.connect() as conn:
            return [str(a) for a in (await conn.execute(sa.select(t.accounts.c.id).order_by(t.accounts.c.id))).scalars()]

    @store_errors
    async def calls_ended_before(self, account: str, cutoff_ms: int, limit: int) -> list[str]:
        """Up to `limit` of the account's calls that ended before `cutoff_ms`, oldest first."""
        async with self.engine.connect() as conn:
            return await erasure.ended_before(conn, account, cutoff_ms, limit)

    # ---- the batching writer -------------------------------------------------------------

    def append(self, events: list[Event], *, again: bool = False, then: Settled | None = None) -> asyncio.Future[None]:
        """Queue events for the next commit; the future resolves once they are durable.

        `then(future)` runs in the writer's own task as soon as the commit settled the future (a
        done callback would run a loop iteration later), and `on_settled` once every append of
        that commit had its `then`: what follows a commit (the embedded broker's fan-out) waits
        no loop iteration more, however busy the loop is with other sockets' reads.

        It fails with `CallFailedError` (naming the calls) when the database refused some of its
        calls' rows, or with `StoreUnavailableError` when the commit failed whole, or when a call
        of it is `unsettled` (unless `again`: these are the events a failed commit left out,
        appended again). The store stores and nothing else: what to do once events are durable
        is the caller's.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Pending(events, future, loop.time(), again, then))
        if self._waiting_since is None:
            self._waiting_since = self._pending[0].at
        self._wakeup.set()
        return future

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (or failed)."""
        if self._pending:
            last = self._pending[-1].future
            with contextlib.suppress(Exception):
                await asyncio.shield(last)

    async def _write_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                errors = await self._commit_batch(batch)
                self._waiting_since = self._pending[0].at if self._pending else None
                if errors:
                    self._unsettle(batch, errors)
                elif self.on_commit is not None:
                    self.on_commit(list(chain.from_iterable(item.events for item in batch)))
                self._settle(batch, errors)
                if self.on_settled is not None:
                    self._run_hook(self.on_settled)

    def settle(self, account: str, call_id: str) -> None:
        """The call's events a failed commit left out are stored again: it takes appends again."""
        self.unsettled.discard((account, call_id))

    def _unsettle(self, batch: list[_Pending], errors: dict[tuple[str, str], StoreUnavailableError]) -> None:
        """After a commit some of whose calls failed: the hooks hear which events were stored and
        which were not for an outage (whose calls become `unsettled`)."""
        stored: list[Event] = []
        lost: list[Event] = []
        for item in batch:
            for event in item.events:
                error = _error_for(item, errors.get((event.account, event.call_id)))
                if error is None:
                    stored.append(event)
                elif not isinstance(error, CallFailedError):
                    lost.append(event)
        if stored and self.on_commit is not None:
            self.on_commit(stored)
        if lost and self.on_failure is not None:
            self.unsettled.update((event.account, event.call_id) for event in lost)
            self.on_failure(lost)

    async def _commit_batch(self, batch: list[_Pending]) -> dict[tuple[str, str], StoreUnavailableError]:
        """Commit a batch; the calls whose events it could not store, each with the error.

        Events of a call that already failed are not stored (its history must not go on past
        the hole). When a commit fails on the database and a probe write succeeds, the database
        is fine and some call's rows are at fault: each call is then committed alone, and only
        the calls the database refuses again are failed (`failed_calls`; a call whose commit loses
        its connection, as when the database shuts down, is in an outage). When the probe fails too, or the
        failure was the node's (a file the disk refused, a fold that failed), it is an outage and
        every call of the batch fails (the node is unhealthy until a write succeeds).
        """
        errors: dict[tuple[str, str], StoreUnavailableError] = {}
        events = self._batch_events(batch, errors)
        if self.failed_calls:
            events = self._without_failed_calls(events, errors)
        if not events:
            return errors
        try:
            await self._commit(events)
        except Exception as exc:  # mapped below to the project's own errors
            first = exc
        else:
            self.healthy = True
            self._write_outage.recovered()
            return errors
        grouped = by_call(events)
        if isinstance(first, OSError | StoreUnavailableError) or not await self.probe_write():
            self._write_outage.failed(first)
            self.healthy = False
            error = StoreUnavailableError(f"the store could not commit: {first.__class__.__name__}")
            return errors | dict.fromkeys(grouped, error)
        self.healthy = True
        self._write_outage.recovered()
        for key, held in grouped.items():
            try:
                await self._commit(held)
            except Exception as exc:  # this call's rows alone, or the connection failed meanwhile
                refused = refused_rows(exc)
                if refused is None:  # the error does not say: a database that still writes refused it
                    refused = await self.probe_write()
                if refused:
                    errors[key] = self._fail_call(key, f"{exc.__class__.__name__}: {exc}")
                    continue
                self._write_outage.failed(exc)
                self.healthy = False
                errors[key] = StoreUnavailableError(f"the store could not commit: {exc.__class__.__name__}")
        return errors

    def _batch_events(self, batch: list[_Pending], errors: dict[tuple[str, str], StoreUnavailableError]) -> list[Event]:
        """The batch's events, but those of `unsettled` calls (unless appended again)."""
        if not self.unsettled:
            return list(chain.from_iterable(item.events for item in batch))
        kept: list[Event] = []
        for item in batch:
            for event in item.events:
                key = (event.account, event.call_id)
                if item.again or key not in self.unsettled:
                    kept.append(event)
                else:
                    message = f"call {event.call_id}: events before this one are not stored yet; retry"
                    errors[key] = CallUnsettledError(message)
        return kept

    def _without_failed_calls(
        self, events: list[Event], errors: dict[tuple[str, str], StoreUnavailableError]
    ) -> list[Event]:
        kept: list[Event] = []
        for event in events:
            key = (event.account, event.call_id)
            if key in self.failed_calls:
                message = f"call {event.call_id} failed: the store refused its events; start a new call"
                errors[key] = CallFailedError(message, frozenset([key]))
            else:
                kept.append(event)
        return kept

    def _fail_call(self, key: tuple[str, str], reason: str) -> CallFailedError:
        account, call_id = key
        log.error("call %s of account %s failed: the store refused its rows (%s)", call_id, account, reason[:300])
        self.failed_calls[key] = reason
        return CallFailedError(f"call {call_id} could not be stored; it takes no more events", frozenset([key]))

    def call_failed(self, account: str, call_id: str) -> bool:
        return (account, call_id) in self.failed_calls

    @property
    def stalled(self) -> bool:
        """Writes have waited `STALLED_AFTER_S` with no commit, or folds have failed that long."""
        now = asyncio.get_running_loop().time()
        return any(
            since is not None and now - since > STALLED_AFTER_S
            for since in (self._waiting_since, self._fold_failing_since)
        )

    async def probe_write(self) -> bool:
        """One tiny committed write: whether the database takes writes at all right now."""
        value = str(time.time_ns())
        upsert = self._insert(t.meta).values(key="health_probe", value=value)
        upsert = upsert.on_conflict_do_update(index_elements=["key"], set_={"value": value})
        try:
            async with self.engine.begin() as conn:
                await conn.execute(upsert)
        except Exception:  # any driver error means "cannot write"
            return False
        return True

    def _fold_needed(self) -> bool:
        return self._journal is not None and self._journal.holds_any

    async def _fold_journal(self) -> None:
        """File the journal, if anything may be in it: before every read, so reads see every
        committed event.

        Folds run beside the writer's commits: the journal takes appends in a new file meanwhile,
        so the fan-out never waits for a fold, and the fold process runs transactions one at a
        time in the order they were asked for, so a read's fold also waits for any fold in
        flight before it. A read that finds the journal empty waits for the folds in flight all
        the same: they took its rows out of the journal (after a crash, the files the dead node
        left; a call looked up then would hand its seqs out again)."""
        if self._journal_folder is None:
            return
        while not self._fold_needed():
            if await self._folds_committed():
                return
            # One failed or was cancelled: its files are back in the journal, for this read to fold.
        try:
            await self._folding(self._journal_folder)
        except FoldError as exc:
            raise StoreUnavailableError(f"the store could not fold its journal: {exc}") from exc

    async def _folds_committed(self) -> bool:
        """Wait for the folds in flight now; whether every one of them committed."""
        in_flight = list(self._folds_in_flight)
        if in_flight:
            await asyncio.wait(in_flight)  # not gather: a cancelled read must not cancel them
        return all(fold.result() for fold in in_flight)

    def _fold_soon(self) -> asyncio.Task[None]:
        """Start a fold unless one started this way is still running (every second, and when the
        journal holds `FOLD_AT_ROWS` rows); either way, that fold."""
        if self._background_fold is None or self._background_fold.done():
            self._background_fold = asyncio.get_running_loop().create_task(self._fold_quietly(), name="store-fold")
        return self._background_fold

    async def _fold_quietly(self) -> None:
        try:
            await self._fold_journal()
        except Exception as exc:  # the journal keeps its rows; the next fold tries again
            self._fold_outage.failed(exc)
        else:
            self._fold_outage.recovered()

    async def _folding(self, folder: JournalFolder) -> None:
        """Fold the journal's files in one transaction of the fold process: if it fails, the files
        wait for the next; once it commits, they go."""
        journal = self._journal
        files = journal.take() if journal is not None else []
        forget, self._forget = self._forget, []
        settled = asyncio.get_running_loop().create_future()
        self._folds_in_flight.add(settled)
        committed = False
        try:
            failed = await folder.fold(
                Fold([(f.path, f.size) for f in files], [f.marker for f in files], forget)
            )
            committed = True
        except BaseException:
            if journal is not None:
                journal.give_back(files)
            self._forget[:0] = forget
            if self._fold_failing_since is None:
                self._fold_failing_since = asyncio.get_running_loop().time()
            raise
        finally:  # its rows are in the database now, or back in the journal
            self._folds_in_flight.discard(settled)
            settled.set_result(committed)
        self._fold_failing_since = None
        for account, call_id, reason in failed:
            self._fail_call((account, call_id), reason)
        if journal is not None:
            journal.folded(files)
        self._forget.extend(found.marker for found in files)

    async def _fold_forever(self) -> None:
        while True:
            await asyncio.sleep(FOLD_EVERY_S)
            if self._fold_needed():
                self._fold_soon()

    def _settle(self, batch: list[_Pending], errors: dict[tuple[str, str], StoreUnavailableError]) -> None:
        """Resolve each append's future, in append order: failed with the error of its first
        call that failed, else done; each append's `then` right after its future."""
        for item in batch:
            if item.future.done():
                continue
            error = _error_of(item, errors) if errors else None
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(error)
                item.future.exception()  # a producer that went away must not warn
            if item.then is not None:
                self._run_hook(functools.partial(item.then, item.future))

    @staticmethod
    def _run_hook(hook: Callable[[], None]) -> None:
        """A caller's hook, in the writer's task: its failure must not stop later commits."""
        try:
            hook()
        except Exception:  # whatever the hook does wrong is its own; the writer goes on
            log.exception("a hook after a commit failed")

    def _take_batch(self) -> list[_Pending]:
        taken, count = 0, 0
        for item in self._pending:
            taken += 1
            count += len(item.events)
            if count >= self._batch_max:
                break
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _commit(self, events: list[Event]) -> None:
        grouped = by_call(events)
        journal = self._journal
        if journal is not None and (logged := journal_rows(grouped)) is not None:  # no call ends in it
            journal.append(logged)  # durable on return: no round trip
            if journal.unfolded_rows >= FOLD_AT_ROWS:
                self._fold_soon()
            self.commits += 1
            if journal.unfolded_bytes >= JOURNAL_MAX_BYTES:  # the writer is behind: wait for it
                await asyncio.shield(self._fold_soon())
            return
        minutes: list[MinuteRow] = []
        calls = self._call_rows(grouped, minutes)
        minutes = merged_minutes(minutes)
        ends_a_call = any(c["status"] == "ended" for c in calls)
        finals = final_rows(grouped)
        if self._pg is not None and not ends_a_call:
            await self._pg.commit(chunk_rows(grouped), calls, minutes, finals)
            self.commits += 1
            return
        await self._fold_journal()  # the hooks below read the call's events and its calls row
        rows = [dict(zip(CHUNK_COLUMNS, row, strict=True)) for row in chunk_rows(grouped)]
        async with self.engine.begin() as conn:
            if rows:
                await conn.execute(self._events_insert, rows)
            if finals:
                await conn.execute(self._finals_insert, [dict(zip(FINAL_COLUMNS, f, strict=True)) for f in finals])
                if self.dialect == "sqlite":
                    merge, pages = fts_merge(len(finals))
                    await conn.exec_driver_sql(merge, tuple(pages))
            await conn.execute(self._calls_upsert, calls)
            if minutes:
                await conn.execute(self._minutes_upsert, [dict(zip(MINUTE_COLUMNS, m, strict=True)) for m in minutes])
            for event in events:
                if event.type == ENDED:
                    for hook in self.ended_hooks:
                        await hook(conn, event)
        self.commits += 1

    @staticmethod
    def _call_rows(grouped: CallEvents, minutes: list[MinuteRow]) -> list[dict[str, Any]]:
        """One row per call of the batch (`chunks.by_call`): what the upsert merges into `calls`;
        the batch's turns go into `minutes` (`sums.call_sums`)."""
        out: list[dict[str, Any]] = []
        for (account, call_id), held in grouped.items():
            row = rows.new_call_row(account, call_id, held[0].ts, held[-1].seq)
            row.update(zip(rows.SUM_COLUMNS, call_sums(held, minutes), strict=True))
            last = held[-1]  # nothing follows a call's `call.ended`
            if last.type == ENDED:
                row.update(
                    status="ended",
                    ended_at=last.ts,
                    duration_ms=last.data["duration_ms"],
                    end_status=last.data["status"],
                    reason=last.data.get("reason"),
                )
            out.append(row)
        return out

    # Built once: SQLAlchemy memoizes a statement's cache key on the statement object, so a
    # statement rebuilt for every commit would pay for its cache key (and the Python around it)
    # every time.
    # Each table's conflict key and what a row does to the one it meets come from the one spec of
    # the rows (`rows.py`), as the fold's and PostgreSQL's one-statement commit's do.
    @functools.cached_property
    def _events_insert(self) -> Any:
        return self._insert_ignore(t.event_chunks, list(rows.CHUNK_KEY))

    @functools.cached_property
    def _finals_insert(self) -> Any:
        return self._insert_ignore(t.transcript_finals, list(rows.FINAL_KEY))

    @functools.cached_property
    def _minutes_upsert(self) -> Any:
        return self._upsert(t.quality_minutes, rows.MINUTE_KEY, rows.minutes_update_sql())

    @functools.cached_property
    def _calls_upsert(self) -> Any:
        return self._upsert(t.calls, rows.CALL_KEY, rows.calls_update_sql(self.dialect))

    def _upsert(self, table: sa.Table, key: Sequence[str], update: dict[str, str]) -> Any:
        """An insert into `table` that updates the row it meets at `key` by `update` (SET
        expressions in SQL)."""
        return self._insert(table).on_conflict_do_update(
            index_elements=list(key), set_={column: sa.literal_column(expr) for column, expr in update.items()}
        )


def _metadata_of(text: str | None) -> dict[str, Any] | None:
    return None if text is None else dict(orjson.loads(text))


def encode_cursor(started_at: int, call_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([started_at, call_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        started, call_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(started, int) or not isinstance(call_id, str):
            raise TypeError
    except Exception as exc:
        raise ValueError("cursor is not one this server issued") from exc
    return started, call_id


def _error_for(item: _Pending, error: StoreUnavailableError | None) -> StoreUnavailableError | None:
    """`error` of a call as it bears on `item`: none when the item was appended again (it went
    in) and the error only says the call is unsettled."""
    return None if item.again and isinstance(error, CallUnsettledError) else error


def _error_of(item: _Pending, errors: dict[tuple[str, str], StoreUnavailableError]) -> StoreUnavailableError | None:
    """The append's error: a failed commit's, or one naming every call of the append that failed."""
    failed = frozenset(
        key for e in item.events if _error_for(item, errors.get(key := (e.account, e.call_id))) is not None
    )
    if not failed:
        return None
    first = errors[next(iter(failed))]
    if not isinstance(first, CallFailedError):
        return first
    return first if len(failed) == 1 else CallFailedError(str(first), failed)
