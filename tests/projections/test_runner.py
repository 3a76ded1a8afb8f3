"""The runner on a real redis-server: exactly once in effect, skipping unreadable events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from engine.core import tolerant
from engine.settings import Settings
from projections.registry import PROJECTIONS
from projections.replay import rebuild_partition
from projections.runner import PartitionRunner, run_projections
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from tests.conftest import TOPOLOGIES

from .conftest import Log, requested

ALL = list(PROJECTIONS.values())
pytestmark = pytest.mark.parametrize(*TOPOLOGIES, indirect=True)


def _runner_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIIS_REDIS_URL": settings.redis_url or "",
        "AIIS_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "AIIS_NAMESPACE": settings.namespace,
        "AIIS_PARTITIONS": str(settings.partitions),
        "AIIS_PROJ_BATCH": "20",
        "AIIS_PROJ_IDLE_MIN_S": "0.01",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "projections"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_runner_sigkilled_while_events_arrive_applies_each_once(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, store: ShardStore, log: Log
) -> None:
    """SIGKILLing `aiis projections` at arbitrary points while the log grows, then running it
    again, ends with views equal to a rebuild from scratch and every event counted once
    (invariant 5 on a real redis-server)."""
    rounds, per_round = 4, 150
    for round_ in range(rounds):
        proc = _runner_process(settings)
        for i in range(per_round):
            await log.task(f"r{round_}-{i}", cost=0.01 * (i % 3) if i % 4 else None)
        await asyncio.sleep(0.3 * round_)
        for _ in range(500 if round_ == rounds - 1 else 0):  # the last one saves before its kill
            if int((await store.meta(0, "cost")).get("events", 0)) > 0:
                break
            await asyncio.sleep(0.02)
        proc.kill()  # SIGKILL: whatever the runner held in memory is lost
        proc.wait()
    assert int((await store.meta(0, "cost")).get("events", 0)) > 0  # the killed ones worked
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, proj))
    total = str(rounds * per_round * 3)
    for _ in range(500):
        if [(await store.meta(0, p.name)).get("events") for p in ALL] == [total] * len(ALL):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await runner
    for pos in await rebuild_partition(store, 0, ALL, None):
        stored, meta = await store.snapshot(0, pos.projection.name)
        assert stored == pos.shard.entries, pos.projection.name
        assert meta["ckpt"] == pos.applied
        assert meta["events"] == total  # each event applied exactly once in effect


async def test_redelivered_events_change_nothing(store: ShardStore, log: Log) -> None:
    """A runner that reads events at or before its checkpoint again (e.g. after a crash right
    after saving) leaves the stored views unchanged."""
    for i in range(5):
        await log.task(f"t{i}")
    runner = PartitionRunner(store, 0, ALL, batch=100)
    await runner.step()
    before = {p.name: await store.snapshot(0, p.name) for p in ALL}
    page = await store.redis.xrange(log.key)
    from projections.fold import apply_batch

    apply_batch(0, runner.positions, page)  # everything again
    await runner.save()
    assert {p.name: await store.snapshot(0, p.name) for p in ALL} == before


@pytest.mark.parametrize(
    "fields, why",
    [
        (
            {
                "type": "TaskExploded",
                "task": "x",
                "tenant": "acme",
                "ts": "1",
                "v": "1",
                "data": "{}",
            },
            "unknown_type",
        ),
        (
            {
                "type": "TaskSucceeded",
                "task": "x",
                "tenant": "acme",
                "ts": "1",
                "v": "2",
                "data": "{}",
            },
            "newer_version",
        ),
    ],
)
async def test_unreadable_event_is_skipped_counted_and_the_runner_goes_on(
    redis: aioredis.Redis,
    settings: Settings,
    proj: ProjectionSettings,
    store: ShardStore,
    log: Log,
    fields: dict[str, str],
    why: str,
) -> None:
    """An unknown type or a newer schema version is skipped (counted under its reason) and
    the runner folds what comes after it; its checkpoint moves past the entry, so a restart
    does not meet it again (invariant 8: tolerant readers)."""
    await log.task("before")
    before = tolerant.count("projections", why)
    bad = await log.raw(fields)
    after = await log.add("TaskRequested", "after", requested())
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, proj))
    for _ in range(500):
        if (await store.meta(0, "task_state")).get("ckpt") == after or runner.done():
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(runner, 10)
    meta = await store.meta(0, "task_state")
    assert meta["ckpt"] == after > bad and meta["events"] == "4"
    tasks, _ = await store.snapshot(0, "task_state")
    assert set(tasks) == {"before", "after"}
    assert tolerant.count("projections", why) == before + 1


async def test_event_that_cannot_be_applied_is_skipped_by_that_view(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, store: ShardStore, log: Log
) -> None:
    """A known event whose data a view cannot use (missing field) is skipped by that view and
    counted; the events after it are applied, and a rebuild gives the same view."""
    await log.add("TaskRequested", "a", requested())
    before = tolerant.count("projections", "unapplicable")
    await log.add("TaskStarted", "a", {"worker": "w"})  # no attempt
    after = await log.add("TaskRequested", "b", requested())
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, proj))
    for _ in range(500):
        if (await store.meta(0, "task_state")).get("ckpt") == after or runner.done():
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(runner, 10)
    tasks, meta = await store.snapshot(0, "task_state")
    assert meta["ckpt"] == after and set(tasks) == {"a", "b"}
    assert tolerant.count("projections", "unapplicable") > before
    for pos in await rebuild_partition(store, 0, ALL, None):
        assert (await store.snapshot(0, pos.projection.name))[0] == pos.shard.entries


async def test_stop_event_ends_the_runner_with_everything_saved(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, store: ShardStore, log: Log
) -> None:
    """Setting the stop event makes run_projections return; the checkpoint is the log's end."""
    for i in range(30):
        await log.task(f"t{i}")
    stop = asyncio.Event()
    task = asyncio.create_task(run_projections(redis, settings, stop, proj))
    for _ in range(300):
        if (await store.meta(0, "queue_length")).get("events") == "90":
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    last = (await redis.xrevrange(log.key, count=1))[0][0].decode()
    assert (await store.meta(0, "queue_length"))["ckpt"] == last
