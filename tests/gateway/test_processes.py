"""``aiis gateway --processes 2``: two real processes behind one HTTP and one gRPC port; a
WebSocket subscriber that resumes after the process serving it was SIGKILLed loses nothing and
gets nothing twice; /metrics reports both processes whichever one answers; gRPC works on both."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.core.events import TERMINAL_EVENTS
from gateway.grpc.gen import tasks_pb2_grpc
from tests.conftest import Engine
from tests.gateway.conftest import recv, request
from tests.grpc.test_flow import text_task

pytestmark = pytest.mark.slow

STREAM = {"script": ["stream:6"]}
TENANT = "t1"


@dataclass
class Group:
    """A running ``aiis gateway --processes 2`` and what it announced."""

    proc: asyncio.subprocess.Process
    ws_url: str = ""
    http_url: str = ""
    grpc_target: str = ""
    pids: dict[int, int] = field(default_factory=dict)  # child index -> pid
    lines: list[str] = field(default_factory=list)

    async def read_until(self, done: Any, timeout: float = 60.0) -> None:
        """Read announced lines until ``done()`` holds."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while not done():
                line = (await self.proc.stdout.readline()).decode()
                assert line, f"aiis gateway exited: {self.lines}"
                self.lines.append(line)
                if found := re.search(r"dashboard (http://\S+)/\s+websocket (ws://\S+)", line):
                    self.http_url, self.ws_url = found[1], found[2]
                elif found := re.search(r"aiis gateway: grpc (\S+)", line):
                    self.grpc_target = found[1]
                elif found := re.search(r"aiis gateway\[(\d+)\]: process (\d+)", line):
                    self.pids[int(found[1])] = int(found[2])


@contextlib.asynccontextmanager
async def gateway_group(engine: Engine, processes: int = 2) -> AsyncIterator[Group]:
    env = {
        **os.environ,
        "AIIS_REDIS_URL": engine.settings.redis_url or "",
        "AIIS_NAMESPACE": engine.settings.namespace,
        "AIIS_GATEWAY_PORT": "0",
        "AIIS_GRPC_PORT": "0",
        "AIIS_GATEWAY_TOKENS": "",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "engine", "gateway", "--processes", str(processes)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    group = Group(proc)
    try:
        await group.read_until(lambda: len(group.pids) == processes and group.grpc_target)
        yield group
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _restart(group: Group, index: int) -> None:
    """SIGKILL child ``index`` and wait until the supervisor announced its successor."""
    old = group.pids.pop(index)
    os.kill(old, signal.SIGKILL)
    await group.read_until(lambda: index in group.pids)
    assert group.pids[index] != old


async def test_a_subscriber_resumed_after_its_process_was_killed_loses_nothing(
    engine: Engine,
) -> None:
    """Events seen before the serving process died + events after resuming with ``since`` on
    whichever process accepts the new connection = the tenant's log, no duplicate."""
    engine.start_worker()
    tasks: set[str] = set()
    ended: set[str] = set()
    received: list[str] = []

    def take(msg: dict[str, Any]) -> None:
        if msg["op"] == "event":
            received.append(msg["event"]["id"])
            if msg["event"]["type"] in TERMINAL_EVENTS:
                ended.add(msg["event"]["task_id"])

    async with gateway_group(engine) as group:
        ws = await connect(group.ws_url)
        assert (await request(ws, op="subscribe", tenant=TENANT))["op"] == "subscribed"
        for _ in range(3):
            tasks.add(await engine.client.submit("a", tenant=TENANT, params=STREAM))
        while len(received) < 4:
            take(await recv(ws))
        # kill both children in turn: whichever one served this connection, it is cut
        for index in (0, 1):
            tasks.add(await engine.client.submit("b", tenant=TENANT, params=STREAM))
            await _restart(group, index)
        with pytest.raises(ConnectionClosed):
            while True:
                take(await recv(ws))
        for _ in range(2):
            tasks.add(await engine.client.submit("c", tenant=TENANT, params=STREAM))
        async with connect(group.ws_url) as again:
            reply = await request(again, op="subscribe", tenant=TENANT, since=received[-1])
            assert reply["op"] == "subscribed"
            async with asyncio.timeout(60):
                while tasks - ended:
                    take(await recv(again))
    assert received == await engine.log(tenant=TENANT)
    assert len(received) == len(set(received))


def _samples(body: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == name
    ]


async def test_metrics_report_every_process_and_grpc_serves_on_the_shared_port(
    engine: Engine,
) -> None:
    """Whichever process answers /metrics, every process's own families are there (label
    ``process``) and they add up to what was done; gRPC submits over several channels to the
    shared port all succeed."""
    engine.start_worker()
    async with gateway_group(engine) as group:
        # each process serves on uvloop with its start-up objects frozen (quiet_gc)
        started = [line for line in group.lines if re.search(r"gateway\[\d+\]: process", line)]
        assert len(started) == 2
        for line in started:
            found = re.search(r"event loop (\w+), gc frozen (\d+)", line)
            assert found is not None and found[1] == "uvloop" and int(found[2]) > 0, line
        channels = [grpc.aio.insecure_channel(group.grpc_target) for _ in range(6)]
        try:
            replies = await asyncio.gather(
                *(
                    tasks_pb2_grpc.TaskServiceStub(ch).SubmitTask(text_task(f"p{i}"))
                    for i, ch in enumerate(channels)
                )
            )
        finally:
            for ch in channels:
                await ch.close()
        submitted = 8
        for i in range(submitted):
            async with httpx.AsyncClient(base_url=group.http_url, timeout=10) as http:
                reply = await http.post("/v1/tasks", json={"input": f"h{i}"})
                assert reply.status_code == 202
        for task_id in [r.task_id for r in replies]:
            async for _ in engine.client.watch(task_id):
                pass
        processes: set[str] = set()
        accepted = 0.0
        async with asyncio.timeout(30):
            while processes != {"0", "1"} or accepted != submitted:
                # a new connection each time: the kernel picks the process that answers
                async with httpx.AsyncClient(timeout=10) as http:
                    body = (await http.get(f"{group.http_url}/metrics")).text
                opened = _samples(body, "aiis_gateway_open_connections")
                processes = {labels["process"] for labels, _ in opened}
                accepted = sum(
                    value
                    for labels, value in _samples(body, "aiis_gateway_submits_total")
                    if labels["transport"] == "http" and labels["outcome"] == "accepted"
                )
                await asyncio.sleep(0.2)
