"""uvicorn's ``websockets-sansio`` protocol (the ``websockets`` library's sans-I/O
``ServerProtocol``) with one addition: the ASGI scope carries an ``aiis.abort`` extension so the
app can drop a TCP connection whose peer reads nothing — not even a close frame. Without it a
stuck peer holds its socket and write buffer until the kernel gives up.

``guarded_http`` is uvicorn's httptools HTTP protocol (llhttp, in C) with a cap on open sockets
and a timeout for request headers, which uvicorn lacks (its keep-alive timeout stops at the
first byte). httptools rather than h11: a streamed chat completion's first token reached the
caller ≈ 0.7 ms sooner and cost the gateway ≈ 0.3 ms less CPU per request on it (h11 parses
and frames in Python; docs/benchmarks.md, the OpenAI-compatible API).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from gateway.errors import HeadRefused

ABORT_EXTENSION = "aiis.abort"


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:  # the app task is scheduled, not started: it sees this
            scope["extensions"][ABORT_EXTENSION] = {"abort": self.transport.abort}

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        # the close frame may sit behind a full buffer: drop the connection after the grace
        self.loop.call_later(5.0, self.transport.abort)


class SocketLimits:
    """Shared by every HTTP connection of one server: the socket cap and the header timeout,
    with their counts (exported on /metrics). ``connections`` is uvicorn's set of open
    connections (HTTP and WebSocket alike), known after the first one is made."""

    def __init__(self, max_sockets: int, header_timeout_s: float) -> None:
        self.max_sockets = max_sockets
        self.header_timeout_s = header_timeout_s
        self.refused = 0  # connections closed at once: the cap was reached
        self.header_timeouts = 0  # connections closed: headers did not arrive in time
        self.connections: set[Any] = set()

    @property
    def open(self) -> int:
        return len(self.connections)


_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_SLOW = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


MAX_HEAD_BYTES = 16 * 1024  # request line + headers: h11's bound, which uvicorn's h11 side used


def guarded_http(limits: SocketLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits``: a connection over ``max_sockets`` gets a
    503 and is closed; one whose request headers are not complete ``header_timeout_s`` after
    it opened (or after its previous response: keep-alive) gets a 408 and is closed
    (slowloris). And what h11 enforced and llhttp does not: a request line and headers over
    ``MAX_HEAD_BYTES`` (llhttp has no bound, and uvicorn grows the URL by concatenation), or
    a request without exactly one ``Host``, get a 400."""

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _hosts = 0
        _body_due = False  # a request's headers are in, the end of its body is not

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            limits.connections = self.connections
            over = len(self.connections) >= limits.max_sockets
            super().connection_made(transport)
            if over:
                limits.refused += 1
                transport.write(_BUSY)
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._head_bytes, self._hosts = 0, 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            if name.lower() == b"host":
                self._hosts += 1
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._hosts > 1 or (self._hosts == 0 and self.parser.get_http_version() != "1.0"):
                raise HeadRefused("a request needs exactly one Host header (HTTP/1.1)")
            self._body_due = True
            self._disarm()  # the headers are in (a WebSocket upgrade too)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_due = False
            super().on_message_complete()

        def on_response_complete(self) -> None:
            queued = bool(self.pipeline)  # super() starts a pipelined request: its headers are in
            super().on_response_complete()
            if not self.transport.is_closing() and not queued:
                self._arm()

        def _count(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > MAX_HEAD_BYTES:
                raise HeadRefused(f"request line and headers over {MAX_HEAD_BYTES} bytes")

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a response is under way: its end arms the timer again
            if self._body_due:
                self._arm()  # answered early, its body still arriving: the body timeout's case
                return
            limits.header_timeouts += 1
            self.transport.write(_SLOW)
            self.transport.close()

    return GuardedHttpProtocol
