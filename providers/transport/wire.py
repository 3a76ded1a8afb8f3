"""HTTP plumbing every adapter shares: the pooled HTTP/2 client, the SSE reader with its idle
timeout, and the translation of transport failures and status codes into the error taxonomy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
import orjson

from providers.config import ProviderConfig, ProviderSettings
from providers.errors import (
    AuthFailed,
    InsufficientCredits,
    InvalidRequest,
    NetworkError,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
)
from providers.transport.h2transport import H2Transport

MAX_MESSAGE_CHARS = 300
MAX_CACHED_URLS = 256
# HTTP/1.1 connections per origin that does not speak HTTP/2 (vLLM, Ollama, some proxies)
HTTP1_MAX_CONNECTIONS = 256


class _DropDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


# hpack logs every header it encodes or decodes (API keys included) at DEBUG: silence it however
# the application configures its levels
for _name in ("hpack", "hpack.hpack", "hpack.table"):
    logging.getLogger(_name).setLevel(logging.INFO)
    logging.getLogger(_name).addFilter(_DropDebug())
MAX_EVENT_BYTES = 1 << 20  # one SSE event; a bigger one is a malformed stream


@functools.cache
def _ssl_context(alpn: str) -> ssl.SSLContext:
    """One context per ALPN use (loading the CA bundle costs ~40 ms): httpcore sets its own
    ALPN list on the context it is given at every connect, so the HTTP/2 transport's context
    must not be the one the HTTP/1.1 fallback uses."""
    return ssl.create_default_context(cafile=certifi.where())


class ClientPool:
    """One provider's HTTP client: one ``httpx.AsyncClient`` over ``H2Transport``, which
    multiplexes as many streams per HTTP/2 connection as the server allows (capped by
    ``AIIS_H2_STREAMS``) and opens another connection only when those are full; an origin that
    does not speak HTTP/2 is served over pooled HTTP/1.1 connections instead. ``max_in_flight``
    bounds the calls this process makes to the provider at once.
    """

    def __init__(
        self,
        config: ProviderConfig,
        settings: ProviderSettings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        self._settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._wire: httpx.AsyncBaseTransport | None = None  # the client's transport
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._base = httpx.URL(config.base_url.rstrip("/") + "/")
        self._urls: dict[tuple[str, tuple[tuple[str, str], ...]], httpx.URL] = {}
        self._defaults: list[tuple[str, str]] = []
        self._timeouts: dict[str, Any] = {}

    def _new_client(self) -> httpx.AsyncClient:
        s = self._settings
        transport = self._transport
        if transport is None:
            http1_connections = min(s.max_in_flight, HTTP1_MAX_CONNECTIONS)
            transport = H2Transport(
                ssl_context=_ssl_context("h2"),
                prior_knowledge=s.http2_prior_knowledge,
                max_streams=s.streams_per_connection,
                # enough connections for max_in_flight even where a server allows 100 streams
                max_connections=max(1, math.ceil(s.max_in_flight / 100)),
                http1=httpx.AsyncHTTPTransport(
                    verify=_ssl_context("http/1.1"),
                    http2=False,
                    limits=httpx.Limits(
                        max_connections=http1_connections,
                        max_keepalive_connections=http1_connections,
                    ),
                ),
            )
        timeout = httpx.Timeout(
            connect=s.connect_timeout_s, read=s.read_timeout_s, write=30.0, pool=s.read_timeout_s
        )
        self._wire = transport
        return httpx.AsyncClient(
            base_url=self._config.base_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def _absolute(self, url: str, params: dict[str, str] | None) -> httpx.URL:
        # parsing and merging URLs is a visible share of a call's CPU: memoise the few distinct
        # endpoint URLs (bounded; image queries make many distinct ones)
        key = (url, tuple(params.items()) if params else ())
        found = self._urls.get(key)
        if found is None:
            found = self._base.join(url)
            if params:
                found = found.copy_merge_params(params)
            if len(self._urls) >= MAX_CACHED_URLS:
                self._urls.clear()
            self._urls[key] = found
        return found

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield the (unread) response; the caller reads or streams it."""
        async with self._in_flight:
            client = self._client
            if client is None:
                client = self._client = self._new_client()
                self._defaults = [(k.decode(), v.decode()) for k, v in client.headers.raw]
                self._timeouts = client.timeout.as_dict()
            content = orjson.dumps(json) if json is not None else None
            # the Request built here rather than by client.build_request, which merges the
            # client's defaults, cookies and timeouts anew on every call (7% of a call's CPU)
            given = {name.lower() for name in headers}  # the adapter's headers win
            fields = [(k, v) for k, v in self._defaults if k.lower() not in given]
            fields += headers.items()
            if content is not None:
                fields.append(("content-type", "application/json"))
            request = httpx.Request(
                method,
                self._absolute(url, params),
                headers=fields,
                content=content,
                extensions={"timeout": self._timeouts},
            )
            # straight to the client's transport: AsyncClient.send adds auth, redirects, cookie
            # extraction and event hooks, none of which a provider call uses (12 % of its CPU)
            assert self._wire is not None
            response = await self._wire.handle_async_request(request)
            response.request = request
            try:
                yield response
            finally:
                await response.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Remove every secret from ``text`` and cap its length (messages go into events)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:MAX_MESSAGE_CHARS]


def transport_error(exc: Exception, provider: str) -> ProviderError:
    """An httpx/transport exception as a retryable provider error (no request data in it)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ProviderTimeout(f"{provider}: timed out ({name})", provider=provider)
    return NetworkError(f"{provider}: transport failure ({name})", provider=provider)


def status_error(
    provider: str, status: int, message: str, retry_after: float | None = None
) -> ProviderError:
    """The default class for an HTTP status; adapters refine it from the provider's body."""
    text = f"{provider}: HTTP {status}: {message}"
    cls: type[ProviderError]
    if status == 429:
        cls = RateLimited
    elif status in (401, 403):
        cls = AuthFailed
    elif status == 402:
        cls = InsufficientCredits
    elif status in (408, 504):
        cls = ProviderTimeout
    elif status >= 500 or status == 409:
        cls = Overloaded
    else:
        cls = InvalidRequest
    return cls(text, provider=provider, status=status, retry_after=retry_after)


async def read_json(response: httpx.Response, provider: str) -> Any:
    """The whole body as JSON; a body that is not JSON is a malformed response."""
    body = await response.aread()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NetworkError(
            f"{provider}: malformed JSON body (HTTP {response.status_code})", provider=provider
        ) from exc


def loads_chunk(data: bytes | str, provider: str) -> Any:
    """One SSE ``data:`` payload as JSON; anything else is a malformed chunk."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise NetworkError(f"{provider}: malformed stream chunk", provider=provider) from exc


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: bytes


class SSEDecoder:
    """Sans-I/O server-sent-events decoder: ``feed(bytes)`` returns the events completed so far.

    Bounded: a line or an event over ``MAX_EVENT_BYTES`` raises NetworkError. An event not
    terminated by a blank line when the stream ends is dropped, as the SSE spec says.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        pending_cr = self._buffer.endswith(b"\r")
        self._buffer += chunk
        if not pending_cr and b"\n" not in chunk and b"\r" not in chunk:
            self._check(len(self._buffer))
            return []
        data, hold = self._buffer, b""
        if data.endswith(b"\r"):  # maybe the first half of a CRLF split across two reads
            data, hold = data[:-1], b"\r"
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + hold
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event or "message", b"\n".join(self._data)))
                self._event, self._data, self._size = "", [], 0
                continue
            if line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._size += len(value)
                self._check(self._size)
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        self._check(len(self._buffer))
        return events

    def _check(self, size: int) -> None:
        if size > MAX_EVENT_BYTES:
            raise NetworkError(f"{self.provider}: oversized stream event", provider=self.provider)


EAGER_EVENTS = 4  # a role chunk, the first tokens: past them, events are read back to back


async def sse_events(
    response: httpx.Response, idle_timeout: float, provider: str
) -> AsyncIterator[SSEEvent]:
    """Server-sent events from ``response``; raises ProviderTimeout after ``idle_timeout``
    seconds without data (a read timeout alone misses a stalled stream on a busy HTTP/2
    connection, whose socket keeps receiving other streams' frames). The consumer must not
    await between events: the idle timer runs while the generator is suspended."""
    loop = asyncio.get_running_loop()
    decoder = SSEDecoder(provider)
    eager = EAGER_EVENTS
    try:
        async with asyncio.timeout(idle_timeout) as idle:
            async for chunk in response.aiter_bytes():
                idle.reschedule(loop.time() + idle_timeout)
                for event in decoder.feed(chunk):
                    yield event
                    if eager:
                        # the answer's start may arrive in one burst, already buffered: once
                        # the consumer has taken each of the first events, hand the loop over,
                        # so the first token's commit goes out before the rest is parsed
                        eager -= 1
                        await asyncio.sleep(0)
    except TimeoutError as exc:
        raise ProviderTimeout(
            f"{provider}: stream idle for more than {idle_timeout:g}s", provider=provider
        ) from exc


def remaining(deadline: float | None, cap: float) -> float:
    """Seconds left for a call: ``cap`` bounded by the task's deadline (unix seconds)."""
    if deadline is None:
        return cap
    return min(cap, deadline - time.time())
