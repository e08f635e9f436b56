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
        ("http://localhost/hook", "loopback"),
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
    with pytest.raises(UnsafeURLError, match=r"10\.0\.0\.5"):
        await check_url("https://hooks.example.com/x", allow_private=False)


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
