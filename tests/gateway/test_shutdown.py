"""Shutdown: SIGTERM to a real `aiis gateway` process closes its WebSockets with 1001."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Engine
from tests.gateway.conftest import recv, request


@pytest.mark.slow
async def test_sigterm_closes_connections_with_1001_and_exits_0(engine: Engine) -> None:
    """The process answers SIGTERM by closing every WebSocket with 1001, then exits 0."""
    env = {
        **os.environ,
        "AIIS_REDIS_URL": engine.settings.redis_url or "",
        "AIIS_NAMESPACE": engine.settings.namespace,
        "AIIS_GATEWAY_PORT": "0",
        "AIIS_GRPC_PORT": "0",  # never the default 50051: an `aiis serve` may hold it
        "AIIS_GATEWAY_TOKENS": "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "gateway", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "gateway exited before announcing its address"
                found = re.search(r"(ws://\S+/v1/ws)", line)
                url = found[1] if found else None
        async with connect(url) as ws:
            assert (await request(ws, op="subscribe", tenant="*"))["op"] == "subscribed"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
