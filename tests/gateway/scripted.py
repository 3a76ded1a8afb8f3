"""A scripted run through the real composition for the operator's views: a real worker calling
the real router at the sandbox, Gemini rate-limited on one task (the router falls back to
OpenAI), one task failing on every provider until it is dead-lettered, and plain successes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from engine.client import Client
from engine.core.events import TERMINAL
from projections.registry import PROJECTIONS
from projections.runner import run_projections
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox import start_sandbox
from tests.conftest import Engine

FALLBACK_PROMPT = "the story of a fallback [[fault:rate_limit@gemini]]"
DEAD_PROMPT = "never answered [[fault:server_error]]"


@dataclass(frozen=True)
class Run:
    fallback: str  # acme: gemini 429, served by openai
    dead: str  # acme: every provider 500 until retries are exhausted
    plain: list[str]  # acme, then beta: served by gemini


async def wait_terminal(client: Client, task_id: str, timeout: float = 60.0) -> str:
    async with asyncio.timeout(timeout):
        while (status := (await client.get(task_id)).status) not in TERMINAL:  # noqa: ASYNC110 - polls Redis
            await asyncio.sleep(0.02)
    return status.value


@asynccontextmanager
async def scripted_run(engine: Engine) -> AsyncIterator[Run]:
    """Run the script to its end with a worker that keeps running (for retried dead letters)."""
    async with start_sandbox() as sandbox:
        settings = ProviderSettings(
            AIIS_PROVIDERS_PREFIX=engine.settings.namespace,
            AIIS_TEXT_CHAIN="gemini,openai",
            AIIS_CALL_TIMEOUT_S=5.0,
        )
        router = build_processor(engine.client.store.redis, settings, sandbox.url)
        engine.workers.start(engine.client, router, concurrency=4)
        try:
            client = engine.client
            plain = [await client.submit("hello acme", tenant="acme")]
            await wait_terminal(client, plain[0])
            fallback = await client.submit(FALLBACK_PROMPT, tenant="acme")
            await wait_terminal(client, fallback)
            plain.append(await client.submit("hello beta", tenant="beta"))
            await wait_terminal(client, plain[1])
            dead = await client.submit(DEAD_PROMPT, tenant="acme")
            assert await wait_terminal(client, dead) == "dead_lettered"
            yield Run(fallback=fallback, dead=dead, plain=plain)
        finally:
            await engine.workers.stop_all()
            await router.aclose()


async def project(engine: Engine, timeout: float = 30.0) -> None:
    """Run the projections until every view holds the whole log, then stop them."""
    redis = engine.client.store.redis
    settings = engine.settings
    store = ShardStore(redis, settings.namespace, ViewConfig(partitions=settings.partitions))
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, ProjectionSettings()))
    try:
        async with asyncio.timeout(timeout):
            while not await _caught_up(engine, store):
                if runner.done():
                    await runner  # raises what stopped it
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await runner


async def _caught_up(engine: Engine, store: ShardStore) -> bool:
    for p in range(engine.settings.partitions):
        head = await engine.client.store.redis.xrevrange(engine.client.store.keys(p).log, count=1)
        want = head[0][0].decode() if head else None
        for name in PROJECTIONS:
            if (await store.meta(p, name)).get("ckpt") != want:
                return False
    return True
