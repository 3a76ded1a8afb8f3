"""Back-pressure: a subscriber that stops reading is cut off (1013) and nobody else waits."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from engine.core.events import TERMINAL_EVENTS
from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway, recv, request


async def terminal_count(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        while sum(e["type"] in TERMINAL_EVENTS for e in got) < n:
            msg = await recv(ws)
            if msg["op"] == "event":
                got.append(msg["event"])
    return got


async def test_slow_subscriber_is_closed_1013_without_delaying_a_fast_one(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """A reader stuck on a full TCP window is closed with 1013; the fast one gets everything."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings, send_queue_bytes=4 * 2**20, close_timeout_s=20)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    sock.setblocking(False)
    async with (
        connect(gateway.ws_url, sock=sock, max_queue=1, max_size=2**24) as slow,
        connect(gateway.ws_url, max_size=2**24) as fast,
    ):
        assert (await request(slow, op="subscribe", tenant="*"))["op"] == "subscribed"
        assert (await request(fast, op="subscribe", tenant="*"))["op"] == "subscribed"
        big = "x" * 100_000
        reader = asyncio.create_task(terminal_count(fast, 100))
        tasks = [await engine.client.submit(big) for _ in range(100)]
        got = await reader
        assert {e["task_id"] for e in got} == set(tasks)
        assert [e["id"] for e in got] == await engine.log()
        assert gateway.ctx is not None and gateway.ctx.counters.slow_closed == 1
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await recv(slow)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # the fast connection is still fine
        assert (await request(fast, op="ping", ref=1))["op"] == "pong"
