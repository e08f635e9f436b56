"""The Authenticator over a real store (SQLite and PostgreSQL): concurrent handshakes of one key.

A reconnect storm presents the same key thousands of times at once; each must get its answer,
the store must be read once (not once per socket), and a revocation must still win.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callstream.auth import Authenticator, AuthError, TokenSigner, new_signing_secret
from callstream.store import SqlStore


def counting_reads(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every key read that reaches the store (the real read still runs)."""
    reads: list[str] = []
    real = store.key_by_secret

    async def key_by_secret(secret: str) -> Any:
        reads.append(secret)
        return await real(secret)

    monkeypatch.setattr(store, "key_by_secret", key_by_secret)
    return reads


async def test_a_burst_of_one_key_reads_the_store_once(
    store: SqlStore, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, secret = await store.create_key(account, frozenset({"subscribe"}))
    reads = counting_reads(store, monkeypatch)
    auth = Authenticator(store, TokenSigner(new_signing_secret()))

    principals = await asyncio.gather(*(auth.authenticate(secret) for _ in range(500)))

    assert {(p.account, p.key_id) for p in principals} == {(account, record.id)}
    assert len(reads) == 1


async def test_a_cancelled_handshake_does_not_fail_the_others(
    store: SqlStore, account: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, secret = await store.create_key(account, frozenset({"subscribe"}))
    auth = Authenticator(store, TokenSigner(new_signing_secret()))
    first = asyncio.ensure_future(auth.authenticate(secret))
    await asyncio.sleep(0)  # the first one started the read
    others = [asyncio.ensure_future(auth.authenticate(secret)) for _ in range(20)]
    await asyncio.sleep(0)
    first.cancel()

    principals = await asyncio.gather(*others)

    assert first.cancelled()
    assert {p.key_id for p in principals} == {record.id}


async def test_unknown_keys_are_refused_together(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = counting_reads(store, monkeypatch)
    auth = Authenticator(store, TokenSigner(new_signing_secret()))

    outcomes = await asyncio.gather(*(auth.authenticate("cs_nope") for _ in range(50)), return_exceptions=True)

    assert all(isinstance(o, AuthError) for o in outcomes)
    assert len(reads) == 1


async def test_revocation_wins_over_the_cache(store: SqlStore, account: str) -> None:
    record, secret = await store.create_key(account, frozenset({"subscribe"}))
    auth = Authenticator(store, TokenSigner(new_signing_secret()))
    assert (await auth.authenticate(secret)).key_id == record.id

    await store.revoke_key(record.id)
    auth.forget()  # what the revocation poll does on every node

    with pytest.raises(AuthError, match="revoked"):
        await auth.authenticate(secret)
