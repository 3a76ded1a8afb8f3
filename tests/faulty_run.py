"""Runs through the real composition, shared by the projection, chart and browser tests: a
real worker calling the real router at the sandbox (``worker_at_sandbox``), the projections
caught up with the log (``catch_up``, ``project``), and a scripted run with faults
(``faulty_run``): Gemini answers every call with a rate limit, so each task falls back to
OpenAI; the last task's prompt makes every provider fail (retries, then a dead letter)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from engine.client import Client
from engine.runtime.workers import new_worker
from engine.settings import Settings
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner, run_projections
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox import Sandbox

PRIORITIES = ("high", "normal", "low")
TENANTS = ("acme", "globex")


@contextlib.asynccontextmanager
async def worker_at_sandbox(
    settings: Settings, sandbox: Sandbox, *, concurrency: int = 4
) -> AsyncIterator[Client]:
    """A client, with a real worker running the real router (text chain gemini → openai,
    breakers and limits on the real Redis) against ``sandbox`` until the block ends."""
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    provider_settings = ProviderSettings(
        AIIS_PROVIDERS_PREFIX=settings.namespace,
        AIIS_TEXT_CHAIN="gemini,openai",
        AIIS_CALL_TIMEOUT_S=5.0,
    )
    router = build_processor(client.store.redis, provider_settings, sandbox.url)
    worker = new_worker(client.store, router, concurrency=concurrency)
    run = asyncio.create_task(worker.run())
    try:
        yield client
    finally:
        worker.stop()
        await run
        await router.aclose()
        await client.aclose()


async def faulty_run(settings: Settings, sandbox: Sandbox, tasks: int = 8) -> list[str]:
    """``tasks`` tasks that succeed by fallback, then one dead letter; returns every id once
    each reached its terminal status."""
    sandbox.inject("gemini", "rate_limit", times=100_000)
    async with worker_at_sandbox(settings, sandbox) as client:
        ids = [
            await client.submit(
                kind="text",
                input=f"chart {i}",
                tenant=TENANTS[i % 2],
                priority=PRIORITIES[i % 3],
            )
            for i in range(tasks)
        ]
        await until_status(client, ids, "succeeded")
        dead = await client.submit(
            kind="text", input="doomed [[fault:server_error]]", tenant="acme", priority="high"
        )
        await until_status(client, [dead], "dead_lettered")
    return [*ids, dead]


async def until_status(client: Client, ids: list[str], status: str) -> None:
    """Wait (at most 60 s) until every task in ``ids`` has ``status``."""
    async with asyncio.timeout(60):
        for tid in ids:
            while (await client.get(tid)).status.value != status:  # noqa: ASYNC110 - polls Redis
                await asyncio.sleep(0.02)


async def finished_and_projected(
    engine_client: Client, settings: Settings, tenants: list[str]
) -> list[str]:
    """One task per entry of ``tenants`` through the running worker, each to its end, then
    every view folded up to date; returns the task ids."""
    ids = [await engine_client.submit("c", tenant=t) for t in tenants]
    for tid in ids:
        async for _ in engine_client.watch(tid):
            pass
    await project(settings)
    return ids


async def project(settings: Settings) -> None:
    """Fold the whole log into every view (the projections caught up), as ``aiis projections``
    would."""
    client = Client.from_url(settings.redis_url or "", settings)
    config = ViewConfig.from_settings(
        settings.partitions, settings.task_retention_s, ProjectionSettings()
    )
    store = ShardStore(client.store.redis, settings.namespace, config)
    try:
        for p in range(settings.partitions):
            while await PartitionRunner(store, p, list(PROJECTIONS.values()), batch=500).step():
                pass
    finally:
        await client.aclose()


async def caught_up(redis: aioredis.Redis, store: ShardStore, settings: Settings) -> bool:
    """Every view's checkpoint is its partition log's newest entry."""
    for p in range(settings.partitions):
        head = await redis.xrevrange(f"{settings.namespace}:{{p{p}}}:log", count=1)
        want = head[0][0].decode() if head else None
        for name in PROJECTIONS:
            if (await store.meta(p, name)).get("ckpt") != want:
                return False
    return True


async def catch_up(
    redis: aioredis.Redis, store: ShardStore, settings: Settings, proj: ProjectionSettings
) -> None:
    """Run the projections' live loop (as ``aiis projections`` does) until it caught up with
    every log (at most 30 s), then stop it."""
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, proj))
    try:
        async with asyncio.timeout(30):
            while not await caught_up(redis, store, settings):  # noqa: ASYNC110 - polls Redis
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await runner
