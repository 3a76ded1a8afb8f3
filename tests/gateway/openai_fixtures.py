"""The OpenAI-compatible suites' composition: a real redis-server, a worker running the real
provider router against the sandbox, and a gateway with three tenants' tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from engine.client import Client
from engine.core.events import TERMINAL_EVENTS, Event
from engine.settings import Settings
from gateway.openai import Catalog
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from projections.settings import ProjectionSettings
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox import Sandbox, start_sandbox
from tests.conftest import Workers, fast_settings
from tests.gateway.conftest import TOKENS_ENV


@dataclass
class Stack:
    settings: Settings
    client: Client
    sandbox: Sandbox
    gateway: Gateway
    workers: Workers

    @property
    def base_url(self) -> str:
        return self.gateway.url + "/v1"

    async def events(self, task_id: str) -> list[Event]:
        """The task's events up to its terminal one."""
        out: list[Event] = []
        async with asyncio.timeout(30):
            async for event in self.client.watch(task_id):
                out.append(event)
                if event.type in TERMINAL_EVENTS:
                    return out
        return out


async def make_stack(
    redis_url: str, *, gateway: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[Stack]:
    engine_settings = fast_settings(redis_url=redis_url, **settings)
    client = Client.from_url(redis_url, engine_settings)
    workers = Workers()
    async with start_sandbox() as sandbox:
        providers = ProviderSettings()
        router = build_processor(None, providers, sandbox_url=sandbox.url)
        workers.start(client, router, concurrency=32)
        gw = Gateway(
            engine_settings,
            GatewaySettings(**{"tokens": TOKENS_ENV, "tokens_file": None, **(gateway or {})}),
            proj=ProjectionSettings(),
            host="127.0.0.1",
            port=0,
            catalog=Catalog.from_settings(providers),
        )
        await gw.start()
        try:
            yield Stack(engine_settings, client, sandbox, gw, workers)
        finally:
            await gw.stop()
            await workers.stop_all()
            await router.aclose()
            await client.aclose()
