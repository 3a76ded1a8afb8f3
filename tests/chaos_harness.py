"""The chaos run shared by ``bench/chaos.py`` (5,000 tasks) and ``tests/test_chaos.py`` (a few
hundred): every component as a real process — Redis (AOF), the provider sandbox with random
faults, several workers, projections, the gateway — and a WebSocket subscriber, while workers
are SIGKILLed at random, Redis is SIGKILLed and restarted once and the gateway restarted once.
``run_chaos`` returns a report; its ``problems`` list is empty when every guarantee held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.client import Client
from engine.core import mapper
from engine.core.events import TERMINAL_EVENTS
from engine.errors import EngineError
from engine.runtime.embedded import EmbeddedRedis, free_port
from engine.settings import Settings
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig
from projections.views.cost import to_nanos
from tests.chaos_subscriber import Subscriber
from tests.cluster import LocalCluster

NAMESPACE = "chaos"


@dataclass
class ChaosConfig:
    tasks: int = 300
    workers: int = 3
    concurrency: int = 16
    fault_rate: float = 0.2
    kill_every_s: float = 2.0
    seed: int = 7
    timeout_s: float = 240.0
    cluster: bool = False  # a 3-master Redis Cluster (AOF on) instead of one redis-server
    partitions: int = 1  # AIIS_PARTITIONS (use several with ``cluster``)


@dataclass
class ChaosReport:
    accepted: int = 0
    terminal: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    redis_restarts: int = 0
    gateway_restarts: int = 0
    subscriber_resumes: int = 0
    reclaims: int = 0
    retries: int = 0
    fallbacks: int = 0
    provider_errors: int = 0
    dead_letters: int = 0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"accepted tasks         {self.accepted}",
            f"terminal events        {sum(self.terminal.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.outcomes.items()))})",
            f"provider errors seen   {self.provider_errors} (fallbacks {self.fallbacks}, "
            f"retries {self.retries})",
            f"workers SIGKILLed      {self.kills}",
            f"reclaimed tasks        {self.reclaims}",
            f"dead letters           {self.dead_letters}",
            f"Redis restarts         {self.redis_restarts}",
            f"gateway restarts       {self.gateway_restarts}",
            f"subscriber resumes     {self.subscriber_resumes}",
            f"elapsed                {self.elapsed_s:.1f} s",
            "verdict                " + ("OK" if not self.problems else "FAILED"),
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


class Cluster:
    """The processes of one deployment, each restartable."""

    def __init__(self, root: Path, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.redis = EmbeddedRedis(root / "redis", port=free_port())
        self.redis_cluster = (
            LocalCluster(root / "cluster", appendonly=True) if cfg.cluster else None
        )
        self.rng = random.Random(cfg.seed + 1)
        self.sandbox_port = free_port()
        self.gateway_port = free_port()
        self.grpc_port = free_port()
        self.workers: list[subprocess.Popen[bytes]] = []
        self.others: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def redis_url(self) -> str:
        return self.redis_cluster.url if self.redis_cluster is not None else self.redis.url

    @property
    def settings(self) -> Settings:
        return Settings(
            redis_url=self.redis_url,
            namespace=NAMESPACE,
            redis_cluster=self.redis_cluster is not None,
            partitions=self.cfg.partitions,
        )

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIIS_REDIS_URL": self.redis_url,
            "AIIS_REDIS_CLUSTER": "1" if self.redis_cluster is not None else "0",
            "AIIS_PARTITIONS": str(self.cfg.partitions),
            "AIIS_NAMESPACE": NAMESPACE,
            "AIIS_SANDBOX_URL": f"http://127.0.0.1:{self.sandbox_port}",
            "AIIS_VISIBILITY_TIMEOUT_S": "2",
            "AIIS_CONTROL_INTERVAL_S": "0.1",
            "AIIS_RETRY_BASE_S": "0.05",
            "AIIS_RETRY_MAX_S": "1",
            "AIIS_MAX_DELIVERIES": "8",
            "AIIS_DRAIN_TIMEOUT_S": "2",
            "AIIS_CONNECT_TIMEOUT_S": "1",
            "AIIS_READ_TIMEOUT_S": "2",
            "AIIS_STREAM_IDLE_TIMEOUT_S": "1",
            "AIIS_BREAKER_OPEN_S": "1",
            "AIIS_RATE_MAX_WAIT_S": "1",
            "AIIS_GATEWAY_PORT": str(self.gateway_port),
            "AIIS_GRPC_PORT": str(self.grpc_port),
        }

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        if self.redis_cluster is not None:
            self.redis_cluster.start()
        else:
            self.redis.start()
        self.others["sandbox"] = self._spawn(
            "sandbox",
            [
                sys.executable,
                "-m",
                "providers.sandbox",
                "--port",
                str(self.sandbox_port),
                "--fault-rate",
                str(self.cfg.fault_rate),
                "--seed",
                str(self.cfg.seed),
                "--latency",
                "0.01",
            ],
        )
        self.others["projections"] = self._spawn(
            "projections", [sys.executable, "-m", "engine", "projections"]
        )
        self.start_gateway()
        for _ in range(self.cfg.workers):
            self.start_worker()

    def start_worker(self) -> None:
        n = len(self.workers)
        argv = [
            sys.executable,
            "-m",
            "engine",
            "worker",
            "--concurrency",
            str(self.cfg.concurrency),
        ]
        self.workers.append(self._spawn(f"worker{n}", argv))

    def kill_random_worker(self, rng: random.Random) -> None:
        live = [w for w in self.workers if w.poll() is None]
        victim = rng.choice(live)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.start_worker()

    def start_gateway(self) -> None:
        self.others["gateway"] = self._spawn("gateway", [sys.executable, "-m", "engine", "gateway"])

    def restart_gateway(self) -> None:
        gw = self.others["gateway"]
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
        self.start_gateway()

    def restart_redis(self) -> None:
        """SIGKILL Redis and start it again with its AOF; on a cluster, one master at random."""
        if self.redis_cluster is not None:
            self.redis_cluster.restart_node(self.rng.randrange(len(self.redis_cluster.nodes)))
            return
        self.redis.kill()
        time.sleep(0.3)
        self.redis.start()

    def stop(self) -> None:
        for proc in [*self.workers, *self.others.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, *self.others.values()]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        else:
            self.redis.stop()


async def _submit_all(client: Client, n: int, accepted: list[str]) -> None:
    for i in range(n):
        deadline = time.monotonic() + 60
        while True:
            try:
                accepted.append(
                    await client.submit(f"chaos task {i}: explain queues", idempotency_key=f"c{i}")
                )
                break
            except EngineError:  # Redis is restarting: the same key makes the retry safe
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        if i % 25 == 24:
            await asyncio.sleep(0.05)


async def _log(client: Client) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for keys in client.store.partitions:
        cursor = "-"
        while True:
            rows = await client.store.entries(keys.log, cursor, "+", count=5000)
            out += [mapper.envelope(eid, f) for eid, f in rows]
            if len(rows) < 5000:
                break
            cursor = "(" + rows[-1][0].decode()
    return out


async def _retrying(coro_fn: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await coro_fn()
        except EngineError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def run_chaos(root: Path, cfg: ChaosConfig | None = None) -> ChaosReport:
    cfg = cfg or ChaosConfig()
    rng = random.Random(cfg.seed)
    report = ChaosReport()
    cluster = Cluster(root, cfg)
    cluster.start()
    settings = cluster.settings
    client = Client.from_url(cluster.redis_url, settings)
    subscriber = Subscriber(cluster.gateway_port, cfg.partitions)
    sub_task = asyncio.create_task(subscriber.run())
    accepted: list[str] = []
    started = time.monotonic()
    try:
        producer = asyncio.create_task(_submit_all(client, cfg.tasks, accepted))
        next_kill = time.monotonic() + cfg.kill_every_s
        while True:
            events = await _retrying(lambda: _log(client))
            done = {e["task_id"] for e in events if e["type"] in TERMINAL_EVENTS}
            if producer.done() and set(accepted) <= done:
                break
            if time.monotonic() - started > cfg.timeout_s:
                report.problems.append(
                    f"timeout: {len(set(accepted) - done)} accepted tasks without a terminal event"
                )
                break
            progress = len(done) / cfg.tasks
            if time.monotonic() >= next_kill:
                cluster.kill_random_worker(rng)
                report.kills += 1
                next_kill = time.monotonic() + cfg.kill_every_s
            if report.redis_restarts == 0 and progress >= 0.3:
                cluster.restart_redis()
                report.redis_restarts += 1
            if report.gateway_restarts == 0 and progress >= 0.6:
                cluster.restart_gateway()
                report.gateway_restarts += 1
            await asyncio.sleep(0.25)
        await producer
        report.elapsed_s = time.monotonic() - started
        await _check(client, cluster, subscriber, accepted, report)
    finally:
        subscriber.stop()
        sub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sub_task
        await client.aclose()
        cluster.stop()
    return report


async def _check(
    client: Client,
    cluster: Cluster,
    subscriber: Subscriber,
    accepted: list[str],
    report: ChaosReport,
) -> None:
    events = await _log(client)
    report.accepted = len(accepted)
    mine = set(accepted)
    for e in events:
        kind = e["type"]
        if kind in TERMINAL_EVENTS:
            report.terminal[e["task_id"]] = report.terminal.get(e["task_id"], 0) + 1
            report.outcomes[kind] = report.outcomes.get(kind, 0) + 1
        elif kind == "TaskStarted" and e["data"]["reclaimed"]:
            report.reclaims += 1
        elif kind == "TaskRetryScheduled":
            report.retries += 1
            report.provider_errors += 1
        elif kind == "TaskProgress" and e["data"].get("notice") == "fallback":
            report.fallbacks += 1
            report.provider_errors += 1
    report.dead_letters = report.outcomes.get("TaskDeadLettered", 0)
    wrong = {t: n for t, n in report.terminal.items() if n != 1}
    if wrong:
        report.problems.append(f"tasks with more than one terminal event: {wrong}")
    lost = mine - set(report.terminal)
    if lost:
        report.problems.append(f"{len(lost)} accepted tasks lost (no terminal event)")
    if len(mine) != len(accepted):
        report.problems.append("a task id was handed out twice")

    expected = sum(
        to_nanos(e["data"]["cost_usd"])
        for e in events
        if e["type"] == "TaskSucceeded" and e["data"]["cost_usd"] is not None
    ) + sum(  # failed calls that reported usage are billed (the router's attempt notices)
        to_nanos(detail["cost_usd"])
        for e in events
        if e["type"] == "TaskProgress"
        and e["data"].get("notice") == "attempt"
        and (detail := e["data"].get("detail") or {}).get("outcome") == "error"
        and detail.get("usage")
        and detail.get("cost_usd") is not None
    )
    config = ViewConfig.from_settings(
        client.settings.partitions, client.settings.task_retention_s, ProjectionSettings()
    )
    store = ShardStore(client.store.redis, NAMESPACE, config)
    deadline = time.monotonic() + 30
    while True:
        total = 0
        for p in range(client.settings.partitions):
            entries, _ = await store.snapshot(p, "cost")
            total += sum(
                int(v.get("usd_nanos", 0)) for v in entries.values() if isinstance(v, dict)
            )
        if total == expected:
            break
        if time.monotonic() > deadline:
            report.problems.append(
                f"cost view {total} nano-USD != sum of TaskSucceeded and billed failures {expected}"
            )
            break
        await asyncio.sleep(0.2)

    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "engine", "replay", "--verify"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if verify.returncode != 0:
        report.problems.append(f"aiis replay --verify found differences: {verify.stdout[-2000:]}")

    by_task_log: dict[str, list[str]] = {}
    for e in events:
        if e["task_id"] in mine:
            by_task_log.setdefault(e["task_id"], []).append(e["id"])
    deadline = time.monotonic() + 30
    while True:
        received = subscriber.events
        ids = subscriber.keys
        by_task_sub: dict[str, list[str]] = {}
        for e in received:
            if e["task_id"] in mine:
                by_task_sub.setdefault(e["task_id"], []).append(e["id"])
        if by_task_sub == by_task_log or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    report.subscriber_resumes = subscriber.resumes
    if len(ids) != len(set(ids)):
        report.problems.append(f"subscriber received {len(ids) - len(set(ids))} duplicate events")
    per_partition: dict[int, list[str]] = {}
    for partition, i in ids:
        per_partition.setdefault(partition, []).append(i)
    if any(p != sorted(p, key=lambda i: tuple(int(x) for x in i.split("-")))
           for p in per_partition.values()):  # fmt: skip
        report.problems.append("subscriber received events out of order (within a partition)")
    missing = [t for t in mine if by_task_sub.get(t) != by_task_log.get(t)]
    if missing:
        report.problems.append(
            f"subscriber's events differ from the log for {len(missing)} tasks "
            f"(e.g. {missing[0]}: got {len(by_task_sub.get(missing[0], []))}, "
            f"log has {len(by_task_log.get(missing[0], []))})"
        )
