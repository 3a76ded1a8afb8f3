"""Archive the whole log now, as `aiis archive --min-age 0` does after the real projection
runner caught up (the archive holds back what a projection has not applied)."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from engine.settings import Settings
from projections.archive import PartitionReport, archive_log
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig


async def catch_up(redis: aioredis.Redis, settings: Settings) -> None:
    """Apply the whole log to every projection with the real runner."""
    config = ViewConfig.from_settings(
        settings.partitions, settings.task_retention_s, ProjectionSettings()
    )
    store = ShardStore(redis, settings.namespace, config)
    for p in range(settings.partitions):
        runner = PartitionRunner(store, p, list(PROJECTIONS.values()), batch=1000)
        while await runner.step():
            pass


async def archive_now(
    redis: aioredis.Redis, settings: Settings, root: Path
) -> list[PartitionReport]:
    """Catch up, then archive and trim everything (`aiis archive --min-age 0`)."""
    await catch_up(redis, settings)
    return await archive_log(
        redis,
        settings.namespace,
        settings.partitions,
        root,
        list(PROJECTIONS),
        segment_events=1000,
        min_age_ms=0,
    )
