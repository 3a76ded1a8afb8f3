"""`aiis stats`: the merged report and its rendering."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest
from rich.console import Console

from engine.runtime.cli import main
from engine.settings import Settings
from projections import render
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.stats import gather
from projections.storage import ShardStore
from projections.views.cost import day_name

from .conftest import Log, requested

T0 = 1_700_000_000_000


async def test_stats_json_merges_partitions(
    store: ShardStore,
    settings: Settings,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Queue counters, cost of the day by provider and tenant, provider health and lag come out
    of `aiis stats --json`, summed over both partitions."""
    for p in (0, 1):
        log = Log(store.redis, settings.namespace, p)
        await log.task(f"done{p}", provider="gemini", cost=0.25, tenant=f"t{p}")
        await log.add("TaskRequested", f"waiting{p}", requested("high"))
        await PartitionRunner(store, p, list(PROJECTIONS.values()), batch=100).step()
    report = await gather(store, 2, T0 + 60_000, day_name(T0 // 86_400_000))
    assert report["queues"]["by_priority"]["high"]["waiting"] == 2
    assert report["cost_today"]["by_provider"]["gemini"]["usd"] == 0.5
    assert set(report["cost_today"]["by_tenant"]) == {"t0", "t1"}
    assert report["providers"]["gemini"]["ok"] == 2
    assert report["projections"]["cost"]["behind"] == 0
    text = io.StringIO()
    render.stats(Console(file=text, width=160), report)
    assert "gemini" in text.getvalue() and "Queues" in text.getvalue()

    monkeypatch.setenv("AIIS_REDIS_URL", redis_url)
    monkeypatch.setenv("AIIS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("AIIS_PARTITIONS", "2")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stats", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["queues"]["by_priority"]["normal"]["done"] == 2
    assert out["tasks_tracked"] == 4


def test_a_cost_under_a_cent_is_not_shown_as_zero() -> None:
    """`aiis stats` shows one sandbox call's cost ($3.46e-05) with its digits, not $0.0000."""
    assert render._usd(3.46e-05) == "$0.0000346"
    assert render._usd(0.0) == "$0.0000"
    assert render._usd(1234.5) == "$1,234.5000"
