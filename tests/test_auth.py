"""JWT verification: the algorithm is pinned, `exp` is required, keys rotate by `kid`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest

from callstream.auth import LEEWAY_S, AuthError, TokenSigner, key_id_of

SECRET = "current-secret-" + "c" * 40
OLD = "previous-secret-" + "p" * 40
# What an attacker could know in an alg-confusion attack: a "public key" used as an HMAC secret.
PUBLIC_PEM = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1L\n-----END PUBLIC KEY-----\n"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hand_signed(
    header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any = hashlib.sha256
) -> str:
    """A JWT built by hand, so any header can be paired with any HMAC signature."""
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "acme", "iat": now, "exp": now + 60, "scope": "subscribe", "key": "key_1", **over}


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(SECRET)


def test_a_minted_token_verifies_and_names_its_kid(signer: TokenSigner) -> None:
    token, _ = signer.mint("acme", "key_1")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": key_id_of(SECRET), "typ": "JWT"}
    assert signer.verify(token)["sub"] == "acme"


def test_alg_none_is_refused(signer: TokenSigner) -> None:
    header = b64(orjson.dumps({"alg": "none", "kid": signer.kid}))
    token = f"{header}.{b64(orjson.dumps(claims()))}."
    with pytest.raises(AuthError, match="algorithm"):
        signer.verify(token)
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": signer.kid})
    with pytest.raises(AuthError):
        signer.verify(unsigned)


def test_hs512_with_the_right_secret_is_refused(signer: TokenSigner) -> None:
    hand = hand_signed({"alg": "HS512", "kid": signer.kid}, claims(), SECRET.encode(), hashlib.sha512)
    with pytest.raises(AuthError):
        signer.verify(hand)


def test_rs256_confusion_is_refused(signer: TokenSigner) -> None:
    # The classic confusion: header says RS256, "signed" with HMAC over a public key; or the
    # header says HS256 and the public key is the HMAC secret. Neither is our secret or algorithm.
    for alg, key in (
        ("RS256", PUBLIC_PEM.encode()),
        ("RS256", SECRET.encode()),
        ("HS256", PUBLIC_PEM.encode()),
    ):
        token = hand_signed({"alg": alg, "typ": "JWT", "kid": signer.kid}, claims(), key)
        with pytest.raises(AuthError):
            signer.verify(token)


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "scope", "key"])
def test_required_claims(signer: TokenSigner, missing: str) -> None:
    body = claims()
    del body[missing]
    token = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": signer.kid})
    with pytest.raises(AuthError, match=missing):
        signer.verify(token)


def test_expiry_has_a_small_leeway(signer: TokenSigner) -> None:
    now = int(time.time())
    within = jwt.encode(claims(exp=now - 2), SECRET, algorithm="HS256", headers={"kid": signer.kid})
    assert signer.verify(within)["sub"] == "acme"
    past = jwt.encode(claims(exp=now - LEEWAY_S - 5), SECRET, algorithm="HS256", headers={"kid": signer.kid})
    with pytest.raises(AuthError) as caught:
        signer.verify(past)
    assert caught.value.expired


def test_rotation_keeps_old_tokens_until_they_expire() -> None:
    old_signer = TokenSigner(OLD)
    old_token, _ = old_signer.mint("acme", "key_1", ttl_s=60)
    rotated = TokenSigner(SECRET, previous=[OLD])
    assert rotated.verify(old_token)["sub"] == "acme"  # signed by a previous key: still valid
    new_token, _ = rotated.mint("acme", "key_1")
    assert jwt.get_unverified_header(new_token)["kid"] == key_id_of(SECRET)  # minted with the current
    with pytest.raises(AuthError, match="kid"):
        old_signer.verify(new_token)
    expired = jwt.encode(
        claims(exp=int(time.time()) - 60), OLD, algorithm="HS256", headers={"kid": key_id_of(OLD)}
    )
    with pytest.raises(AuthError) as caught:
        rotated.verify(expired)
    assert caught.value.expired
    with pytest.raises(AuthError, match="kid"):
        TokenSigner(SECRET).verify(old_token)  # the old key dropped from the ring: refused


def test_unknown_or_missing_kid_is_refused(signer: TokenSigner) -> None:
    for header in ({"alg": "HS256", "kid": "deadbeef0000"}, {"alg": "HS256"}, {"alg": "HS256", "kid": 7}):
        token = hand_signed(header, claims(), SECRET.encode())
        with pytest.raises(AuthError, match=r"(?i)kid|key id"):
            signer.verify(token)


def test_a_kid_cannot_select_another_secret() -> None:
    # A token signed with the old secret but naming the current kid fails the signature check.
    ring = TokenSigner(SECRET, previous=[OLD])
    token = jwt.encode(claims(), OLD, algorithm="HS256", headers={"kid": key_id_of(SECRET)})
    with pytest.raises(AuthError, match=r"(?i)signature"):
        ring.verify(token)


@pytest.mark.parametrize("garbage", ["", "a.b.c", "eyJ.eyJ.x", "eyJhbGciOiJIUzI1NiJ9.e30.", "...."])
def test_garbage_is_an_auth_error(signer: TokenSigner, garbage: str) -> None:
    with pytest.raises(AuthError):
        signer.verify(garbage)


def test_a_lifetime_over_the_maximum_is_refused() -> None:
    # Signed with our secret (a leaked one, or a node configured with a longer maximum): exp − iat
    # still may not exceed this node's maximum TTL, however far exp is from now.
    signer = TokenSigner(SECRET, max_ttl_s=600)
    now = int(time.time())
    at_max = jwt.encode(claims(iat=now, exp=now + 600), SECRET, algorithm="HS256", headers={"kid": signer.kid})
    assert signer.verify(at_max)["sub"] == "acme"
    cases: list[tuple[Any, Any]] = [
        (now, now + 601),
        (now - 86_000, now + 60),
        (now, now + 10 * 365 * 86_400),
        (str(now), str(now + 601)),  # numbers as strings: PyJWT takes them, so must we
    ]
    for iat, exp in cases:
        token = jwt.encode(claims(iat=iat, exp=exp), SECRET, algorithm="HS256", headers={"kid": signer.kid})
        with pytest.raises(AuthError, match="lifetime") as caught:
            signer.verify(token)
        assert not caught.value.expired
