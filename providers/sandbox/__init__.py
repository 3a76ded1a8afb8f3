"""A loopback server speaking the five providers' real wire formats, for tests, demos, the
chaos suite and ``aiis serve`` without keys. See docs/providers.md for paths and fault markers.

    async with start_sandbox(latency_s=0.1, fault_rate=0.2, seed=7) as sandbox:
        settings = sandbox_settings(sandbox.url, provider_settings)  # every adapter at it
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection
from typing import Any

from providers.config import ProviderSettings
from providers.factory import sandbox_env, sandbox_settings
from providers.sandbox.app import SandboxApp
from providers.sandbox.common import reply_text
from providers.sandbox.faults import FAULTS, RANDOM_FAULTS
from providers.sandbox.server import HttpServer

__all__ = ["FAULTS", "RANDOM_FAULTS", "Sandbox", "reply_text", "start_sandbox"]


class Sandbox:
    """A running sandbox: ``url``, ``app`` (faults, stats) and ``server`` (connection counts)."""

    def __init__(self, app: SandboxApp, server: HttpServer) -> None:
        self.app = app
        self.server = server

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    def inject(self, provider: str, fault: str, times: int = 1) -> None:
        self.app.faults.inject(provider, fault, times)

    def settings(self, base: ProviderSettings) -> ProviderSettings:
        return sandbox_settings(self.url, base)

    def env(self) -> dict[str, str]:
        return sandbox_env(self.url)

    def stats(self) -> dict[str, Any]:
        return self.app.stats()

    async def stop(self) -> None:
        await self.server.stop()


async def launch(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency_s: float = 0.0,
    fault_rate: float = 0.0,
    seed: int | None = None,
    bad_keys: Collection[str] = (),
    hang_s: float = 60.0,
) -> Sandbox:
    """Start a sandbox; the caller stops it (``await sandbox.stop()``)."""
    app = SandboxApp(latency_s, fault_rate, seed, bad_keys, hang_s)
    server = HttpServer(app, host, port)
    app.stats_extra = lambda: {
        "connections": server.connections,
        "h2_connections": server.h2_connections,
        "peak_in_flight": server.peak_in_flight,
    }
    await server.start()
    return Sandbox(app, server)


@contextlib.asynccontextmanager
async def start_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency_s: float = 0.0,
    fault_rate: float = 0.0,
    seed: int | None = None,
    bad_keys: Collection[str] = (),
    hang_s: float = 60.0,
) -> AsyncIterator[Sandbox]:
    """Run a sandbox for the duration of the block (port 0: a free port; see ``sandbox.url``)."""
    sandbox = await launch(
        host,
        port,
        latency_s=latency_s,
        fault_rate=fault_rate,
        seed=seed,
        bad_keys=bad_keys,
        hang_s=hang_s,
    )
    try:
        yield sandbox
    finally:
        await sandbox.stop()
