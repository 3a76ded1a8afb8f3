"""Issue 15 item 1: poison entries XADDed by hand into a real redis-server's event log while
the real components run. Every reader of the log counts and skips what it cannot read, and
goes on: the gateway (fan-out, dashboard stats, SSE, restart), ops, the projections (and
``aiis replay --verify``, ``aiis archive``), and a task's watchers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect

from engine.client import Client
from engine.core import tolerant
from engine.core.events import TERMINAL_EVENTS
from engine.core.keys import PartitionKeys
from engine.operations.ops import Ops
from engine.runtime.autoscale import SignalReader
from engine.runtime.connection import connect_sync_for
from engine.settings import Settings
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.gen import tasks_pb2_grpc
from gateway.grpc.server import GrpcServer
from gateway.grpc.settings import GrpcSettings
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from projections.lookup import task_record
from projections.runner import run_projections
from projections.settings import ProjectionSettings
from tests.conftest import TOPOLOGIES, Engine, Topology
from tests.engine.helpers import wait_for
from tests.gateway.conftest import MakeGateway, recv, request
from tests.grpc.conftest import ACME, AUTH

pytestmark = pytest.mark.timeout(120)


def poison(form: str, task: str = "d") -> dict[str, Any]:
    """The entries of issue 15 item 1 (and two more), as raw stream fields."""
    fields: dict[str, Any] = {"type": "TaskProgress", "task": task, "tenant": "A", "ts": "1"}
    fields |= {"v": "1", "data": "{}"}
    if form == "bad_ts":
        fields["ts"] = "abc"
    elif form == "not_utf8":
        fields["task"] = b"\xff\xfe" + task.encode()
    elif form == "succeeded_list":
        fields |= {"type": "TaskSucceeded", "data": "[]"}
    elif form == "succeeded_empty":  # decodes, but no view can apply it
        fields |= {"type": "TaskSucceeded", "data": "{}"}
    elif form == "provider_object":  # decodes; a provider that is not a name
        fields |= {"type": "TaskSucceeded", "data": '{"provider": {}, "cost_usd": 1}'}
    elif form == "unknown_type":
        fields["type"] = "TaskTeleported"
    else:
        raise AssertionError(form)
    return fields


async def xadd_poison(client: Client, form: str, partition: int = 0, task: str = "d") -> str:
    eid = await client.store.redis.xadd(client.store.keys(partition).log, poison(form, task))
    return eid.decode()


def _env(settings: Settings, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIIS_REDIS_URL": settings.redis_url or "",
        "AIIS_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "AIIS_NAMESPACE": settings.namespace,
        "AIIS_PARTITIONS": str(settings.partitions),
        "AIIS_DATA_DIR": str(tmp),
    }


# --- the gateway ---------------------------------------------------------------------------


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Gateways on port 0 (open mode), always stopped."""
    made: list[Gateway] = []

    async def make(settings: Settings) -> Gateway:
        gateway = Gateway(
            settings,
            GatewaySettings(tokens="", tokens_file=None),
            proj=ProjectionSettings(),
            host="127.0.0.1",
            port=0,
        )
        await gateway.start()
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.stop()


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
@pytest.mark.parametrize("form", ["bad_ts", "not_utf8", "succeeded_list", "unknown_type"])
async def test_gateway_keeps_serving_and_restarts_after_a_poison_entry(
    engine: Engine, make_gateway: MakeGateway, form: str
) -> None:
    """After a poison entry: /healthz stays 200, a subscriber gets the next real task's events
    to its terminal one, and a restarted gateway (which seeds its stats from the log) starts."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    before = tolerant.count("hub") + tolerant.count("stats")
    async with ws_connect(gateway.ws_url) as ws:
        assert (await request(ws, op="subscribe", tenant="*"))["op"] == "subscribed"
        for partition in range(engine.settings.partitions):  # on a cluster, read apart
            await xadd_poison(engine.client, form, partition)
        task_id = await engine.client.submit("after the poison")
        types = []
        while not types or types[-1] not in TERMINAL_EVENTS:
            msg = await recv(ws)
            if msg["op"] == "event":
                assert msg["event"]["task_id"] == task_id
                types.append(msg["event"]["type"])
    assert types[0] == "TaskRequested" and types[-1] == "TaskSucceeded"
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert "aiis_undecodable_events_total{" in metrics
    assert tolerant.count("hub") + tolerant.count("stats") > before
    await gateway.stop()
    again = await make_gateway(engine.settings)  # seeds the dashboard from the log
    async with httpx.AsyncClient(base_url=again.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        created = await http.post("/v1/tasks", json={"input": "after the restart"})
        assert created.status_code == 202


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_sse_and_watch_skip_a_poison_entry_of_their_own_task(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """A malformed entry naming a watched task mid-way: Client.watch and the SSE stream skip
    it and still end with the task's real terminal event."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    client = engine.client
    task_id = await client.submit("slow", params={"script": ["sleep:0.6", "ok"]})
    partition = client._partition(task_id)

    async def watched() -> list[str]:
        return [e.type async for e in client.watch(task_id)]

    watcher = asyncio.create_task(watched())
    await asyncio.sleep(0.2)
    for form in ("bad_ts", "succeeded_list", "succeeded_empty"):
        await xadd_poison(client, form, partition, task_id)
    types = await asyncio.wait_for(watcher, 30)
    assert types[0] == "TaskRequested" and types[-1] == "TaskSucceeded"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        url = f"/v1/tasks/{task_id}/events"
        async with http.stream("GET", url) as sse:
            events = [
                orjson.loads(line[6:])["type"]
                async for line in sse.aiter_lines()
                if line.startswith("data: ")
            ]
    assert events[-1] == "TaskSucceeded"
    assert events.count("TaskSucceeded") == 1  # the empty-data one is no terminal for SSE


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_grpc_watch_skips_a_poison_entry_of_its_task(engine: Engine) -> None:
    """gRPC WatchTask (Client.watch underneath) skips malformed entries naming its task and
    streams the task's real events to its real terminal one."""
    engine.start_worker()
    config = GrpcSettings(shutdown_grace_s=0.5)
    server = GrpcServer(engine.settings, None, AUTH, config, host="127.0.0.1", port=0)
    await server.start()
    channel = grpc.aio.insecure_channel(server.target)
    try:
        stub = tasks_pb2_grpc.TaskServiceStub(channel)
        client = engine.client
        task_id = await client.submit("slow", tenant="acme", params={"script": ["sleep:0.6"]})
        watch = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=ACME)
        first = await asyncio.wait_for(watch.read(), 10)
        for form in ("bad_ts", "succeeded_list", "succeeded_empty"):
            await xadd_poison(client, form, client._partition(task_id), task_id)
        types = [first.type]
        async with asyncio.timeout(30):
            while (event := await watch.read()) is not grpc.aio.EOF:
                types.append(event.type)
        assert types[0] == "TaskRequested" and types[-1] == "TaskSucceeded"
        assert types.count("TaskSucceeded") == 1
    finally:
        await channel.close()
        await server.stop()


# --- the autoscaler --------------------------------------------------------------------------


async def test_autoscaler_signals_count_real_outcomes_past_poison_entries(engine: Engine) -> None:
    """The autoscaler's signal reader (blocking client from the same factory) reads past
    poison entries and counts only the real outcomes after them."""
    settings = engine.settings
    reader = SignalReader(
        connect_sync_for(settings, settings.redis_url or ""),
        [PartitionKeys(settings.namespace, p) for p in range(settings.partitions)],
    )
    reader.read()  # starts from now
    for form in ("bad_ts", "not_utf8", "succeeded_list", "unknown_type"):
        await xadd_poison(engine.client, form)
    engine.start_worker()
    ids = [await engine.client.submit(f"t{i}") for i in range(3)]
    for task_id in ids:  # (Client.watch ends at the terminal event, skipping the poison)
        async with asyncio.timeout(30):
            _ = [event async for event in engine.client.watch(task_id)]
    finished = 0
    for _ in range(3):  # the log may still grow by the time it reads
        finished += (await asyncio.to_thread(reader.read)).finished
    assert finished == 3 + 1  # the 3 tasks, and the poison typed TaskSucceeded


# --- ops -----------------------------------------------------------------------------------


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
@pytest.mark.parametrize(
    "form", ["succeeded_list", "succeeded_empty", "provider_object", "not_utf8"]
)
async def test_ops_keeps_handling_after_a_poison_entry(
    engine: Engine, topology: Topology, form: str
) -> None:
    """`aiis ops`'s reader skips a poison entry and handles the real events after it (on a
    standalone Redis and on a 3-master cluster, every partition)."""
    engine.start_worker()
    ops = Ops(engine.client)
    stop = asyncio.Event()
    runner = asyncio.create_task(ops.run(stop))
    try:
        for p in range(engine.settings.partitions):
            await xadd_poison(engine.client, form, p)
        ids = [await engine.client.submit(f"t{i}") for i in range(8)]

        async def handled() -> bool:
            assert not runner.done(), runner
            n = len(await engine.log())
            partitions = engine.settings.partitions
            return n >= 3 * len(ids) + partitions and ops.stats["events"] >= n - partitions

        await wait_for(handled, 30)
        assert not runner.done()
        assert tolerant.count("ops") >= engine.settings.partitions
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
        await ops.aclose()


# --- projections, replay, archive ----------------------------------------------------------


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
@pytest.mark.parametrize(
    "form",
    ["unknown_type", "succeeded_list", "succeeded_empty", "provider_object", "not_utf8", "bad_ts"],
)
async def test_projections_fold_past_a_poison_entry_and_replay_verifies(
    engine: Engine, tmp_path: Path, form: str
) -> None:
    """The projections skip a poison entry and fold the real tasks after it; `aiis replay
    --verify` then holds, and so does `aiis archive` followed by a verify from the archive."""
    engine.start_worker()
    settings = engine.settings
    proj = ProjectionSettings(batch=50, idle_min_s=0.01, idle_max_s=0.05)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(engine.client.store.redis, settings, stop, proj))
    try:
        await engine.client.submit("before")
        for partition in range(settings.partitions):  # on a cluster, read apart
            await xadd_poison(engine.client, form, partition)
        ids = [await engine.client.submit(f"t{i}") for i in range(5)]

        async def folded() -> bool:
            assert not runner.done(), runner
            for t in ids:
                rec = await task_record(
                    engine.client.store.redis, settings.namespace, settings.partitions, t
                )
                if rec is None or rec.get("status") != "succeeded":
                    return False
            return True

        await wait_for(folded, 30)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
    env = _env(settings, tmp_path)
    run = [sys.executable, "-m", "engine"]
    verify = subprocess.run(
        [*run, "replay", "--verify"], env=env, capture_output=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    archived = subprocess.run(
        [*run, "archive", "--min-age", "0"], env=env, capture_output=True, timeout=60, check=False
    )
    assert archived.returncode == 0, archived.stdout + archived.stderr
    again = subprocess.run(
        [*run, "replay", "--verify"], env=env, capture_output=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
