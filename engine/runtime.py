"""Builds the running pieces from settings: Redis connection, store, provider processor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from engine.client import Client
from engine.connection import connect
from engine.embedded import discover_url
from engine.errors import ConfigError
from engine.settings import Settings
from engine.store import Store
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


def make_processor(name: str) -> TaskProcessor:
    if name in ("echo", "auto"):
        return EchoProvider()
    if name == "scripted":
        return ScriptedProvider()
    raise ConfigError(f"unknown provider {name!r} (known: echo, scripted)")


async def run_worker(settings: Settings, provider: str, concurrency: int | None) -> None:
    """One worker process until SIGTERM/SIGINT, then drain."""
    client = Client(connect(redis_url(settings), 32 + settings.partitions), settings)
    await client.ping()
    processor = make_processor(provider)
    worker = Worker(Store(client.store.redis, settings), processor, concurrency=concurrency)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        with contextlib.suppress(Exception):
            await processor.aclose()
        await client.aclose()
