"""Projections over logs the real engine writes (real redis-server, real worker)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.runtime.workers import new_worker
from engine.settings import Settings
from projections.decode import envelope
from projections.fold import Position, apply_batch
from projections.registry import PROJECTIONS
from projections.replay import verify
from projections.runner import run_projections
from projections.settings import ProjectionSettings
from projections.source import history
from projections.stats import costs
from projections.storage import ShardStore
from projections.views.cost import day_name, to_nanos
from providers.echo import ScriptedProvider

from .conftest import Log, error, requested, succeeded


async def _run_engine(settings: Settings, n: int) -> list[str]:
    """Submit ``n`` tasks (every third fails once with RateLimited, then succeeds) and run a
    worker until each reaches a terminal event."""
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    ids = []
    for i in range(n):
        script = ["RateLimited", "ok"] if i % 3 == 0 else ["ok"]
        ids.append(
            await client.submit(
                kind="text",
                input=f"task {i}",
                params={"script": script},
                priority=("high", "normal", "low")[i % 3],
                tenant=f"tenant{i % 2}",
            )
        )
    worker = new_worker(client.store, ScriptedProvider(), concurrency=8)
    task = asyncio.create_task(worker.run())
    try:
        for tid in ids:
            for _ in range(500):
                if (await client.get(tid)).status.value == "succeeded":
                    break
                await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await task
        await client.aclose()
    return ids


async def _terminal_costs(redis: aioredis.Redis, settings: Settings) -> list[float | None]:
    out = []
    for p in range(settings.partitions):
        async for page in history(redis, settings.namespace, p, None):
            for raw_id, fields in page:
                event = envelope(raw_id.decode(), fields)
                if event["type"] == "TaskSucceeded":
                    out.append(event["data"]["cost_usd"])
    return out


async def test_cost_equals_sum_of_succeeded_costs_after_retries(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, store: ShardStore
) -> None:
    """After a real run with retries, the cost view's USD and request count equal the sum over
    the log's TaskSucceeded events, and the live views equal a rebuild."""
    await _run_engine(settings, 12)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, proj))
    for _ in range(200):
        meta = [await store.meta(p, "cost") for p in range(settings.partitions)]
        heads = [
            await redis.xrevrange(f"{settings.namespace}:{{p{p}}}:log", count=1)
            for p in range(settings.partitions)
        ]
        if all(
            m.get("ckpt") == (h[0][0].decode() if h else None)
            for m, h in zip(meta, heads, strict=True)
        ):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await runner
    log_costs = await _terminal_costs(redis, settings)
    assert len(log_costs) == 12
    shards = [(await store.snapshot(p, "cost"))[0] for p in range(settings.partitions)]
    days = {k.split("\x1f")[0] for s in shards for k in s}
    total = sum(costs(shards, d)["total"]["usd_nanos"] for d in days)
    requests = sum(costs(shards, d)["total"]["requests"] for d in days)
    assert requests == 12
    assert total == sum(to_nanos(c) for c in log_costs if c is not None)
    health = [(await store.snapshot(p, "provider_health"))[0] for p in range(settings.partitions)]
    fails = sum(s["scripted"]["errors"].get("RateLimited", 0) for s in health if "scripted" in s)
    assert fails == 4  # tasks 0, 3, 6, 9 failed their first attempt
    assert await verify(store, settings.partitions, list(PROJECTIONS.values()), None) == []


async def test_cost_with_fallbacks_and_unknown_prices(store: ShardStore, log: Log) -> None:
    """With router fallbacks (synthetic events), the cost view charges the provider that
    answered, counts unknown prices apart (never as $0), and health counts each call once."""
    await log.add("TaskRequested", "t1", requested())
    await log.add("TaskStarted", "t1", {"attempt": 1, "worker": "w"})
    await log.add(
        "TaskProgress",
        "t1",
        {
            "attempt": 1,
            "notice": "attempt",
            "detail": {"provider": "gemini", "error_class": "Overloaded"},
        },
    )
    await log.add(
        "TaskProgress",
        "t1",
        {"attempt": 1, "notice": "fallback", "detail": {"provider": "openai", "from": "gemini"}},
    )
    await log.add("TaskSucceeded", "t1", succeeded(provider="openai", cost=0.25))
    await log.add("TaskRequested", "t2", requested())
    await log.add("TaskStarted", "t2", {"attempt": 1, "worker": "w"})
    await log.add(
        "TaskRetryScheduled",
        "t2",
        {"attempt": 1, "delay_ms": 10, "due_ms": 1, "error": error("Overloaded", "gemini")},
    )
    await log.add("TaskRequeued", "t2", {"attempt": 1, "reason": "retry_due"})
    await log.add("TaskStarted", "t2", {"attempt": 2, "worker": "w"})
    await log.add("TaskSucceeded", "t2", succeeded(attempt=2, provider="claude", cost=None))
    positions = [Position(p, p.new(store.config)) for p in PROJECTIONS.values()]
    async for page in history(store.redis, store.namespace, 0, None):
        apply_batch(0, positions, page)
    cost = next(p for p in positions if p.projection.name == "cost").shard.entries
    report = costs([cost], day_name(1_700_000_000_000 // 86_400_000))
    assert report["by_provider"]["openai"]["usd_nanos"] == to_nanos(0.25)
    assert "gemini" not in report["by_provider"]
    assert report["by_provider"]["claude"]["unpriced"] == 1
    assert report["by_provider"]["claude"]["usd_nanos"] == 0
    assert report["total"]["priced"] == 1
    health = next(p for p in positions if p.projection.name == "provider_health").shard.entries
    assert health["gemini"]["errors"] == {"Overloaded": 2}
    assert health["openai"]["ok"] == 1
    tasks = next(p for p in positions if p.projection.name == "task_state").shard.entries
    assert tasks["t1"]["fallbacks"] == 1
    assert tasks["t2"]["attempts"] == 2
    assert tasks["t2"]["cost_usd"] is None


pytestmark = pytest.mark.timeout(60)
