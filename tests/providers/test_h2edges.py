"""``H2Transport`` against a scriptable HTTP/2 server, for what real front ends do and the
sandbox cannot: a graceful GOAWAY with streams still being answered, a refused stream while its
body waits for window, a shut window with one sender cancelled, an unread body as big as a
stream's window, and a server that stops answering its connect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from hyperframe.frame import GoAwayFrame

from providers.transport.h2transport import H2Transport

Handler = Callable[["Peer", int], Awaitable[None]]


class Peer(asyncio.Protocol):
    """One server connection: h2 on the server side, each request handed to ``handler``."""

    def __init__(self, handler: Handler, *, window_updates: bool, silent: list[bool]) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.handler = handler
        self.window_updates = window_updates
        self.silent = silent[0]  # read when the connection is accepted
        self.wire: asyncio.Transport | None = None
        self.tasks: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.wire = transport  # type: ignore[assignment]
        if not self.silent:
            self.conn.initiate_connection()
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.wire is not None:
            self.wire.write(data)

    def data_received(self, data: bytes) -> None:
        if self.silent:
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                task = asyncio.ensure_future(self.handler(self, event.stream_id or 0))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(event, h2.events.DataReceived) and self.window_updates:
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
        self.flush()


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(
        handler: Handler, *, window_updates: bool = True, silent: list[bool] | None = None
    ) -> str:
        mode = silent if silent is not None else [False]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Peer(handler, window_updates=window_updates, silent=mode), "127.0.0.1", 0
        )
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


async def test_a_graceful_goaway_lets_the_streams_it_covers_finish(serve: Serve) -> None:
    """GOAWAY(NO_ERROR) naming the stream in flight (a front end draining): that answer still
    arrives whole, and the next call opens a new connection."""

    async def answer_across_a_goaway(peer: Peer, sid: int) -> None:
        peer.conn.send_headers(sid, [(b":status", b"200")])
        peer.flush()
        await asyncio.sleep(0.05)
        goaway = GoAwayFrame(0)
        goaway.last_stream_id, goaway.error_code = sid, 0
        assert peer.wire is not None
        peer.wire.write(goaway.serialize())  # raw: h2 on this side keeps serving the stream
        await asyncio.sleep(0.05)
        peer.conn.send_data(sid, b"answered after goaway", end_stream=True)
        peer.flush()

    url = await serve(answer_across_a_goaway)
    transport = H2Transport(prior_knowledge=True)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=5) as http:
        response = await http.get("/drained")
        assert response.content == b"answered after goaway"
        again = await http.get("/next")
    assert again.content == b"answered after goaway"


async def test_a_refused_stream_stops_its_waiting_upload_at_once(serve: Serve) -> None:
    """The server never opens the window and refuses the stream: the upload waiting for window
    ends with the reset now, not with a write timeout."""

    async def refuse(peer: Peer, sid: int) -> None:
        await asyncio.sleep(0.1)
        peer.conn.reset_stream(sid, 7)  # REFUSED_STREAM
        peer.flush()

    url = await serve(refuse, window_updates=False)
    transport = H2Transport(prior_knowledge=True)
    timeout = httpx.Timeout(30.0, write=20.0)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=timeout) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="reset"):
            await asyncio.wait_for(http.post("/big", content=b"x" * 200_000), 5)
        assert transport.streams_in_use == 0


async def test_cancelling_one_waiting_upload_leaves_the_others_waiting(serve: Serve) -> None:
    """Two uploads wait for a shut window; cancelling one (its deadline) must not cancel the
    other, which ends with its own write timeout."""

    async def never(peer: Peer, sid: int) -> None:
        return None

    url = await serve(never, window_updates=False)
    transport = H2Transport(prior_knowledge=True)
    timeout = httpx.Timeout(30.0, write=1.0)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=timeout) as http:
        first = asyncio.ensure_future(http.post("/a", content=b"x" * 200_000))
        second = asyncio.ensure_future(http.post("/b", content=b"x" * 200_000))
        await asyncio.sleep(0.3)
        first.cancel()
        results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], httpx.WriteTimeout)


async def test_an_unread_body_does_not_hold_back_the_other_streams(serve: Serve) -> None:
    """A 20 MB answer left unread fills its stream's window, not the connection's: a small
    call on the same connection still gets its answer."""

    async def sized(peer: Peer, sid: int) -> None:
        size = 20_000_000 if sid == 1 else 1000
        peer.conn.send_headers(sid, [(b":status", b"200")])
        sent = 0
        while sent < size:
            window = min(peer.conn.local_flow_control_window(sid), 16_384, size - sent)
            if window <= 0:
                peer.flush()
                if peer.wire is None or peer.wire.is_closing():
                    return
                await asyncio.sleep(0.01)
                continue
            peer.conn.send_data(sid, b"y" * window, end_stream=sent + window == size)
            sent += window
        peer.flush()

    url = await serve(sized)
    transport = H2Transport(prior_knowledge=True)
    async with (
        httpx.AsyncClient(base_url=url, transport=transport, timeout=3) as http,
        http.stream("GET", "/large") as large,
    ):
        assert large.status_code == 200
        await asyncio.sleep(0.3)  # the server fills what it may of the large body
        small = await http.get("/small")
        assert len(small.content) == 1000
        assert transport.connections == 1


async def test_a_failed_connect_is_not_handed_to_a_later_call(serve: Serve) -> None:
    """A connect that fails after its only caller gave up (pool timeout) is not the answer to
    the next call made once the server is back: that one connects anew and succeeds."""

    async def ok(peer: Peer, sid: int) -> None:
        peer.conn.send_headers(sid, [(b":status", b"204")], end_stream=True)
        peer.flush()

    silent = [True]  # accepts, never sends its settings
    url = await serve(ok, silent=silent)
    transport = H2Transport(prior_knowledge=True)
    timeout = httpx.Timeout(5.0, connect=0.3, pool=0.05)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=timeout) as http:
        with pytest.raises(httpx.PoolTimeout):
            await http.get("/first")
        await asyncio.sleep(0.6)  # the connect attempt times out with nobody waiting
        silent[0] = False  # the server is back
        response = await http.get("/second", timeout=httpx.Timeout(5.0))
    assert response.status_code == 204
