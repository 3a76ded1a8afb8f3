"""Gateway fixtures: a running engine (client + in-process worker) on the session's real
redis-server, and a factory of gateway servers on port 0 that are always stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from engine.core.events import TERMINAL_EVENTS
from engine.settings import Settings
from gateway.auth import hash_token
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from projections.settings import ProjectionSettings

TOKENS = {"tok-acme": "acme", "tok-beta": "beta", "tok-ops": "*"}
TOKENS_ENV = ",".join(f"{hash_token(t)}={tenant}" for t, tenant in TOKENS.items())


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    made: list[Gateway] = []

    async def make(settings: Settings, **overrides: Any) -> Gateway:
        values: dict[str, Any] = {"tokens": "", "tokens_file": None, **overrides}
        gateway = Gateway(
            settings, GatewaySettings(**values), proj=ProjectionSettings(), host="127.0.0.1", port=0
        )
        await gateway.start()
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.stop()


async def recv(ws: ClientConnection, timeout: float = 15.0) -> dict[str, Any]:
    """The next frame, decoded (fails the test after a generous timeout)."""
    async with asyncio.timeout(timeout):
        frame = await ws.recv()
    msg: dict[str, Any] = orjson.loads(frame)
    return msg


async def request(ws: ClientConnection, **msg: Any) -> dict[str, Any]:
    """Send one request and return the next non-event frame."""
    await ws.send(orjson.dumps(msg))
    while True:
        reply = await recv(ws)
        if reply["op"] not in ("event", "stats", "cursors"):
            return reply


async def events_until_terminal(
    ws: ClientConnection, task_ids: set[str], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Event envelopes received until every task in ``task_ids`` had its terminal event."""
    got: list[dict[str, Any]] = []
    left = set(task_ids)
    async with asyncio.timeout(timeout):
        while left:
            msg = await recv(ws, timeout)
            if msg["op"] != "event":
                continue
            got.append(msg["event"])
            if msg["event"]["type"] in TERMINAL_EVENTS:
                left.discard(msg["event"]["task_id"])
    return got
