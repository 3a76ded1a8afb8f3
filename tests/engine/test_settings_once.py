"""A worker process parses its provider settings once and hands them to everything below."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import providers.config
from engine.runtime.workers import run_worker
from providers.sandbox import start_sandbox
from tests.conftest import fast_settings


async def test_worker_parses_provider_settings_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_worker (processor, keyring, secrets watcher, rotation) builds ProviderSettings once."""
    parsed: list[int] = []
    real = providers.config.ProviderSettings

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, **values: Any) -> None:
            parsed.append(1)
            super().__init__(**values)

    monkeypatch.setattr(providers.config, "ProviderSettings", Counting)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setenv("AIIS_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("AIIS_KEY_ROTATE_S", "3600")
    async with start_sandbox() as sandbox:
        settings = fast_settings(redis_url=redis_url, provider="auto", sandbox_url=sandbox.url)
        worker = asyncio.create_task(run_worker(settings, 2))
        for _ in range(500):  # until the worker installed its SIGTERM handler
            await asyncio.sleep(0.01)
            if asyncio.get_running_loop()._signal_handlers.get(signal.SIGTERM):  # type: ignore[attr-defined]
                break
        else:
            pytest.fail("the worker never started")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(worker, 30)
    assert len(parsed) == 1
