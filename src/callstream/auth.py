"""Credentials: API keys (hashed at rest), browser JWTs (HS256), and the Principal a request acts as.

A key is looked up by the SHA-256 of its secret, cached for a second or two so that hot paths do
not hit the database, and a revocation reaches every node within `revocation_poll_s` plus that
cache lifetime. A JWT is minted by a key and names it (`key` claim), so revoking the key also
ends the browser sessions it minted.

While the store cannot be reached, a key it confirmed within the last `KEY_OUTAGE_GRACE_S`
keeps authenticating (so an outage of the database does not log every producer and dashboard
out); any other credential gets `StoreUnavailableError` (503), never a 401 the store did not say.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt

from callstream.session_names import check_session_name
from callstream.store.sql import KeyRecord, SqlStore, StoreUnavailableError

SCOPES: Final = frozenset({"publish", "subscribe", "control", "listen", "admin"})
# What a browser JWT may carry: `subscribe` always, `control` and `listen` when its minting key has them.
TOKEN_SCOPES: Final = frozenset({"subscribe", "control", "listen"})
ALGORITHM: Final = "HS256"
LEEWAY_S: Final = 5
_CACHE_TTL_S: Final = 2.0
KEY_OUTAGE_GRACE_S: Final = 300.0  # docs/protocol.md, Outages
_CACHE_MAX: Final = 10_000


class AuthError(Exception):
    """The credential is missing, unknown, revoked, malformed or expired."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request or connection acts as."""

    account: str
    scopes: frozenset[str]
    key_id: str
    kind: str  # "key" or "jwt"
    calls: frozenset[str] | None = None  # None: every call of the account
    expires_at: float | None = None  # unix seconds, JWTs only
    session_end: int | None = None  # unix seconds, dashboard session JWTs only (`session_exp`)
    name: str | None = None  # the key's name (a JWT's: its minting key's)
    session_name: str | None = None  # a JWT's own `name` claim (`session_names`)

    @property
    def shown_as(self) -> str | None:
        """Who asked, in audit events: the session's own name, else the key's."""
        return self.session_name or self.name

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def may_see(self, call_id: str) -> bool:
        return self.calls is None or call_id in self.calls


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - SCOPES
    if not scopes or unknown:
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(sorted(SCOPES))}")
    return scopes


def key_id_of(secret: str) -> str:
    """A short, stable, non-secret id for a signing secret (the JWT `kid`)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


class TokenSigner:
    """Mints and verifies browser JWTs. The algorithm is pinned: no `none`, no key confusion.

    A keyring: tokens are signed with the current secret and carry its `kid`; verification picks
    the secret by `kid` among the current one and `previous` ones, so rotating the secret (the
    old one moves to `previous`) leaves tokens already handed out valid until they expire. A
    token without a `kid`, or with one the ring does not hold, is refused.
    """

    def __init__(
        self,
        secret: str,
        *,
        default_ttl_s: int = 900,
        max_ttl_s: int = 86_400,
        previous: Sequence[str] = (),
    ) -> None:
        self._secret = secret
        self.kid = key_id_of(secret)
        self._ring: dict[str, str] = {self.kid: secret}
        self.trust(previous)
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s

    def trust(self, previous: Sequence[str]) -> None:
        """Accept tokens signed by these earlier secrets too (never mint with them)."""
        for old in previous:
            self._ring.setdefault(key_id_of(old), old)

    @property
    def kids(self) -> list[str]:
        return list(self._ring)

    def mint(
        self,
        account: str,
        key_id: str,
        *,
        ttl_s: int | None = None,
        calls: list[str] | None = None,
        scopes: frozenset[str] = frozenset({"subscribe"}),
        extra: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> tuple[str, int]:
        """A JWT for `account`, minted by `key_id`; `scopes` within TOKEN_SCOPES (the caller
        checks that the minting key holds them); `name`: the session's own (`session_names`)."""
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= self.max_ttl_s:
            raise ValueError(f"ttl_s must be between 1 and {self.max_ttl_s}")
        if "subscribe" not in scopes or not scopes <= TOKEN_SCOPES:
            raise ValueError(f"a token's scope is subscribe, optionally with {', '.join(sorted(TOKEN_SCOPES - {'subscribe'}))}")
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": account,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(sorted(scopes, key=lambda s: s != "subscribe")),
            "key": key_id,
        }
        if calls is not None:
            claims["calls"] = calls
        if name is not None:
            claims["name"] = check_session_name(name)
        claims.update(extra or {})
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, now + ttl

    def _secret_for(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"invalid token: the algorithm must be {ALGORITHM}")
        kid = header.get("kid")
        secret = self._ring.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise AuthError("invalid token: unknown signing key (kid)")
        return secret

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this ring signed, still in date, with a lifetime within the maximum.

        Not whether the key that minted it is still live: that takes the store, so it is
        `Authenticator.authenticate`'s job, and every use of a JWT goes through there.
        """
        secret = self._secret_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub", "scope", "key"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired", expired=True) from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        lifetime = int(claims["exp"]) - int(claims["iat"])  # PyJWT checked that both convert
        if lifetime > self.max_ttl_s:  # our secret, but not minted under this node's rules
            raise AuthError(f"invalid token: its lifetime exceeds the maximum of {self.max_ttl_s} s")
        calls = claims.get("calls")
        if token_scopes(claims) is None or not isinstance(claims.get("sub"), str):
            raise AuthError("invalid token: wrong scope or subject")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, str) for c in calls)):
            raise AuthError("invalid token: calls must be a list of call ids")
        if "name" in claims:
            try:
                check_session_name(claims["name"])
            except ValueError as exc:
                raise AuthError(f"invalid token: {exc}") from None
        return claims


def token_scopes(claims: dict[str, Any]) -> frozenset[str] | None:
    """A JWT's scopes (space-separated, as in OAuth), or None when they are not a token's."""
    scope = claims.get("scope")
    scopes = frozenset(scope.split(" ")) if isinstance(scope, str) else frozenset()
    return scopes if "subscribe" in scopes and scopes <= TOKEN_SCOPES else None


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


class Authenticator:
    """Turns a credential into a Principal, caching key look-ups briefly.

    The one place this happens, for every path (handshakes, REST, the dashboard's refresh, the
    socket's `auth` message): a JWT is accepted only while the key that minted it is live, so a
    revocation ends its sessions within the same bound as the key's own connections.

    Look-ups are single-flight: when many sockets present the same key at once (every client of
    a node reconnecting after it restarts), one store read answers all of them, instead of one
    read each queueing behind the others on the store's connections.

    Every key the store returned is remembered with when it did (`_confirmed`): while the store
    is down, that record answers for up to `outage_grace_s` after it, and is cached like a read
    (so a dead store is asked once per key every couple of seconds, not on every request).
    """

    def __init__(self, store: SqlStore, signer: TokenSigner, *, outage_grace_s: float = KEY_OUTAGE_GRACE_S) -> None:
        self.store = store
        self.signer = signer
        self.outage_grace_s = outage_grace_s
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._confirmed: dict[str, tuple[float, KeyRecord]] = {}  # by key id: when the store last returned it
        self._ids: dict[str, str] = {}  # a secret's cache key → its key's id (a JWT names the id)
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}  # reads under way
        self._generation = 0  # bumped by forget(): a read begun before must not fill the cache

    async def key(self, secret: str) -> KeyRecord | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        return await self._cached(digest, lambda: self.store.key_by_secret(secret))

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        return await self._cached("id:" + key_id, lambda: self.store.key_by_id(key_id))

    async def _cached(
        self, cache_key: str, load: Callable[[], Awaitable[KeyRecord | None]]
    ) -> KeyRecord | None:
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        task = self._inflight.get(cache_key)
        if task is None:
            # A task of its own: a handshake cancelled meanwhile must not cancel the others' read.
            task = asyncio.ensure_future(self._load(cache_key, load, self._generation))
            self._inflight[cache_key] = task
            task.add_done_callback(lambda done: self._settled(cache_key, done))
        return await asyncio.shield(task)

    async def _load(
        self, cache_key: str, load: Callable[[], Awaitable[KeyRecord | None]], generation: int
    ) -> KeyRecord | None:
        try:
            record = await load()
        except StoreUnavailableError:
            record = self._recently_confirmed(cache_key)
            if record is None:
                raise  # neither yes nor no: the caller answers 503
        else:
            if generation == self._generation:
                self._confirm(cache_key, record)
        if generation == self._generation:
            if len(self._cache) > _CACHE_MAX:
                self._cache.clear()
            self._cache[cache_key] = (time.monotonic() + _CACHE_TTL_S, record)
        return record

    def _confirm(self, cache_key: str, record: KeyRecord | None) -> None:
        """The store just returned `record` for `cache_key`: it answers for the key (by its
        secret or, for the JWTs it minted, by its id) during an outage within the grace."""
        if record is None:
            return
        if len(self._confirmed) > _CACHE_MAX or len(self._ids) > _CACHE_MAX:
            horizon = time.monotonic() - self.outage_grace_s
            self._confirmed = {k: v for k, v in self._confirmed.items() if v[0] >= horizon}
            self._ids = {k: v for k, v in self._ids.items() if v in self._confirmed}
            if len(self._confirmed) > _CACHE_MAX or len(self._ids) > _CACHE_MAX:
                self._confirmed.clear()
                self._ids.clear()
        if not cache_key.startswith("id:"):
            self._ids[cache_key] = record.id
        self._confirmed[record.id] = (time.monotonic(), record)

    def _recently_confirmed(self, cache_key: str) -> KeyRecord | None:
        """The record the store returned for this key within the grace period, if it did."""
        key_id = cache_key[3:] if cache_key.startswith("id:") else self._ids.get(cache_key)
        known = None if key_id is None else self._confirmed.get(key_id)
        if known is None or time.monotonic() - known[0] > self.outage_grace_s:
            return None
        return known[1]

    def _settled(self, cache_key: str, task: asyncio.Future[KeyRecord | None]) -> None:
        if self._inflight.get(cache_key) is task:
            del self._inflight[cache_key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has it raised; none may be left to

    def forget(self, revoked: Collection[str] = ()) -> None:
        """Drop what is cached (keys were revoked: their ids); reads in flight answer but are not
        kept, and the revoked keys no longer answer for themselves during a store outage."""
        self._cache.clear()
        self._inflight.clear()
        self._generation += 1
        for key_id in revoked:
            self._confirmed.pop(key_id, None)

    async def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise AuthError("a credential is required: ?token=, Authorization: Bearer, or subprotocol")
        if looks_like_jwt(credential):
            return await self._from_jwt(credential)
        record = await self.key(credential)
        if record is None or record.revoked_at is not None:
            raise AuthError("unknown or revoked API key")
        return Principal(record.account, record.scopes, record.id, "key", name=record.name)

    async def _from_jwt(self, token: str) -> Principal:
        claims = self.signer.verify(token)
        minted_by = await self.key_by_id(str(claims["key"]))
        if minted_by is None or minted_by.revoked_at is not None or minted_by.account != claims["sub"]:
            raise AuthError("the key that minted this token was revoked")
        calls = claims.get("calls")
        session_end = claims.get("session_exp")
        # `control` and `listen` only while the minting key still has them: narrowing a key
        # narrows its tokens.
        scopes = (token_scopes(claims) or frozenset()) & (minted_by.scopes | {"subscribe"})
        return Principal(
            claims["sub"],
            scopes,
            minted_by.id,
            "jwt",
            None if calls is None else frozenset(calls),
            float(claims["exp"]),
            session_end if isinstance(session_end, int) else None,
            minted_by.name,
            claims.get("name"),
        )


def new_signing_secret() -> str:
    return secrets.token_urlsafe(48)
