"""Autoscaling: the pure policy, the adaptive in-flight limit, and a real burst."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.client import Client
from engine.core.inflight import InFlightLimit
from engine.core.keys import autoscale_pattern
from engine.runtime.autoscale import ScalePolicy, ScaleState, Signals, decide, parse_range
from tests.conftest import Workers, fast_settings
from tests.engine.helpers import log_events, terminal_counts, wait_terminal

POLICY = ScalePolicy(minimum=1, maximum=4, per_process=10, grow_after_s=1.0, idle_s=5.0)


def idle() -> Signals:
    return Signals(waiting=0, in_flight=0, oldest_wait_s=0.0)


def test_grows_with_the_backlog_but_never_past_max() -> None:
    """A backlog grows the pool by what it needs, capped at MAX."""
    state = decide(POLICY, ScaleState(1), Signals(25, 10, 3.0), now=100)
    assert state.target == 4  # ceil(35 / 10) = 4
    state = decide(POLICY, ScaleState(1), Signals(500, 10, 30.0), now=100)
    assert state.target == 4
    state = decide(POLICY, ScaleState(2), Signals(15, 5, 1.5), now=100)
    assert state.target == 3


def test_old_waiting_work_grows_even_a_short_queue() -> None:
    """One task waiting past grow_after_s is enough to add a process."""
    assert decide(POLICY, ScaleState(1), Signals(1, 10, 2.0), now=100).target == 2
    assert decide(POLICY, ScaleState(1), Signals(1, 9, 0.2), now=100).target == 1


def test_holds_while_providers_rate_limit() -> None:
    """More processes only add waiting when providers push back: the pool holds."""
    s = Signals(waiting=100, in_flight=10, oldest_wait_s=5.0, finished=20, rate_limited=10)
    state = decide(POLICY, ScaleState(2), s, now=100)
    assert state.target == 2 and "rate-limit" in state.reason


def test_shrinks_one_at_a_time_after_idle_and_never_below_min() -> None:
    """Idle for idle_s: one process fewer per cooldown, down to MIN, not before."""
    state = ScaleState(3, changed_at=0)
    state = decide(POLICY, state, idle(), now=10)  # idle starts now
    assert state.target == 3
    state = decide(POLICY, state, idle(), now=14)
    assert state.target == 3
    state = decide(POLICY, state, idle(), now=15.5)
    assert state.target == 2
    for now in (16, 20.5, 26, 40, 60):
        state = decide(POLICY, state, idle(), now=now)
    assert state.target == 1


def test_does_not_shrink_while_in_flight_work_needs_the_processes() -> None:
    """Nothing waiting but the pool is busy: no shrink."""
    state = ScaleState(3, changed_at=0, idle_since=0)
    assert decide(POLICY, state, Signals(0, 25, 0.0), now=100).target == 3
    assert decide(POLICY, state, Signals(0, 10, 0.0), now=100).target == 2


def test_cooldown_between_changes() -> None:
    """Two changes are at least cooldown_s apart."""
    state = decide(POLICY, ScaleState(1), Signals(5, 10, 3.0), now=100)
    assert state.target == 2
    assert decide(POLICY, state, Signals(50, 20, 3.0), now=101).target == 2
    assert decide(POLICY, state, Signals(50, 20, 3.0), now=102.5).target == 4


def test_autoscale_range_is_validated() -> None:
    """MIN:MAX is parsed strictly."""
    assert parse_range("1:4") == (1, 4)
    for bad in ("4", "0:2", "3:2", "a:b", "1:999"):
        with pytest.raises(ValueError, match="autoscale"):
            parse_range(bad)


def test_in_flight_limit_backs_off_and_recovers() -> None:
    """Rate limits cut the in-flight limit multiplicatively; successes restore it slowly."""
    limit = InFlightLimit(64)
    for _ in range(5):
        limit.record("RateLimited")
    low = limit.current
    assert 4 <= low < 20
    limit.record("InvalidRequest")
    assert limit.current == low
    for _ in range(2000):
        limit.record(None)
    assert limit.current == 64
    for _ in range(100):
        limit.record("Overloaded")
    assert limit.current == 4


async def test_worker_takes_fewer_tasks_while_rate_limited(
    real_client: Client, workers: Workers
) -> None:
    """A worker whose calls are rate-limited lowers its own in-flight limit."""
    client = real_client(retry_base_s=5.0)
    worker = workers.start(client, concurrency=32)
    ids = [
        await client.submit(f"t{i}", params={"script": ["RateLimited", "ok"]}) for i in range(20)
    ]

    async def all_scheduled() -> bool:
        events = await log_events(client)
        return sum(e["type"] == "TaskRetryScheduled" for e in events) >= 20

    deadline = time.monotonic() + 20
    while not await all_scheduled():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert worker.limit.current < 32
    del ids


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


@pytest.mark.slow
async def test_burst_grows_to_max_and_shrinks_back(redis_url: str) -> None:
    """A burst grows the pool to MAX (never past it) and it shrinks to MIN once drained;
    every task ends exactly once, including those in flight when a process retires."""
    settings = fast_settings(redis_url=redis_url)
    env = {
        **os.environ,
        "AIIS_REDIS_URL": redis_url,
        "AIIS_NAMESPACE": settings.namespace,
        "AIIS_PROVIDER": "scripted",
        "AIIS_VISIBILITY_TIMEOUT_S": "2.0",
        "AIIS_CONTROL_INTERVAL_S": "0.05",
        "AIIS_AUTOSCALE_INTERVAL_S": "0.3",
        "AIIS_AUTOSCALE_GROW_AFTER_S": "0.3",
        "AIIS_AUTOSCALE_IDLE_S": "1.0",
    }
    pool = subprocess.Popen(
        [sys.executable, "-m", "engine", "worker", "--autoscale", "1:3", "--concurrency", "4"],
        env=env,
    )
    sizes: list[int] = []
    try:
        async with Client.from_url(redis_url, settings) as client:
            await asyncio.sleep(1.0)
            ids = list(
                await asyncio.gather(
                    *(client.submit(f"t{i}", params={"script": ["sleep:0.4"]}) for i in range(60))
                )
            )
            # a tail of long calls: some are still running when the pool shrinks
            ids += [
                await client.submit(f"l{i}", params={"script": ["sleep:2.5"]}) for i in range(2)
            ]
            deadline = time.monotonic() + 60
            while True:
                sizes.append(len(_children(pool.pid)))
                events = await log_events(client)
                if len(terminal_counts(events)) == len(ids) and sizes[-1] == 1:
                    break
                assert time.monotonic() < deadline, f"pool sizes seen: {sizes}"
                await asyncio.sleep(0.1)
            await wait_terminal(client, ids)
            assert terminal_counts(await log_events(client)) == {i: 1 for i in ids}
            published = await client.store.redis.keys(autoscale_pattern(settings.namespace))
            assert published
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(60)
    assert max(sizes) == 3
    assert all(n <= 3 for n in sizes)
    assert sizes[-1] == 1
