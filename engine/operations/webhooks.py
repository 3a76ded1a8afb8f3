"""Task webhooks: when a task ends, POST its terminal event to the task's callback URL.

The body is signed with HMAC-SHA256 over ``f"{timestamp}.".encode() + body`` and sent as
``X-AIIS-Signature: t=<unix>,v1=<hex>`` (receivers check it with ``verify_signature``). 5xx,
408, 429, timeouts and transport errors are retried with capped exponential backoff, up to
``max_attempts``; every attempt produces a ``DeliveryAttempt`` record for the event log.

URLs are checked at submit (``engine.admission.callbacks``) and again, after DNS resolution,
before every attempt. Redirects are not followed (a redirect is the classic way around such
checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, SecretStr

from engine.admission.callbacks import (
    Resolver,
    UrlPolicy,
    resolve_and_check,
    system_resolver,
    validate_callback_url,
)
from engine.errors import BadCallbackUrl

SIGNATURE_HEADER = "X-AIIS-Signature"
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
        urls: UrlPolicy = UrlPolicy(),  # noqa: B008 — a frozen dataclass
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
