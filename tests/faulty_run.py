"""A scripted run with faults, through the real composition: a real worker calls the real
router at the sandbox; Gemini answers every call with a rate limit, so each task falls back to
OpenAI; the last task's prompt makes every provider fail (retries, then a dead letter). Shared
by the chart tests (projections, browser)."""

from __future__ import annotations

import asyncio

from engine.client import Client
from engine.runtime.workers import new_worker
from engine.settings import Settings
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox import Sandbox

PRIORITIES = ("high", "normal", "low")
TENANTS = ("acme", "globex")


async def faulty_run(settings: Settings, sandbox: Sandbox, tasks: int = 8) -> list[str]:
    """``tasks`` tasks that succeed by fallback, then one dead letter; returns every id once
    each reached its terminal status."""
    sandbox.inject("gemini", "rate_limit", times=100_000)
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    provider_settings = ProviderSettings(
        AIIS_PROVIDERS_PREFIX=settings.namespace,
        AIIS_TEXT_CHAIN="gemini,openai",
        AIIS_CALL_TIMEOUT_S=5.0,
    )
    router = build_processor(client.store.redis, provider_settings, sandbox.url)
    worker = new_worker(client.store, router, concurrency=4)
    run = asyncio.create_task(worker.run())
    try:
        ids = [
            await client.submit(
                kind="text",
                input=f"chart {i}",
                tenant=TENANTS[i % 2],
                priority=PRIORITIES[i % 3],
            )
            for i in range(tasks)
        ]
        await _until(client, ids, "succeeded")
        dead = await client.submit(
            kind="text", input="doomed [[fault:server_error]]", tenant="acme", priority="high"
        )
        await _until(client, [dead], "dead_lettered")
    finally:
        worker.stop()
        await run
        await router.aclose()
        await client.aclose()
    return [*ids, dead]


async def _until(client: Client, ids: list[str], status: str) -> None:
    async with asyncio.timeout(60):
        for tid in ids:
            while (await client.get(tid)).status.value != status:  # noqa: ASYNC110 - polls Redis
                await asyncio.sleep(0.02)


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
