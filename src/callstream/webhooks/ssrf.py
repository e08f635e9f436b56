"""The SSRF guard: a webhook URL must not make the server call into its own network.

A user registers a URL and the server later POSTs to it, from inside the operator's network.
Without a guard, `http://169.254.169.254/…` (cloud metadata), `http://localhost:6379` or any
RFC 1918 address would be reachable through us. The host is resolved and every address it
resolves to must be public. The check runs at registration (a clear 422 early) and again at
every delivery, because DNS may change after registration (rebinding); the worker then
connects to the address it checked, not to a fresh lookup (see `pinned`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

__all__ = [
    "IPAddress",
    "UnsafeURLError",
    "check_url",
    "forbidden_reason",
    "parse_url",
    "pinned",
    "resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048
_PRIVATE_HINT = (
    "the server refuses private, loopback and link-local addresses unless started with "
    "--webhooks-allow-private"
)


class UnsafeURLError(ValueError):
    """The URL is malformed, does not resolve, or resolves to an address we refuse to call."""


def parse_url(url: str) -> httpx.URL:
    """Syntax only: http(s), a host, no whitespace, a sane length."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeURLError(f"url is not valid: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURLError("url must start with http:// or https://")
    if not parsed.host:
        raise UnsafeURLError("url has no host")
    if any(c.isspace() for c in url):
        raise UnsafeURLError("url must not contain whitespace")
    return parsed


def forbidden_reason(address: IPAddress) -> str | None:
    """Why an address is not a public one, or None when it is.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4 `2002::/16`, Teredo `2001::/32`)
    is judged by that IPv4 too: a relay or the host's own stack would deliver to it.
    """
    for inner, how in _embedded_ipv4(address):
        if (reason := _own_reason(inner)) is not None:
            return f"{reason}{how}"
    return _own_reason(address)


def _embedded_ipv4(address: IPAddress) -> list[tuple[ipaddress.IPv4Address, str]]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    inner: list[tuple[ipaddress.IPv4Address, str]] = []
    if address.ipv4_mapped is not None:
        inner.append((address.ipv4_mapped, ""))  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.sixtofour is not None:
        inner.append((address.sixtofour, ", in a 6to4 address"))
    if address.teredo is not None:
        server, client = address.teredo
        inner += [(server, ", in a Teredo address"), (client, ", in a Teredo address")]
    return inner


def _own_reason(address: IPAddress) -> str | None:
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Carrier-grade NAT, relay anycast and other special-purpose blocks.
        ("not globally routable", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURLError(f"url host {host!r} does not resolve: {exc}") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeURLError(f"url host {host!r} does not resolve")
    return addresses


@dataclass(frozen=True, slots=True)
class CheckedURL:
    url: httpx.URL
    addresses: list[IPAddress]


async def check_url(url: str, *, allow_private: bool) -> CheckedURL:
    """Parse and resolve; refuse if ANY address is non-public (an attacker controls the order).

    A refusal never says what a name resolves to, nor whether it resolves at all: either would
    let a tenant map the operator's internal DNS through this message.
    """
    parsed = parse_url(url)
    if allow_private:
        addresses = await resolve(parsed.host, _port(parsed))
        return CheckedURL(parsed, addresses)
    literal = _ip_literal(parsed.host)
    if literal is not None:
        if (reason := forbidden_reason(literal)) is not None:
            raise UnsafeURLError(
                f"url host {parsed.host!r} is not a public address ({reason}); {_PRIVATE_HINT}"
            )
        return CheckedURL(parsed, [literal])
    try:
        addresses = await resolve(parsed.host, _port(parsed))
    except UnsafeURLError:
        addresses = []
    if not addresses or any(forbidden_reason(a) is not None for a in addresses):
        raise UnsafeURLError(
            f"url host {parsed.host!r} does not resolve, or resolves to a non-public address; {_PRIVATE_HINT}"
        )
    return CheckedURL(parsed, addresses)


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def pinned(checked: CheckedURL) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The request to send to the checked address itself: URL, extra headers, extensions.

    Connecting to the IP we vetted (with the original `Host` header, and the original name for
    TLS SNI and certificate verification) closes the window in which a second DNS lookup by
    the HTTP client could return a different, internal address.
    """
    address = checked.addresses[0]
    url = checked.url
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    host_header = url.netloc.decode("ascii").rsplit("@", 1)[-1]
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=host), {"host": host_header}, extensions
