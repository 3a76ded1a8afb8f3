"""Task webhooks: when a task ends, POST its terminal event to the task's callback URL.

The body is signed with HMAC-SHA256 over ``f"{timestamp}.".encode() + body`` and sent as
``X-AIIS-Signature: t=<unix>,v1=<hex>`` (receivers check it with ``verify_signature``). 5xx,
408, 429, timeouts and transport errors are retried with capped exponential backoff, up to
``max_attempts``; every attempt produces a ``DeliveryAttempt`` record for the event log.

URLs are checked at submit (``validate_callback_url``) and again, after DNS resolution, before
every attempt: only http(s), no credentials in the URL, never link-local or cloud-metadata
addresses, private and loopback ranges only when allowed. Redirects are not followed (a
redirect is the classic way around such checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, SecretStr

from engine.errors import BadCallbackUrl

SIGNATURE_HEADER = "X-AIIS-Signature"
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


# --- signatures ------------------------------------------------------------------------------


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: bytes | str,
    header: str,
    body: bytes,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """For receivers: True when ``header`` carries a valid v1 signature of ``body`` made within
    ``tolerance_s`` of ``now`` (replays of old deliveries fail). Several v1 values are allowed
    (secret rotation)."""
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(key, body, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, c) for c in candidates)


# --- delivery --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    max_attempts: int = 6  # about 1+2+4+8+16 s of waiting in all
    base_s: float = 1.0
    max_delay_s: float = 60.0
    timeout_s: float = 10.0
    max_body_bytes: int = 1_000_000


def next_delay(policy: DeliveryPolicy, attempt: int) -> float:
    """Wait before attempt ``attempt + 1`` (exponential, capped)."""
    return float(min(policy.max_delay_s, policy.base_s * 2 ** (attempt - 1)))


def retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


Outcome = Literal["delivered", "retrying", "failed", "rejected"]


class DeliveryAttempt(BaseModel):
    """One delivery attempt (the integrator turns it into a ``WebhookAttempted`` event)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delivery_id: str
    task_id: str
    url: str  # without query and fragment: they may carry tokens
    attempt: int
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    duration_ms: int
    next_delay_s: float | None = None
    ts: int


def _safe_url(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.hostname or "", p.path, "", ""))


OnAttempt = Callable[[DeliveryAttempt], Awaitable[None]]


class WebhookNotifier:
    """Delivers signed task results to callback URLs, retrying with backoff."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        secret: SecretStr,
        *,
        policy: DeliveryPolicy = DeliveryPolicy(),
        urls: UrlPolicy = UrlPolicy(),
        on_attempt: OnAttempt | None = None,
        resolve: Resolver = system_resolver,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self._secret = secret
        self.policy = policy
        self.urls = urls
        self.on_attempt = on_attempt
        self.resolve = resolve
        self.sleep = sleep

    async def deliver(
        self, task_id: str, url: str, payload: Mapping[str, Any], event_type: str = ""
    ) -> DeliveryAttempt:
        """POST ``payload`` until delivered or out of attempts; returns the last attempt."""
        body = orjson.dumps(payload)
        delivery_id = uuid.uuid4().hex
        attempt = 0
        while True:
            attempt += 1
            record = await self._attempt(delivery_id, task_id, url, body, event_type, attempt)
            if self.on_attempt is not None:
                await self.on_attempt(record)
            if record.outcome != "retrying" or record.next_delay_s is None:
                return record
            await self.sleep(record.next_delay_s)

    async def _attempt(
        self, delivery_id: str, task_id: str, url: str, body: bytes, event_type: str, attempt: int
    ) -> DeliveryAttempt:
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry = False

        def done(outcome: Outcome) -> DeliveryAttempt:
            last = attempt >= self.policy.max_attempts
            if outcome == "retrying" and last:
                outcome = "failed"
            return DeliveryAttempt(
                delivery_id=delivery_id,
                task_id=task_id,
                url=_safe_url(url),
                attempt=attempt,
                outcome=outcome,
                status=status,
                error=error,
                duration_ms=int((time.monotonic() - started) * 1000),
                next_delay_s=next_delay(self.policy, attempt) if outcome == "retrying" else None,
                ts=int(time.time() * 1000),
            )

        if len(body) > self.policy.max_body_bytes:
            error = f"body of {len(body)} bytes exceeds {self.policy.max_body_bytes}"
            return done("rejected")
        try:
            validate_callback_url(url, self.urls)
            await resolve_and_check(url, self.urls, self.resolve)
        except BadCallbackUrl as exc:
            error = exc.message
            return done("rejected")
        now = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "aiis-webhooks/1",
            SIGNATURE_HEADER: sign(self._secret.get_secret_value().encode(), body, now),
            "X-AIIS-Delivery": delivery_id,
            "X-AIIS-Task": task_id,
            "X-AIIS-Event": event_type,
        }
        try:
            response = await self.client.post(
                url,
                content=body,
                headers=headers,
                timeout=self.policy.timeout_s,
                follow_redirects=False,
            )
            status = response.status_code
            if 200 <= status < 300:
                return done("delivered")
            retry = retryable_status(status)
            error = f"HTTP {status}"
        except httpx.TimeoutException:
            error, retry = "timeout", True
        except httpx.TransportError as exc:
            error, retry = f"transport error: {type(exc).__name__}", True
        return done("retrying" if retry else "failed")
