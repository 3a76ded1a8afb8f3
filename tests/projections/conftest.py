"""Fixtures: one real redis-server for the session, a fresh namespace per test, and helpers that
append synthetic events to a partition's log."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.core.mapper import entry_fields
from engine.runtime.connection import connect
from engine.runtime.embedded import EmbeddedRedis
from engine.settings import Settings
from projections.keys import log_key
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig
from tests.conftest import Topology


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def settings(topology: Topology, tmp_path: Path) -> Settings:
    """Standalone with 2 partitions; on the cluster (a suite parametrised over ``TOPOLOGIES``)
    4, so partitions fall on different masters."""
    return Settings(
        namespace=f"t{secrets.token_hex(4)}",
        redis_url=topology.url,
        redis_cluster=topology.cluster,
        data_dir=tmp_path,
        partitions=4 if topology.cluster else 2,
        retry_base_s=0.01,
        retry_jitter=0,
        control_interval_s=0.05,
        visibility_timeout_s=1.0,
    )


@pytest.fixture
def proj() -> ProjectionSettings:
    return ProjectionSettings(batch=50, idle_min_s=0.01, idle_max_s=0.05, archive_min_age_s=0)


@pytest.fixture
async def redis(topology: Topology) -> AsyncIterator[aioredis.Redis]:
    client = connect(topology.url, cluster=topology.cluster)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings) -> ShardStore:
    config = ViewConfig.from_settings(settings.partitions, settings.task_retention_s, proj)
    return ShardStore(redis, settings.namespace, config)


class Log:
    """Appends synthetic events to one partition's log, with increasing event times."""

    def __init__(self, redis: aioredis.Redis, namespace: str, partition: int = 0) -> None:
        self.redis = redis
        self.key = log_key(namespace, partition)
        self.clock = itertools.count(1_700_000_000_000, 1000)

    async def add(
        self,
        etype: str,
        task: str,
        data: dict[str, Any],
        tenant: str = "acme",
        ts: int | None = None,
    ) -> str:
        fields = entry_fields(etype, task, tenant, ts if ts is not None else next(self.clock), data)
        return (await self.redis.xadd(self.key, fields)).decode()  # type: ignore[arg-type]

    async def raw(self, fields: dict[str, str]) -> str:
        return (await self.redis.xadd(self.key, fields)).decode()  # type: ignore[arg-type]

    async def task(
        self,
        task: str,
        *,
        provider: str = "gemini",
        cost: float | None = 0.001,
        tenant: str = "acme",
    ) -> None:
        """A whole successful task: requested, started, succeeded."""
        await self.add("TaskRequested", task, requested(), tenant)
        await self.add("TaskStarted", task, {"attempt": 1, "worker": "w1"}, tenant)
        await self.add("TaskSucceeded", task, succeeded(provider=provider, cost=cost), tenant)


def requested(priority: str = "normal") -> dict[str, Any]:
    return {"kind": "text", "input": "hi", "priority": priority, "deadline_ms": 9_999_999_999_999}


def succeeded(
    *, attempt: int = 1, provider: str = "gemini", cost: float | None = 0.001, latency: int = 120
) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "provider": provider,
        "model": f"{provider}-m",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        },
        "cost_usd": cost,
        "finish_reason": "stop",
        "result": {"text": "ok", "images": []},
        "latency_ms": latency,
    }


def error(cls: str = "RateLimited", provider: str | None = "gemini") -> dict[str, Any]:
    return {"error_class": cls, "message": f"{cls} happened", "provider": provider}


@pytest.fixture
def log(redis: aioredis.Redis, settings: Settings) -> Log:
    return Log(redis, settings.namespace, 0)
