"""`aiis projections` keeps quiet while idle: the lag line is logged when the lag changes, not
every AIIS_PROJ_LAG_REPORT_S while nothing happens."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from engine.settings import Settings
from projections.runner import run_projections
from projections.settings import ProjectionSettings

from .conftest import Log


async def test_idle_runner_logs_the_lag_once_then_again_only_after_new_events(
    redis: aioredis.Redis,
    settings: Settings,
    proj: ProjectionSettings,
    log: Log,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twenty idle report intervals give at most one lag line; new events give new lines."""
    caplog.set_level(logging.INFO, logger="aiis.projections")
    fast = proj.model_copy(update={"lag_report_s": 0.02})
    stop = asyncio.Event()
    runner = asyncio.create_task(run_projections(redis, settings, stop, fast))

    def lag_lines() -> int:
        return sum("projection lag" in r.getMessage() for r in caplog.records)

    try:
        for _ in range(200):
            if lag_lines() >= 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(20 * fast.lag_report_s)
        assert lag_lines() == 1
        await log.task("wakes it up")
        for _ in range(500):
            if lag_lines() >= 2:
                break
            await asyncio.sleep(0.01)
        assert lag_lines() >= 2
    finally:
        stop.set()
        await runner
