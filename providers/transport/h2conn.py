"""One HTTP/2 connection of ``transport.h2transport.H2Transport``: an ``asyncio.Protocol`` that
feeds h2's state machine and hands each stream's frames to the call waiting for them, plus the
response body that reads them. The transport (pooling, ALPN, the HTTP/1.1 fallback) is in
``h2transport``; the few uses of h2 beyond its public API are in ``h2shim``."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol, cast

import h2.config
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx

from providers.transport.h2shim import H2State


class Pool(Protocol):
    """What a connection needs of the pool of its origin."""

    max_streams: int

    def wake(self) -> None: ...

    def forget(self, conn: Connection) -> None: ...


# request headers HTTP/2 forbids or expresses as pseudo-headers (RFC 9113 §8.2.2)
_DROP = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"upgrade",
                   b"transfer-encoding", b"te"})  # fmt: skip
FLUSH_EVERY = 32  # requests (or acknowledgements) coalesced into one write at most
# receive windows: a stream's bounds what one unread body may buffer; the connection's is far
# larger, so that unread bodies never hold back the other streams of the connection
_STREAM_WINDOW = 1 << 20
_CONNECTION_WINDOW = 1 << 28
_MAX_STREAM_ID = 2**31 - 1 - 2 * 1000


class _Stream:
    __slots__ = ("chunks", "ended", "error", "headers", "released", "sid", "waiter")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.released = False

    def failure(self, request: httpx.Request | None = None) -> httpx.TransportError:
        """A fresh copy of the stream's error for one raise (bound to ``request``): the stored
        one is shared by everything that reads this stream."""
        assert self.error is not None
        return type(self.error)(str(self.error), request=request)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One HTTP/2 connection; ``active`` counts the streams reserved on it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        # outbound headers are built here from httpx's (names lower-cased, hop-by-hop ones
        # dropped): h2's per-header validation of them would only repeat that
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = H2State(config)
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.capacity = 0
        self.closed = False
        self.goaway = False
        self._flush_soon = False
        self._unflushed = 0  # flush_soon calls since the last write
        self._in_turn = False  # this loop turn wrote its first frames already
        self._writable: asyncio.Future[None] | None = None
        self._window: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a write transport, though not always an asyncio.Transport subclass (uvloop's is not)
        self.transport = cast(asyncio.Transport, transport)

    def start(self) -> None:
        """Send the preface and our settings (after ALPN chose h2: a server that chose HTTP/1.1
        must never see them)."""
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.flush()
            self._fail(httpx.RemoteProtocolError(f"HTTP/2 protocol error: {type(exc).__name__}"))
            return
        streams = self.streams
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = streams.get(event.stream_id or 0)
                size = event.flow_controlled_length or 0
                if stream is not None:
                    stream.chunks.append((event.data or b"", size))
                    stream.wake()
                elif size:  # a stream we gave up on: keep the connection window open
                    self.h2.acknowledge_received_data(size, event.stream_id or 0)
            elif isinstance(event, h2.events.ResponseReceived):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.headers = list(event.headers or ())
                    stream.wake()
            elif isinstance(event, h2.events.StreamEnded):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.ended = True
                    stream.wake()
            elif isinstance(event, h2.events.StreamReset):
                stream = streams.get(event.stream_id or 0)
                if stream is not None and not stream.ended:
                    stream.error = httpx.RemoteProtocolError(
                        f"stream reset by the server ({event.error_code!s})"
                    )
                    stream.wake()
                self._wake_window()  # a sender of its body must stop waiting for window
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                remote = self.h2.remote_settings.max_concurrent_streams
                self.capacity = min(remote, self.pool.max_streams)
                if not self.ready.done():
                    self.ready.set_result(None)
                self._wake_window()
                self.pool.wake()
            elif isinstance(event, h2.events.WindowUpdated):
                self._wake_window()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._on_goaway(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(httpx.ReadError("connection lost"))

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # state

    @property
    def active(self) -> int:
        """Streams reserved on this connection (requests in flight and bodies not yet read)."""
        return self.h2.reserved

    @active.setter
    def active(self, value: int) -> None:
        self.h2.reserved = value

    @property
    def usable(self) -> bool:
        return not (self.closed or self.goaway) and self.h2.last_stream_id < _MAX_STREAM_ID

    def flush(self) -> None:
        self._flush_soon = False
        self._unflushed = 0
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Write the first frames of a loop turn at once (a lone request does not wait for the
        turn to end: time to first token), the next ones of the same turn in one write at its
        end, so requests started together share it; but at once every ``FLUSH_EVERY`` frames,
        so that in a burst of thousands the first request does not wait until the last one
        is built."""
        self._unflushed += 1
        if not self._in_turn:
            self._in_turn = True
            self.loop.call_soon(self._end_turn)
            self.flush()
        elif self._unflushed >= FLUSH_EVERY:
            self.flush()
        elif not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def _end_turn(self) -> None:
        self._in_turn = False

    def _wake_window(self) -> None:
        if self._window is not None and not self._window.done():
            self._window.set_result(None)
        self._window = None

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream in self.streams.values():
            if stream.sid > last and stream.error is None:  # never processed: safe to retry
                stream.error = httpx.RemoteProtocolError(
                    "the server closed the connection (GOAWAY)"
                )
                stream.wake()
        self._wake_window()
        self.pool.forget(self)
        if not self.streams and self.transport is not None:
            self.transport.close()

    def _fail(self, error: httpx.TransportError) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            if stream.error is None and not stream.ended:
                stream.error = error
            stream.wake()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: a failed connect is reported by ``open``
        for waiter in (self._writable, self._window):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    # one request

    async def request(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        if not self.usable:
            self.release(None)
            raise httpx.RemoteProtocolError("connection no longer usable", request=request)
        url = request.url
        try:
            sid = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.goaway = True  # every id used: this connection takes no new stream
            self.pool.forget(self)
            self.release(None)
            raise httpx.RemoteProtocolError(
                "HTTP/2 stream ids exhausted", request=request
            ) from None
        stream = _Stream(sid)
        self.streams[sid] = stream
        try:
            body = request.content if isinstance(request.stream, httpx.ByteStream) else None
            headers = [
                (b":method", request.method.encode()),
                (b":authority", url.netloc),
                (b":scheme", url.raw_scheme),
                (b":path", url.raw_path),
            ]
            for raw, value in request.headers.raw:
                name = raw.lower()
                if name not in _DROP:
                    headers.append((name, value))
            end = body == b""
            self.h2.send_headers(sid, headers, end_stream=end)
            if body:
                await self._send_body(stream, body, timeouts.get("write"))
            elif body is None:
                async for chunk in request.stream:  # type: ignore[union-attr]
                    await self._send_body(stream, chunk, timeouts.get("write"), end=False)
                if not stream.ended:
                    self.h2.end_stream(sid)
            self.flush_soon()
            while stream.headers is None:
                await self._wait(stream, timeouts.get("read"), request)
        except BaseException as exc:
            self.cancel(stream)
            if isinstance(exc, h2.exceptions.ProtocolError):
                raise httpx.RemoteProtocolError(
                    f"HTTP/2: {type(exc).__name__}", request=request
                ) from exc
            raise
        status = 0
        fields: list[tuple[bytes, bytes]] = []
        for name, value in stream.headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.append((name, value))
        return httpx.Response(
            status,
            headers=fields,
            stream=_Body(self, stream, request, timeouts.get("read")),
            extensions={"http_version": b"HTTP/2", "stream_id": sid},
            request=request,
        )

    async def _send_body(
        self, stream: _Stream, body: bytes, limit_s: float | None, *, end: bool = True
    ) -> None:
        h2conn, sid = self.h2, stream.sid
        if len(body) <= min(h2conn.local_flow_control_window(sid), h2conn.max_outbound_frame_size):
            h2conn.send_data(sid, body, end_stream=end)  # the usual case: one frame, no wait
            return
        view = memoryview(body)
        try:
            async with asyncio.timeout(limit_s):
                while view:
                    if stream.error is not None:  # reset, refused, or beyond a GOAWAY
                        raise stream.failure() from stream.error
                    if stream.ended:  # answered before the body was all sent (RFC 9113 §8.1)
                        return
                    window = h2conn.local_flow_control_window(sid)
                    size = min(window, h2conn.max_outbound_frame_size, len(view))
                    if size <= 0:
                        self.flush()
                        self._window = self._window or self.loop.create_future()
                        # shared by every sender: one cancelled must not cancel it for the rest
                        await asyncio.shield(self._window)
                        self._check_open()
                        continue
                    last = end and size == len(view)
                    h2conn.send_data(sid, bytes(view[:size]), end_stream=last)
                    view = view[size:]
                    if self._writable is not None:
                        self.flush()
                        await asyncio.shield(self._writable)
                        self._check_open()
        except TimeoutError:
            raise httpx.WriteTimeout("the request body could not be sent in time") from None

    def _check_open(self) -> None:
        if self.closed:
            raise httpx.WriteError("connection lost while sending the request")

    async def _wait(self, stream: _Stream, limit_s: float | None, request: httpx.Request) -> None:
        if stream.error is not None:
            raise stream.failure(request) from stream.error
        if stream.ended and stream.headers is None:
            raise httpx.RemoteProtocolError("stream ended without a response", request=request)
        stream.waiter = self.loop.create_future()
        try:
            async with asyncio.timeout(limit_s):
                await stream.waiter
        except TimeoutError:
            raise httpx.ReadTimeout("no data from the server in time", request=request) from None
        finally:
            stream.waiter = None
        if stream.error is not None and stream.headers is None:
            raise stream.failure(request) from stream.error

    def consumed(self, stream: _Stream, size: int) -> None:
        """Reopen the flow-control windows by ``size`` bytes read from ``stream``."""
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.acknowledge_received_data(size, stream.sid)
                self.flush_soon()

    def cancel(self, stream: _Stream) -> None:
        """Reset the stream if it is still open, and free its slot."""
        if not (stream.ended or stream.error is not None or self.closed):
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.reset_stream(stream.sid, h2.errors.ErrorCodes.CANCEL)
                self.flush_soon()
        self.release(stream)

    def release(self, stream: _Stream | None) -> None:
        if stream is not None:
            if stream.released:
                return
            stream.released = True
            self.streams.pop(stream.sid, None)
            unread = sum(size for _, size in stream.chunks)
            stream.chunks.clear()
            self.consumed(stream, unread)  # the connection window must not shrink for good
        self.active -= 1
        if (self.goaway or self.closed) and not self.streams and self.transport is not None:
            self.transport.close()
        self.pool.wake()


class _Body(httpx.AsyncByteStream):
    """A response body read straight from its stream's queue; each chunk read is acknowledged
    (the server's flow-control window reopens as we consume, not as it arrives)."""

    def __init__(
        self, conn: Connection, stream: _Stream, request: httpx.Request, timeout: float | None
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.request = request
        self.timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream, conn = self.stream, self.conn
        try:
            while True:
                if stream.chunks:
                    data, size = stream.chunks.popleft()
                    conn.consumed(stream, size)
                    if data:
                        yield data
                elif stream.ended:
                    break
                else:
                    await conn._wait(stream, self.timeout, self.request)
                    if stream.error is not None and not stream.chunks:
                        raise stream.failure(self.request) from stream.error
        finally:
            if stream.ended and not stream.chunks:
                conn.release(stream)

    async def aclose(self) -> None:
        self.conn.cancel(self.stream)
