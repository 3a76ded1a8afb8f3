"""Builds the running pieces from settings: Redis connection, store, provider processor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from engine.client import Client
from engine.connection import connect
from engine.embedded import discover_url
from engine.errors import ConfigError
from engine.settings import Settings
from engine.worker import Worker
from providers.echo import EchoProvider, ScriptedProvider
from providers.types import TaskProcessor

log = logging.getLogger("aiis")


def redis_url(settings: Settings) -> str:
    """AIIS_REDIS_URL, else the embedded Redis a running ``aiis serve`` advertises."""
    if settings.redis_url:
        return settings.redis_url
    url = discover_url(settings.data_dir)
    if url is None:
        raise ConfigError(
            f"no Redis: AIIS_REDIS_URL is unset and no `aiis serve` runs for "
            f"{settings.data_dir.resolve()} — start `aiis serve`, or set AIIS_REDIS_URL"
        )
    return url


def make_processor(settings: Settings, redis: aioredis.Redis) -> TaskProcessor:
    """The provider processor the worker calls, as ``AIIS_PROVIDER`` says."""
    if settings.provider == "echo":
        return EchoProvider()
    if settings.provider == "scripted":
        return ScriptedProvider()
    from providers.config import ProviderSettings  # noqa: PLC0415 - httpx only when used
    from providers.factory import build_processor  # noqa: PLC0415

    try:
        provider_settings = ProviderSettings()
    except ValueError as exc:
        raise ConfigError(f"bad provider setting: {str(exc).splitlines()[0:3]}") from None
    provider_settings = provider_settings.model_copy(update={"redis_prefix": settings.namespace})
    sandbox_url = settings.sandbox_url or None  # compose passes an empty value for "none"
    if sandbox_url is None and not provider_settings.has_any_key():
        raise ConfigError(
            "no provider API key is set (GEMINI_API_KEY, OPENAI_API_KEY, ANTHROPIC_API_KEY, "
            "UNSPLASH_ACCESS_KEY, PEXELS_API_KEY) and no AIIS_SANDBOX_URL; `aiis serve` starts "
            "a sandbox by itself, or set AIIS_PROVIDER=echo"
        )
    return build_processor(redis, provider_settings, settings.sandbox_url, on_circuit=_log_circuit)


def _log_circuit(provider: str, transition: str, info: Mapping[str, Any]) -> None:
    log.warning("circuit breaker of %s %s (%s)", provider, transition, dict(info))


async def run_worker(settings: Settings, concurrency: int | None) -> None:
    """One worker process until SIGTERM/SIGINT, then drain."""
    client = Client(
        connect(redis_url(settings), 32 + settings.partitions, cluster=settings.redis_cluster),
        settings,
    )
    try:
        await client.ping()
        await client.store.prepare()  # the deployment's partition count, consumer groups
        processor = make_processor(settings, client.store.redis)
    except BaseException:
        await client.aclose()
        raise
    worker = Worker(client.store, processor, concurrency=concurrency)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        with contextlib.suppress(Exception):
            await processor.aclose()
        await client.aclose()
