"""`aiis stats` on an 80-column terminal (or a pipe): no header is cut or wrapped."""

from __future__ import annotations

import asyncio

import pytest

from engine.runtime.cli import main
from engine.settings import Settings
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.storage import ShardStore

from .conftest import Log

HEADERS = (
    "priority", "waiting", "delayed", "in flight", "dead-lettered", "requested", "done",
    "window", "succeeded", "failed", "cancelled", "retried", "completed/s",
    "provider", "tenant", "requests", "input tok", "output tok", "cached tok", "USD", "unpriced",
    "ok", "fail", "success (window)", "p50 ms", "p95 ms", "p99 ms", "breaker", "top errors",
    "projection", "events", "lag ms", "behind", "status",
)  # fmt: skip


async def test_stats_headers_are_whole_at_80_columns(
    store: ShardStore,
    settings: Settings,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every column header of `aiis stats` is printed whole, on one line, at COLUMNS=80."""
    log = Log(store.redis, settings.namespace, 0)
    await log.task("done0", provider="gemini", cost=0.25, tenant="a-long-tenant-name")
    await PartitionRunner(store, 0, list(PROJECTIONS.values()), batch=100).step()
    monkeypatch.setenv("AIIS_REDIS_URL", redis_url)
    monkeypatch.setenv("AIIS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("AIIS_PARTITIONS", str(settings.partitions))
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stats"]) == 0
    out = capsys.readouterr().out
    missing = [h for h in HEADERS if not any(h in line for line in out.splitlines())]
    assert missing == [], out
