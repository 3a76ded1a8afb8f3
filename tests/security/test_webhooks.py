"""Task webhooks: URL validation, signatures, retries (engine/operations/webhooks.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from pydantic import SecretStr

from engine.admission.callbacks import UrlPolicy, validate_callback_url
from engine.errors import BadCallbackUrl, InvalidTask
from engine.operations.webhooks import (
    SIGNATURE_HEADER,
    DeliveryAttempt,
    DeliveryPolicy,
    WebhookNotifier,
    next_delay,
    sign,
    verify_signature,
)

SECRET = "fake-webhook-secret-for-tests"
LOOPBACK = UrlPolicy(allow_loopback=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://10.0.0.5/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://[fd12::1]/hook", "private"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("https://user:pass@example.com/hook", "credentials"),
        ("https:///nohost", "no host"),
    ],
)
def test_bad_callback_urls_are_rejected(url: str, reason: str) -> None:
    """Non-http(s), metadata, link-local, private, loopback and credentialed URLs are refused."""
    with pytest.raises(BadCallbackUrl, match=reason) as info:
        validate_callback_url(url)
    assert isinstance(info.value, InvalidTask) and info.value.field == "callback_url"


def test_allowed_urls() -> None:
    """Public https URLs pass; private and loopback pass only when explicitly allowed."""
    assert validate_callback_url("https://hooks.example.com/aiis?x=1")
    assert validate_callback_url("http://10.0.0.5/hook", UrlPolicy(allow_private=True))
    assert validate_callback_url("http://127.0.0.1:9/hook", LOOPBACK)
    with pytest.raises(BadCallbackUrl, match="metadata"):
        validate_callback_url("http://169.254.169.254/", UrlPolicy(True, True))


async def test_host_resolving_to_metadata_is_refused_at_delivery() -> None:
    """A host name that resolves to the metadata address is refused, with no request sent."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    async def evil_dns(host: str, port: int) -> list[str]:
        return ["169.254.169.254"]

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        notifier = WebhookNotifier(client, SecretStr(SECRET), resolve=evil_dns)
        record = await notifier.deliver("t1", "https://rebind.example.com/hook", {"a": 1})
    assert record.outcome == "rejected" and "metadata" in (record.error or "")
    assert sent == []


def test_signature_roundtrip_and_tampering() -> None:
    """verify_signature accepts the signed body and rejects tampering, wrong keys, old stamps."""
    body = b'{"task_id":"t1"}'
    now = int(time.time())
    header = sign(SECRET.encode(), body, now)
    assert verify_signature(SECRET, header, body)
    assert not verify_signature(SECRET, header, body + b" ")
    assert not verify_signature("another-fake-secret", header, body)
    old = sign(SECRET.encode(), body, now - 3600)
    assert not verify_signature(SECRET, old, body, tolerance_s=300)
    assert not verify_signature(SECRET, "garbage", body)
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature(SECRET, rotated, body)


def test_backoff_is_exponential_and_capped() -> None:
    """Delays double per attempt and stop at max_delay_s."""
    p = DeliveryPolicy(base_s=1, max_delay_s=5)
    assert [next_delay(p, a) for a in range(1, 6)] == [1, 2, 4, 5, 5]


async def test_retries_5xx_and_timeouts_then_delivers() -> None:
    """A 503 and a timeout are retried; each attempt yields a record; the third delivers."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(503)
        if calls == 2:
            raise httpx.ReadTimeout("slow", request=request)
        assert verify_signature(SECRET, request.headers[SIGNATURE_HEADER], request.content)
        return httpx.Response(204)

    records: list[DeliveryAttempt] = []
    slept: list[float] = []

    async def on_attempt(r: DeliveryAttempt) -> None:
        records.append(r)

    async def sleep(s: float) -> None:
        slept.append(s)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        notifier = WebhookNotifier(
            client, SecretStr(SECRET), on_attempt=on_attempt, sleep=sleep, urls=UrlPolicy()
        )
        final = await notifier.deliver("t1", "https://8.8.8.8/hook?token=abc", {"ok": True})
    assert [r.outcome for r in records] == ["retrying", "retrying", "delivered"]
    assert [r.status for r in records] == [503, None, 204]
    assert records[1].error == "timeout"
    assert slept == [1.0, 2.0]
    assert final == records[-1]
    assert all("token" not in r.url for r in records)


async def test_4xx_is_not_retried_and_attempts_are_bounded() -> None:
    """A 400 fails at once; endless 500s stop after max_attempts with outcome failed."""
    status = 400

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status)

    async def no_sleep(s: float) -> None:
        return None

    records: list[DeliveryAttempt] = []

    async def on_attempt(r: DeliveryAttempt) -> None:
        records.append(r)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        notifier = WebhookNotifier(
            client,
            SecretStr(SECRET),
            policy=DeliveryPolicy(max_attempts=3),
            on_attempt=on_attempt,
            sleep=no_sleep,
        )
        first = await notifier.deliver("t1", "https://8.8.8.8/hook", {})
        assert first.outcome == "failed" and first.attempt == 1
        status = 500
        records.clear()
        last = await notifier.deliver("t1", "https://8.8.8.8/hook", {})
    assert [r.outcome for r in records] == ["retrying", "retrying", "failed"]
    assert last.attempt == 3 and last.next_delay_s is None


async def test_redirects_are_not_followed() -> None:
    """A 302 to the metadata address is not followed (and not retried)."""
    hits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        notifier = WebhookNotifier(client, SecretStr(SECRET))
        record = await notifier.deliver("t1", "https://8.8.8.8/hook", {})
    assert record.outcome == "failed" and record.status == 302
    assert hits == ["https://8.8.8.8/hook"]


# --- a real receiver on loopback -----------------------------------------------------------


class Receiver:
    """A minimal HTTP/1.1 server: answers 500 to the first request, 200 afterwards."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((headers, body))
                code = b"500 Internal Server Error" if len(self.requests) == 1 else b"200 OK"
                writer.write(b"HTTP/1.1 " + code + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    yield r
    r.server.close()
    await r.server.wait_closed()


async def test_real_receiver_verifies_signature_and_gets_the_retry(receiver: Receiver) -> None:
    """Over a real socket: a 500 is retried, and the receiver verifies both signed bodies."""

    async def fast(s: float) -> None:
        await asyncio.sleep(0)

    payload = {"type": "TaskSucceeded", "task_id": "t9", "data": {"result": {"text": "hi"}}}
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, SecretStr(SECRET), urls=LOOPBACK, sleep=fast)
        final = await notifier.deliver("t9", receiver.url, payload, "TaskSucceeded")
    assert final.outcome == "delivered" and final.attempt == 2
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)
        assert orjson.loads(body) == payload
        assert headers["x-aiis-task"] == "t9"
    assert receiver.requests[0][0]["x-aiis-delivery"] == receiver.requests[1][0]["x-aiis-delivery"]


async def test_loopback_refused_without_the_allow_option(receiver: Receiver) -> None:
    """The same loopback receiver is refused under the default policy; nothing is sent."""
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, SecretStr(SECRET))
        record = await notifier.deliver("t9", receiver.url, {})
    assert record.outcome == "rejected"
    assert receiver.requests == []
