"""The stats push's read of the views (``projections.dashboard``): after a real faulty run it
reports throughput, today's cost and provider health exactly as ``aiis stats`` does
(standalone and on the cluster), in one round trip, without the lag report."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest
import redis.asyncio as aioredis

from engine.settings import Settings
from projections import dashboard
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.stats import gather
from projections.storage import ShardStore
from providers.sandbox import start_sandbox
from tests.conftest import TOPOLOGIES, Topology
from tests.faulty_run import faulty_run, project

from .conftest import Log


@pytest.mark.slow
@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_push_read_equals_the_stats_report_after_a_faulty_run(
    topology: Topology, settings: Settings, store: ShardStore
) -> None:
    """A real worker's run (Gemini rate-limited → OpenAI, one dead letter), folded: the push's
    read equals `gather`'s throughput, cost_today and providers at the same instant."""
    async with start_sandbox() as sandbox:
        await faulty_run(settings, sandbox)
    await project(settings)
    now = dt.datetime.now(dt.UTC)
    at, day = int(now.timestamp() * 1000), now.date().isoformat()
    pushed = await dashboard.read(store, settings.partitions, at, day)
    report = await gather(store, settings.partitions, at, day)
    assert pushed == {k: report[k] for k in ("throughput", "cost_today", "providers")}
    done = pushed["throughput"]["15m"]
    assert (done["succeeded"], done["dead_lettered"]) == (8, 1)
    assert pushed["providers"]["openai"]["ok"] == 8 and pushed["providers"]["gemini"]["fail"] > 0
    assert set(pushed["cost_today"]["by_tenant"]) == {"acme", "globex"}


async def test_throughput_counts_only_the_windows_minutes(
    redis: aioredis.Redis, settings: Settings, store: ShardStore
) -> None:
    """Completions 14 and 15 minutes before now: the 15 min window counts the first and not
    the second, as `gather` does (the push reads only the 15 minutes it shows)."""
    now = (int(time.time() * 1000) // 60_000) * 60_000 + 30_000
    log = Log(redis, settings.namespace, 0)
    for task, minutes_ago in (("in", 14), ("out", 15)):
        log.clock = itertools.count(now - minutes_ago * 60_000)
        await log.task(task)
    await PartitionRunner(store, 0, list(PROJECTIONS.values()), batch=100).step()
    day = dt.datetime.fromtimestamp(now / 1000, dt.UTC).date().isoformat()
    pushed = await dashboard.read(store, settings.partitions, now, day)
    report = await gather(store, settings.partitions, now, day)
    assert pushed["throughput"] == report["throughput"]
    assert pushed["throughput"]["15m"]["succeeded"] == 1
    assert pushed["throughput"]["5m"]["succeeded"] == 0
