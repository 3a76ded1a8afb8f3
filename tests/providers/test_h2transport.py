"""``H2Transport`` against the sandbox's HTTP/2 server over loopback: stream multiplexing up to the
server's limit, waiting for a free stream, connect failures, early close, timeouts, flow control
on big bodies, GOAWAY, and TLS with ALPN (h2, or HTTP/1.1 when the server offers only that)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import trustme

from engine.runtime.workers import run_loop
from providers.sandbox.app import SandboxApp
from providers.sandbox.common import reply_text
from providers.sandbox.server import HttpServer
from providers.transport.h2conn import FLUSH_EVERY, Connection
from providers.transport.h2transport import H2Transport

PATH = "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
STREAM_PATH = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
HEADERS = {"x-goog-api-key": "k-transport-test", "content-type": "application/json"}

Serve = Callable[..., Awaitable[HttpServer]]


def body(prompt: str) -> bytes:
    return orjson.dumps({"contents": [{"role": "user", "parts": [{"text": prompt}]}]})


def answer(response: httpx.Response) -> str:
    data = orjson.loads(response.content)
    return str(data["candidates"][0]["content"]["parts"][0]["text"])


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[HttpServer] = []

    async def start(latency_s: float = 0.0, **options: Any) -> HttpServer:
        server = HttpServer(SandboxApp(latency_s, hang_s=5.0), "127.0.0.1", 0, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def client(server: HttpServer, transport: H2Transport, scheme: str = "http") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{scheme}://127.0.0.1:{server.port}", transport=transport, timeout=5.0
    )


async def test_streams_share_a_connection_up_to_the_servers_limit(serve: Serve) -> None:
    """25 calls at once against a server allowing 10 streams per connection: three connections,
    every call answered, all 25 in flight together."""
    server = await serve(latency_s=0.8, max_streams=10)
    transport = H2Transport(prior_knowledge=True)
    async with client(server, transport) as http:
        replies = await asyncio.gather(
            *(http.post(PATH, content=body(f"p{i}"), headers=HEADERS) for i in range(25))
        )
        assert transport.connections == 3
    assert [answer(r) for r in replies] == [reply_text(f"p{i}") for i in range(25)]
    assert {r.http_version for r in replies} == {"HTTP/2"}
    assert server.h2_connections == 3
    assert server.peak_in_flight == 25


async def test_calls_wait_for_a_free_stream_when_no_connection_may_be_opened(
    serve: Serve,
) -> None:
    """With one connection of 4 streams, 12 calls queue and all succeed, never more than 4 at
    the server; a pool timeout shorter than the wait raises PoolTimeout."""
    server = await serve(latency_s=0.2, max_streams=4)
    transport = H2Transport(prior_knowledge=True, max_connections=1)
    async with client(server, transport) as http:
        replies = await asyncio.gather(
            *(http.post(PATH, content=body(f"q{i}"), headers=HEADERS) for i in range(12))
        )
        assert all(r.status_code == 200 for r in replies)
        assert server.h2_connections == 1
        assert server.peak_in_flight == 4

        hurried = httpx.Timeout(5.0, pool=0.05)
        results = await asyncio.gather(
            *(
                http.post(PATH, content=body("x"), headers=HEADERS, timeout=hurried)
                for _ in range(8)
            ),
            return_exceptions=True,
        )
    assert sum(isinstance(r, httpx.PoolTimeout) for r in results) == 4
    assert sum(isinstance(r, httpx.Response) for r in results) == 4


async def test_a_failed_connect_fails_every_waiting_call() -> None:
    """Nothing listens: all 20 concurrent calls raise ConnectError (none hangs or waits for a
    pool timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = H2Transport(prior_knowledge=True)
    async with httpx.AsyncClient(transport=transport, timeout=30.0) as http:
        url = f"http://127.0.0.1:{port}{PATH}"
        results = await asyncio.wait_for(
            asyncio.gather(
                *(http.post(url, content=body("x"), headers=HEADERS) for _ in range(20)),
                return_exceptions=True,
            ),
            10,
        )
    assert all(isinstance(r, httpx.ConnectError) for r in results), results


async def test_a_server_that_never_speaks_http2_is_a_connect_timeout_and_is_hung_up_on() -> None:
    """TCP connects but no SETTINGS ever come: ConnectTimeout after the connect timeout, and
    the half-open connection is closed, not left behind."""
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = H2Transport(prior_knowledge=True)
        async with httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(5.0, connect=0.3)
        ) as http:
            with pytest.raises(httpx.ConnectTimeout):
                await http.post(
                    f"http://127.0.0.1:{port}{PATH}", content=body("x"), headers=HEADERS
                )
            await asyncio.wait_for(closed.wait(), 5)
            assert transport.connections == 0
    finally:
        server.close()


async def test_closing_a_body_early_resets_its_stream_and_frees_the_slot(serve: Serve) -> None:
    """Streamed responses closed unread give their stream back: with 2 streams on 1 connection,
    five abandoned streams in a row still leave room for two full calls on that connection."""
    server = await serve(latency_s=0.05, max_streams=2)
    transport = H2Transport(prior_knowledge=True, max_connections=1)
    async with client(server, transport) as http:
        for i in range(5):
            async with http.stream(
                "POST", STREAM_PATH, content=body(f"s{i}"), headers=HEADERS
            ) as r:
                assert r.status_code == 200
        replies = await asyncio.gather(
            *(http.post(PATH, content=body(f"f{i}"), headers=HEADERS) for i in range(2))
        )
        assert [answer(r) for r in replies] == [reply_text("f0"), reply_text("f1")]
        assert transport.connections == 1
        assert transport.streams_in_use == 0
    assert server.h2_connections == 1


async def test_a_silent_server_is_a_read_timeout(serve: Serve) -> None:
    server = await serve()
    transport = H2Transport(prior_knowledge=True)
    async with client(server, transport) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                PATH,
                content=body("wait [[fault:timeout]]"),
                headers=HEADERS,
                timeout=httpx.Timeout(5.0, read=0.2),
            )
        assert transport.streams_in_use == 0
        ok = await http.post(PATH, content=body("after"), headers=HEADERS)
    assert answer(ok) == reply_text("after")


async def test_a_cut_stream_is_an_error_not_a_short_body(serve: Serve) -> None:
    server = await serve()
    transport = H2Transport(prior_knowledge=True)
    async with client(server, transport) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream(
                "POST", STREAM_PATH, content=body("cut [[fault:cut]]"), headers=HEADERS
            ) as response:
                async for _ in response.aiter_bytes():
                    pass
        assert transport.streams_in_use == 0


async def test_a_body_larger_than_the_flow_control_window_is_sent_whole(serve: Serve) -> None:
    """1 MB of prompt is 16 times the server's initial window: the transport waits for window
    updates instead of failing or truncating."""
    server = await serve()
    transport = H2Transport(prior_knowledge=True)
    prompt = "long " * 200_000
    async with client(server, transport) as http:
        response = await http.post(PATH, content=body(prompt), headers=HEADERS)
    assert answer(response) == reply_text(prompt)


async def test_goaway_fails_unanswered_calls_and_later_calls_use_a_new_connection(
    serve: Serve,
) -> None:
    """A draining server's GOAWAY: calls it never answered fail at once with a retryable
    transport error (they do not hang), and the next call opens a new connection."""
    server = await serve(latency_s=0.5)
    transport = H2Transport(prior_knowledge=True)
    async with client(server, transport) as http:
        pending = [
            asyncio.ensure_future(http.post(PATH, content=body(f"g{i}"), headers=HEADERS))
            for i in range(3)
        ]
        for _ in range(500):  # until the server holds all three
            if server.in_flight == 3:
                break
            await asyncio.sleep(0.01)
        server.goaway()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 2)
        assert all(isinstance(r, httpx.RemoteProtocolError) for r in results), results
        after = await http.post(PATH, content=body("after goaway"), headers=HEADERS)
    assert answer(after) == reply_text("after goaway")
    assert server.h2_connections == 2


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(alpn)
    return context


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_negotiates_h2_by_alpn(serve: Serve, ca: trustme.CA) -> None:
    server = await serve(tls=server_tls(ca, ["h2", "http/1.1"]))
    transport = H2Transport(ssl_context=client_tls(ca))
    async with client(server, transport, "https") as http:
        replies = await asyncio.gather(
            *(http.post(PATH, content=body(f"t{i}"), headers=HEADERS) for i in range(5))
        )
    assert {r.http_version for r in replies} == {"HTTP/2"}
    assert [answer(r) for r in replies] == [reply_text(f"t{i}") for i in range(5)]
    assert server.h2_connections == 1


async def test_https_falls_back_to_http11_when_the_server_offers_only_that(
    serve: Serve, ca: trustme.CA
) -> None:
    server = await serve(tls=server_tls(ca, ["http/1.1"]))
    tls = client_tls(ca)
    fallback = httpx.AsyncHTTPTransport(verify=client_tls(ca))
    transport = H2Transport(ssl_context=tls, http1=fallback)
    async with client(server, transport, "https") as http:
        replies = [await http.post(PATH, content=body(f"o{i}"), headers=HEADERS) for i in range(3)]
    assert {r.http_version for r in replies} == {"HTTP/1.1"}
    assert [answer(r) for r in replies] == [reply_text(f"o{i}") for i in range(3)]
    assert server.h2_connections == 0


async def test_plain_http_without_prior_knowledge_is_http11(serve: Serve) -> None:
    server = await serve()
    async with client(server, H2Transport()) as http:
        response = await http.post(PATH, content=body("plain"), headers=HEADERS)
    assert response.http_version == "HTTP/1.1"
    assert answer(response) == reply_text("plain")


def test_the_transport_runs_on_uvloop() -> None:
    """The worker runs on uvloop (engine.runtime.workers.run_loop): its transports are not
    asyncio.Transport subclasses, and calls still go through over HTTP/2."""

    async def main() -> tuple[str, str]:
        server = HttpServer(SandboxApp(), "127.0.0.1", 0)
        await server.start()
        try:
            async with client(server, H2Transport(prior_knowledge=True)) as http:
                response = await http.post(PATH, content=body("on uvloop"), headers=HEADERS)
                return response.http_version, answer(response)
        finally:
            await server.stop()

    assert run_loop(main(), "uvloop") == ("HTTP/2", reply_text("on uvloop"))


async def test_a_burst_is_written_in_pieces_not_after_its_last_request() -> None:
    """A loop turn's first frames are written at once (a lone request does not wait for the
    turn to end); the next ones of the turn share a write, but at most FLUSH_EVERY of them: in
    a burst of thousands of calls the first is on the wire before the last is built."""
    writes: list[bytes] = []

    class Wire:
        def write(self, data: bytes) -> None:
            writes.append(data)

        def close(self) -> None:
            return None

    class NoPool:
        max_streams = 100

        def wake(self) -> None:
            return None

        def forget(self, conn: Connection) -> None:
            return None

    conn = Connection(NoPool())
    conn.connection_made(Wire())  # type: ignore[arg-type]
    conn.start()
    assert len(writes) == 1  # the preface and our settings
    conn.h2.ping(b"12345678")
    conn.flush_soon()
    assert len(writes) == 2  # the turn's first frames: at once
    for _ in range(FLUSH_EVERY - 1):
        conn.h2.ping(b"12345678")
        conn.flush_soon()
    assert len(writes) == 2  # the rest of the turn: coalesced so far
    conn.h2.ping(b"12345678")
    conn.flush_soon()
    assert len(writes) == 3  # the FLUSH_EVERY-th goes out at once, with the ones before it
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left
    assert len(writes) == 3
    conn.h2.ping(b"12345678")
    conn.flush_soon()
    assert len(writes) == 4  # a new turn: its first frames at once again
