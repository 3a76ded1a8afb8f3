"""The chaos suite, CI-sized: faults, SIGKILLed workers, a Redis restart and a gateway restart,
and still every accepted task ends exactly once, the cost view adds up, replay equals live and a
resuming WebSocket subscriber misses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos_harness import ChaosConfig, run_chaos

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
async def test_nothing_is_lost_under_chaos(tmp_path: Path) -> None:
    """Under ~20 % provider faults and process kills, every guarantee holds."""
    report = await run_chaos(tmp_path, ChaosConfig(tasks=300, workers=3, kill_every_s=2.0))
    print(report.summary())
    assert report.problems == []
    assert report.kills >= 2 and report.redis_restarts == 1 and report.gateway_restarts == 1
    assert report.provider_errors > 0


@pytest.mark.timeout(400)
async def test_nothing_is_lost_under_chaos_on_a_cluster(tmp_path: Path) -> None:
    """The same guarantees on a 3-master Redis Cluster with 4 partitions, one master restarted."""
    report = await run_chaos(
        tmp_path,
        ChaosConfig(tasks=200, workers=3, kill_every_s=2.0, cluster=True, partitions=4),
    )
    print(report.summary())
    assert report.problems == []
    assert report.kills >= 2 and report.redis_restarts == 1 and report.gateway_restarts == 1
    assert report.provider_errors > 0
