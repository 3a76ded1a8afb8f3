"""Resume with ``since``: no gap and no duplicate, across a real gateway restart."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway, events_until_terminal, recv, request

STREAM = {"script": ["stream:8"]}


async def test_resume_across_gateway_restart_has_no_gap_and_no_duplicate(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Events seen before a gateway restart + events replayed after it = the tenant's log."""
    engine.start_worker()
    first = await make_gateway(engine.settings)
    tasks: set[str] = set()
    received: list[str] = []
    async with connect(first.ws_url) as ws:
        assert (await request(ws, op="subscribe", tenant="t1"))["op"] == "subscribed"
        for _ in range(3):
            tasks.add(await engine.client.submit("a", tenant="t1", params=STREAM))
        while len(received) < 5:
            msg = await recv(ws)
            if msg["op"] == "event":
                received.append(msg["event"]["id"])
        await first.stop()  # a real stop: the server object closes every connection (1001)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    # the worker keeps producing while no gateway runs
    for _ in range(3):
        tasks.add(await engine.client.submit("b", tenant="t1", params=STREAM))
    await asyncio.sleep(0.3)
    second = await make_gateway(engine.settings)
    async with connect(second.ws_url) as ws:
        reply = await request(ws, op="subscribe", tenant="t1", since=received[-1])
        assert reply["op"] == "subscribed"
        for _ in range(2):
            tasks.add(await engine.client.submit("c", tenant="t1", params=STREAM))
        # tasks that ended before `since` have nothing left to send
        ended = {e["task_id"] for e in await _terminal_before(engine, received[-1])}
        rest = await events_until_terminal(ws, tasks - ended)
    received += [e["id"] for e in rest]
    assert received == await engine.log(tenant="t1")
    assert len(received) == len(set(received))


async def _terminal_before(engine: Engine, last: str) -> list[dict[str, str]]:
    store = engine.client.store
    entries = await store.entries(store.keys(0).log, "-", last)
    return [
        {"task_id": f[b"task"].decode()}
        for _, f in entries
        if f[b"type"].decode() in {"TaskSucceeded", "TaskFailed", "TaskCancelled"}
    ]


async def test_task_subscription_replays_from_the_first_event(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Subscribing to a task after it finished still delivers its whole history, then ends."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    task_id = await engine.client.submit("x", params=STREAM)
    async for _ in engine.client.watch(task_id):
        pass
    async with connect(gateway.ws_url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "task_id": task_id}))
        assert (await recv(ws))["op"] == "subscribed"
        got = await events_until_terminal(ws, {task_id})
    assert [e["id"] for e in got] == await engine.log(task_id=task_id)
    assert got[0]["type"] == "TaskRequested" and got[-1]["type"] == "TaskSucceeded"
