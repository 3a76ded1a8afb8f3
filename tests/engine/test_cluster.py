"""The engine on a real 3-master Redis Cluster with several partitions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from engine.client import Client
from tests.cluster import LocalCluster
from tests.conftest import fast_settings
from tests.engine.helpers import log_events, terminal_counts, wait_for, wait_terminal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    yield c
    c.stop()


async def test_tasks_spread_over_partitions_survive_a_killed_worker(
    cluster: LocalCluster,
) -> None:
    """4 partitions on 3 masters: tasks land in every partition, a SIGKILLed worker's tasks
    finish elsewhere, and every task has exactly one terminal event."""
    settings = fast_settings(redis_url=cluster.url, redis_cluster=True, partitions=4)
    env = {
        **os.environ,
        "AIIS_REDIS_URL": cluster.url,
        "AIIS_REDIS_CLUSTER": "true",
        "AIIS_PARTITIONS": "4",
        "AIIS_NAMESPACE": settings.namespace,
        "AIIS_PROVIDER": "scripted",
        "AIIS_VISIBILITY_TIMEOUT_S": "1.0",
        "AIIS_CONTROL_INTERVAL_S": "0.05",
    }
    slots = {key_slot(k.encode()) for p in range(4) for k in [f"{settings.namespace}:{{p{p}}}:log"]}
    assert len(slots) == 4
    argv = [sys.executable, "-m", "engine", "worker", "--concurrency", "16"]
    workers = [subprocess.Popen(argv, env=env)]  # the one to be killed, alone at first
    try:
        async with Client.from_url(cluster.url, settings) as client:
            ids = await asyncio.gather(
                *(client.submit(f"t{i}", params={"script": ["sleep:1.5", "ok"]}) for i in range(60))
            )

            async def some_started() -> bool:  # it holds calls now (however slow its start)
                events = await log_events(client)
                return sum(e["type"] == "TaskStarted" for e in events) >= 5

            await wait_for(some_started, timeout=60)
            workers.append(subprocess.Popen(argv, env=env))
            workers[0].send_signal(signal.SIGKILL)
            await wait_terminal(client, list(ids), timeout=90)
            events = await log_events(client)
            assert terminal_counts(events) == {i: 1 for i in ids}
            # the killed worker held calls, and they were reclaimed
            assert any(e["type"] == "TaskStarted" and e["data"]["reclaimed"] for e in events)
            per_partition = [
                len(await client.store.entries(client.store.keys(p).log)) for p in range(4)
            ]
            assert all(n > 0 for n in per_partition), per_partition
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()


async def test_changing_the_partition_count_is_refused(cluster: LocalCluster) -> None:
    """A worker started with another AIIS_PARTITIONS than the data exits with a clear error."""
    settings = fast_settings(redis_url=cluster.url, redis_cluster=True, partitions=2)
    async with Client.from_url(cluster.url, settings) as client:
        await client.submit("x")
    env = {
        **os.environ,
        "AIIS_REDIS_URL": cluster.url,
        "AIIS_REDIS_CLUSTER": "true",
        "AIIS_PARTITIONS": "3",
        "AIIS_NAMESPACE": settings.namespace,
    }
    result = subprocess.run(
        [sys.executable, "-m", "engine", "worker"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "AIIS_PARTITIONS=3" in result.stderr and "2 partitions" in result.stderr
