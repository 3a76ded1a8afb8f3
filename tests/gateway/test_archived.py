"""After the log was archived and trimmed, the gateway still serves a finished task whole:
HTTP GET with its terminal event and result, SSE from the start and with Last-Event-ID, and a
WebSocket task subscription with `since` (DESIGN.md §3 invariant 10)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect

from tests.archived import archive_now
from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway, events_until_terminal, recv
from tests.gateway.test_http import _sse_ids

STREAM = {"script": ["stream:6"]}


async def _archived_task(engine: Engine, tmp_path: Path) -> tuple[str, list[str]]:
    engine.start_worker()
    task_id = await engine.client.submit("hi", params=STREAM)
    async with asyncio.timeout(15):
        story = [e.id async for e in engine.client.watch(task_id, block_ms=200)]
    await archive_now(engine.client.store.redis, engine.settings, tmp_path)
    assert await engine.log(task_id=task_id) == []  # really trimmed
    return task_id, story


async def test_http_get_and_sse_serve_an_archived_task(
    engine: Engine, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """GET /v1/tasks/T has the terminal event and result; SSE replays every event and ends,
    from the start and after a Last-Event-ID."""
    task_id, story = await _archived_task(engine, tmp_path)
    gateway = await make_gateway(engine.settings)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        view = (await http.get(f"/v1/tasks/{task_id}")).json()
        assert view["status"] == "succeeded"
        assert view["terminal"]["id"] == story[-1] and view["terminal"]["data"]["result"]["text"]
        url = f"/v1/tasks/{task_id}/events"
        async with asyncio.timeout(15), http.stream("GET", url) as whole:
            assert await _sse_ids(whole) == story
        headers = {"Last-Event-ID": story[1]}
        async with asyncio.timeout(15), http.stream("GET", url, headers=headers) as rest:
            assert await _sse_ids(rest) == story[2:]


async def test_websocket_subscription_with_since_replays_an_archived_task(
    engine: Engine, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """A task subscription from the start and with `since` replays the archived events (no
    `since_too_old`) and ends with the terminal one."""
    task_id, story = await _archived_task(engine, tmp_path)
    gateway = await make_gateway(engine.settings)
    for since, expected in ((None, story), (story[0], story[1:]), (story[2], story[3:])):
        async with connect(gateway.ws_url) as ws:
            msg: dict[str, object] = {"op": "subscribe", "task_id": task_id}
            if since is not None:
                msg["since"] = since
            await ws.send(orjson.dumps(msg))
            assert (await recv(ws))["op"] == "subscribed"
            got = await events_until_terminal(ws, {task_id}, timeout=15)
        assert [e["id"] for e in got] == expected
