"""Which callback URLs the service may call: checked at submit (``validate_callback_url``) and
again, after DNS resolution, before every delivery attempt (``resolve_and_check``, used by
``engine.operations.webhooks``): only http(s), no credentials in the URL, never link-local or
cloud-metadata addresses, private and loopback ranges only when allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.errors import BadCallbackUrl

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    allow_private: bool = False
    allow_loopback: bool = False  # tests and single-host setups only


def check_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: UrlPolicy) -> None:
    """Raise ``BadCallbackUrl`` if the service must not connect to ``addr``."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr in METADATA_ADDRESSES:
        raise BadCallbackUrl("cloud metadata addresses are not allowed")
    if any(addr in net for net in LINK_LOCAL):
        raise BadCallbackUrl("link-local addresses are not allowed")
    if addr.is_unspecified or addr.is_multicast or addr.is_reserved:
        raise BadCallbackUrl("unspecified, multicast and reserved addresses are not allowed")
    if addr.is_loopback:
        if not policy.allow_loopback:
            raise BadCallbackUrl("loopback addresses are not allowed")
        return
    if not policy.allow_private and (addr.is_private or any(addr in net for net in PRIVATE)):
        raise BadCallbackUrl("private network addresses are not allowed")


def validate_callback_url(url: str, policy: UrlPolicy = UrlPolicy()) -> str:
    """The URL, if it may be called back; ``BadCallbackUrl`` naming the reason otherwise.
    Host names are checked again after resolution, at delivery (``resolve_and_check``)."""
    if len(url) > MAX_URL_LENGTH:
        raise BadCallbackUrl(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadCallbackUrl(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise BadCallbackUrl("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise BadCallbackUrl("credentials in the URL are not allowed; sign, don't embed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise BadCallbackUrl("the URL has no host")
    if port == 0:
        raise BadCallbackUrl("port 0 is not allowed")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        if host in METADATA_HOSTS:
            raise BadCallbackUrl("cloud metadata hosts are not allowed") from None
        if (host == "localhost" or host.endswith(".localhost")) and not policy.allow_loopback:
            raise BadCallbackUrl("loopback addresses are not allowed") from None
        return url
    check_address(addr, policy)
    return url


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_and_check(url: str, policy: UrlPolicy, resolve: Resolver) -> None:
    """Every address the URL's host resolves to must pass ``check_address`` (a name pointing
    at 169.254.169.254 is refused like the literal)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    try:
        ipaddress.ip_address(host)
        return  # literals were checked by validate_callback_url
    except ValueError:
        pass
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(host, port)
    except OSError as exc:
        raise BadCallbackUrl(f"cannot resolve host: {exc.strerror or exc}") from None
    if not addresses:
        raise BadCallbackUrl("host resolves to no address")
    for a in addresses:
        check_address(ipaddress.ip_address(a.split("%")[0]), policy)
