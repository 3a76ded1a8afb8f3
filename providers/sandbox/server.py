"""A small asyncio HTTP server speaking HTTP/1.1 (h11) and HTTP/2 over cleartext with prior
knowledge (h2c, the ``PRI *`` preface), so the adapters' HTTP/2 path is exercised for real.

The application is ``async app(Request) -> Response``; a streamed response yields body chunks
and may raise ``Abort`` to drop the connection (HTTP/1.1) or reset the stream (HTTP/2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11

from providers.errors import Abort

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_SIZE = 65536
MAX_BODY = 4 << 20
H2_MAX_STREAMS = 1000


def _reason(status: int) -> bytes:
    if status == 529:
        return b"Overloaded"
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    http_version: str


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


App = Callable[[Request], Awaitable[Response]]


def _request(
    method: str, target: str, headers: dict[str, str], body: bytes, version: str
) -> Request:
    parts = urlsplit(target)
    return Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body, version)


class HttpServer:
    """Serves ``app`` on host:port (0 = any free port); counts connections by protocol."""

    def __init__(
        self,
        app: App,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        max_streams: int = H2_MAX_STREAMS,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls  # with ALPN set on it, clients choose h2 or http/1.1 as with real APIs
        self.max_streams = max_streams
        self._h2: set[_H2] = set()
        self.connections = 0
        self.h2_connections = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=2048, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def goaway(self) -> None:
        """Send GOAWAY on every HTTP/2 connection, as a server being drained does: streams not
        answered yet are refused, and clients must move to a new connection."""
        for connection in list(self._h2):
            connection.goaway()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            first = await reader.read(READ_SIZE)
            if first.startswith(H2_PREFACE[: len(first)]) and first:
                while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                    more = await reader.read(READ_SIZE)
                    if not more:
                        return
                    first += more
                if first.startswith(H2_PREFACE):
                    self.h2_connections += 1
                    connection = _H2(self, reader, writer)
                    self._h2.add(connection)
                    try:
                        await connection.serve(first)
                    finally:
                        self._h2.discard(connection)
                    return
            await self._serve_h1(reader, writer, first)
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connections; asyncio's stream callback logs a cancelled task as an
            # error, so the cancellation ends here
            writer.transport.abort()
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _handle(self, request: Request) -> Response:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self.app(request)
        except Abort:
            raise
        except Exception:
            log.exception("sandbox application error on %s %s", request.method, request.path)
            return Response(500, [("content-type", "text/plain")], b"sandbox application error")
        finally:
            self.in_flight -= 1

    async def _serve_h1(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        conn.receive_data(data)
        while True:
            head: h11.Request | None = None
            body: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(READ_SIZE))
                elif isinstance(event, h11.Request):
                    head = event
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
            assert head is not None
            headers = {k.decode().lower(): v.decode() for k, v in head.headers}
            request = _request(
                head.method.decode(), head.target.decode(), headers, b"".join(body), "HTTP/1.1"
            )
            try:
                response = await self._handle(request)
                await self._send_h1(conn, writer, response)
            except Abort:
                writer.transport.abort()
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _send_h1(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response
    ) -> None:
        headers = list(response.headers)
        if response.stream is None:
            headers.append(("content-length", str(len(response.body))))
        head = h11.Response(
            status_code=response.status, headers=headers, reason=_reason(response.status)
        )
        writer.write(conn.send(head) or b"")
        if response.stream is None:
            writer.write(conn.send(h11.Data(data=response.body)) or b"")
        else:
            async for chunk in response.stream:
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


class _H2:
    """One HTTP/2 connection: a read loop that dispatches each finished request to a task."""

    def __init__(
        self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, list[bytes]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.window = asyncio.Event()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def serve(self, first: bytes) -> None:
        self.conn.initiate_connection()
        limit = self.server.max_streams
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit})
        self.flush()
        data = first
        try:
            while data:
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush()
                    return
                for event in events:
                    self._on(event)
                self.flush()
                await self.writer.drain()
                data = await self.reader.read(READ_SIZE)
        finally:
            for task in self.tasks.values():
                task.cancel()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            self.heads[sid] = {str(k).lower(): str(v) for k, v in event.headers or []}
            self.bodies[sid] = []
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            self.bodies.setdefault(sid, []).append(event.data or b"")
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
        elif isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id
            self.tasks[sid] = self.server._spawn(self._respond(sid))
        elif isinstance(event, h2.events.StreamReset):
            reset = self.tasks.get(event.stream_id)
            if reset is not None:
                reset.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()

    def goaway(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(last_stream_id=0)
            self.flush()

    async def _respond(self, sid: int) -> None:
        try:
            await self._answer(sid)
        finally:
            self.tasks.pop(sid, None)

    async def _answer(self, sid: int) -> None:
        head = self.heads.pop(sid, {})
        body = b"".join(self.bodies.pop(sid, []))
        headers = {k: v for k, v in head.items() if not k.startswith(":")}
        target = head.get(":path", "/")
        request = _request(head.get(":method", "GET"), target, headers, body, "HTTP/2")
        try:
            response = await self.server._handle(request)
            out = [(":status", str(response.status)), *response.headers]
            if response.stream is None:
                out.append(("content-length", str(len(response.body))))
                self.conn.send_headers(sid, out, end_stream=not response.body)
                self.flush()
                if response.body:
                    await self._send(sid, response.body, end=True)
            else:
                self.conn.send_headers(sid, out)
                self.flush()
                async for chunk in response.stream:
                    await self._send(sid, chunk, end=False)
                self.conn.end_stream(sid)
                self.flush()
        except Abort:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            return

    async def _send(self, sid: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while view:
            size = min(
                self.conn.local_flow_control_window(sid),
                self.conn.max_outbound_frame_size,
                len(view),
            )
            if size <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.conn.send_data(sid, bytes(view[:size]), end_stream=end and size == len(view))
            view = view[size:]
            self.flush()
        if not data and end:
            self.conn.end_stream(sid)
            self.flush()
        await self.writer.drain()
