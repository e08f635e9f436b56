"""The SSRF guard: which URLs a webhook may point at, and how delivery pins the checked address."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from callstream.webhooks.ssrf import UnsafeURLError, check_url, forbidden_reason, pinned


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        # 6to4 (2002::/16) carries an IPv4 in bits 16-48: a relay delivers to it.
        ("2002:7f00:1::", "loopback, in a 6to4 address"),
        ("2002:c0a8:101::1", "private, in a 6to4 address"),
        ("2002:a00:5::", "private, in a 6to4 address"),
        ("2002:a9fe:a9fe::", "link-local, in a 6to4 address"),
        # Teredo (2001::/32): the client's IPv4 is the last 32 bits, inverted.
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback, in a Teredo address"),
        ("2001:0:4136:e378:8000:63bf:3f57:fefe", "private, in a Teredo address"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "link-local, in a Teredo address"),
    ],
)
def test_non_public_addresses_are_named(address: str, reason: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("http:///nohost", "no host"),
        ("http://exa mple.com/", "whitespace|not valid"),
        ("http://" + "a" * 2050 + ".com/", "longer"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://localhost/hook", "does not resolve, or resolves to a non-public address"),
        ("http://[2002:7f00:1::]:6379/", "loopback, in a 6to4 address"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "loopback, in a Teredo address"),
    ],
)
async def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(UnsafeURLError, match=message):
        await check_url(url, allow_private=False)


async def test_allow_private_lets_loopback_through() -> None:
    checked = await check_url("http://localhost:9/hook", allow_private=True)
    assert checked.addresses
    assert all(a.is_loopback for a in checked.addresses)


async def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(UnsafeURLError, match="does not resolve"):
        await check_url("https://no-such-host.invalid/hook", allow_private=True)


def _fake_dns(addresses: list[str]) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return getaddrinfo


async def test_any_private_answer_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with one public and one internal address is refused: the client might pick either."""
    import asyncio

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_dns(["93.184.216.34", "10.0.0.5"]))
    with pytest.raises(UnsafeURLError, match="does not resolve, or resolves to a non-public address"):
        await check_url("https://hooks.example.com/x", allow_private=False)


@pytest.mark.parametrize(
    "answer",
    [["10.20.30.40"], ["127.0.0.1"], ["169.254.169.254"], ["93.184.216.34", "172.16.5.6"], ["2002:a00:5::"]],
)
async def test_a_refusal_never_says_what_a_name_resolves_to(
    monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    """The message a tenant sees must not map the operator's internal DNS for them: it names no
    address and no kind of address, and reads the same as for a name that does not exist."""
    import asyncio

    with pytest.raises(UnsafeURLError) as unknown:
        await check_url("https://no-such-host.invalid/x", allow_private=False)
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", _fake_dns(answer))
    with pytest.raises(UnsafeURLError) as internal:
        await check_url("https://no-such-host.invalid/x", allow_private=False)
    message = str(internal.value)
    assert not [address for address in answer if address in message]
    assert message == str(unknown.value)


@pytest.mark.parametrize("address", ["2002:808:808::1", "2002:5db8:d822::"])
def test_6to4_of_a_public_ipv4_passes(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


async def test_pinned_request_targets_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", _fake_dns(["93.184.216.34"]))
    checked = await check_url("https://hooks.example.com:8443/in?x=1", allow_private=False)
    url, headers, extensions = pinned(checked)
    assert str(url) == "https://93.184.216.34:8443/in?x=1"
    assert headers == {"host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}


async def test_pinned_ipv6_is_bracketed() -> None:
    checked = await check_url("http://[::1]:8080/x", allow_private=True)
    url, headers, extensions = pinned(checked)
    assert str(url) == "http://[::1]:8080/x"
    assert headers == {"host": "[::1]:8080"}
    assert extensions == {}
