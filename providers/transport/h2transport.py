"""An httpx transport that speaks HTTP/2 on asyncio protocols, for thousands of concurrent calls.

httpx's own HTTP/2 path (httpcore) costs about a millisecond of CPU per request here, mostly
in locks and per-stream read loops, and caps a connection at 100 streams, so 2,000 calls in
flight need 20 connections. This transport keeps httpx's API (``httpx.AsyncClient(transport=…)``,
its requests, responses, timeouts and exceptions) and replaces only the wire: one
``asyncio.Protocol`` per connection feeds h2's state machine and hands each stream's frames to
the waiting request, so a call costs a few h2 method calls and no extra task.

- ``https://``: TLS with ALPN; an origin that does not pick ``h2`` is served by the HTTP/1.1
  fallback transport from then on. ``http://``: HTTP/2 with prior knowledge when
  ``prior_knowledge`` is set (sandbox, in-cluster servers), else the fallback.
- A connection carries as many streams as the server's SETTINGS allow (capped by
  ``max_streams``); another connection is opened only when all are full, up to
  ``max_connections`` per origin, after which requests wait for a free stream (pool timeout).
- Errors are httpx's: ``ConnectError``/``ConnectTimeout``, ``ReadTimeout``/``WriteTimeout``/
  ``PoolTimeout``, ``ReadError`` (connection lost), ``RemoteProtocolError`` (stream reset,
  GOAWAY, protocol violation). A response body closed early resets its stream (CANCEL).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

import httpx

from providers.transport.h2conn import Connection

Origin = tuple[bytes, bytes, int]


class _Origin:
    """The connections to one origin, and the requests waiting for a free stream."""

    def __init__(self, transport: H2Transport, origin: Origin) -> None:
        self.transport = transport
        self.origin = origin
        self.max_streams = transport.max_streams
        self.connections: list[Connection] = []
        self.opening: asyncio.Task[Connection | None] | None = None
        self.waiters: deque[asyncio.Future[None]] = deque()

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        self.wake()

    def _free(self) -> Connection | None:
        for conn in self.connections:
            if conn.active < conn.capacity and conn.usable:
                conn.active += 1
                return conn
        return None

    async def acquire(self, limit_s: float | None, request: httpx.Request) -> Connection | None:
        """A connection with a stream reserved for this request; None when the origin turned
        out not to speak HTTP/2 (ALPN), so the caller uses HTTP/1.1. A failed connect fails
        every request that was waiting for it, not one after another."""
        loop = asyncio.get_running_loop()
        deadline = None if limit_s is None else loop.time() + limit_s
        while True:
            conn = self._free()
            if conn is not None:
                return conn
            if self.opening is None and len(self.connections) < self.transport.max_connections:
                self.opening = loop.create_task(self._open(request.extensions))
                self.opening.add_done_callback(self._opened)
            opening = self.opening
            if opening is None or not opening.done():
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise httpx.PoolTimeout("no free HTTP/2 stream in time", request=request)
                waiter = loop.create_future()
                self.waiters.append(waiter)
                waits: list[asyncio.Future[Any]] = (
                    [waiter] if opening is None else [waiter, opening]
                )
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if opening is not None and opening.done():
                if self.opening is opening:
                    self.opening = None
                error = opening.exception()
                if isinstance(error, httpx.TransportError):
                    raise type(error)(str(error), request=request) from error
                if error is not None:
                    raise error
                if opening.result() is None:
                    return None

    def _opened(self, task: asyncio.Task[Connection | None]) -> None:
        """A finished attempt is never handed to a later caller: those who waited for it have
        its outcome; whoever comes next tries again."""
        if self.opening is task:
            self.opening = None
        if not task.cancelled():
            task.exception()  # retrieved here, whether or not anyone waited

    async def _open(self, extensions: dict[str, Any]) -> Connection | None:
        scheme, host, port = self.origin
        tls = self.transport.ssl_context if scheme == b"https" else None
        timeout = extensions.get("timeout", {}).get("connect")
        loop = asyncio.get_running_loop()
        name = host.decode("ascii")
        conn: Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                sock, conn = await loop.create_connection(
                    lambda: Connection(self), name, port, ssl=tls,
                    server_hostname=name if tls else None,
                )  # fmt: skip
                if tls is not None:
                    ssl_object = sock.get_extra_info("ssl_object")
                    if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                        sock.close()
                        self.transport.http1_origins.add(self.origin)
                        return None
                conn.start()
                await conn.ready  # the server's SETTINGS: now its stream limit is known
        except BaseException as exc:
            if conn is not None:  # connected, but no HTTP/2 server answered in time
                conn._fail(httpx.ConnectError("no HTTP/2 settings from the server"))
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout("connect timed out") from exc
            if isinstance(exc, OSError | ssl.SSLError | httpx.TransportError):
                raise httpx.ConnectError(f"connect failed: {type(exc).__name__}") from exc
            raise
        self.connections.append(conn)
        return conn

    async def aclose(self) -> None:
        if self.opening is not None:
            self.opening.cancel()
            with contextlib.suppress(BaseException):
                conn = await self.opening
                if conn is not None:
                    self.connections.append(conn)
        for conn in list(self.connections):
            conn._fail(httpx.ReadError("transport closed"))
        self.connections.clear()


class H2Transport(httpx.AsyncBaseTransport):
    """HTTP/2 for ``httpx.AsyncClient``; see the module docstring."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        prior_knowledge: bool = False,
        max_streams: int = 1000,
        max_connections: int = 20,
        http1: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.prior_knowledge = prior_knowledge
        self.max_streams = max_streams
        self.max_connections = max_connections
        # its own context: httpcore sets ALPN ["http/1.1"] on the context it connects with
        self.http1 = http1 or httpx.AsyncHTTPTransport(
            verify=ssl.create_default_context(), http2=False
        )
        self.http1_origins: set[Origin] = set()
        self._origins: dict[Origin, _Origin] = {}

    @property
    def connections(self) -> int:
        """Open HTTP/2 connections, all origins."""
        return sum(len(origin.connections) for origin in self._origins.values())

    @property
    def streams_in_use(self) -> int:
        """Streams reserved: calls waiting for an answer plus bodies not yet read or closed."""
        return sum(c.active for origin in self._origins.values() for c in origin.connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        origin = (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))
        if (scheme == b"http" and not self.prior_knowledge) or origin in self.http1_origins:
            return await self.http1.handle_async_request(request)
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        pool = self._origins.get(origin)
        if pool is None:
            pool = self._origins[origin] = _Origin(self, origin)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = await pool.acquire(timeouts.get("pool"), request)
        if conn is None:
            return await self.http1.handle_async_request(request)
        return await conn.request(request, timeouts)

    async def aclose(self) -> None:
        for pool in self._origins.values():
            await pool.aclose()
        self._origins.clear()
        await self.http1.aclose()
