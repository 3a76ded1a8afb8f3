"""Incremental application with crashes equals a replay from scratch (hypothesis)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.mapper import entry_fields
from projections.fold import Position, apply_batch
from projections.keys import log_key
from projections.registry import PROJECTIONS
from projections.replay import rebuild_partition
from projections.runner import PartitionRunner
from projections.storage import ShardStore
from projections.view import ViewConfig

from .events import entries, raw_entries
from .strategies import Event, event_logs

# small limits so retention, day expiry and window eviction all happen in short logs
CFG = ViewConfig(
    task_retention_ms=300_000,
    task_max=100,
    cost_days=2,
    health_bucket_ms=60_000,
    health_buckets=3,
    throughput_minutes=3,
)
ALL = list(PROJECTIONS.values())


def _roundtrip(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


@settings(max_examples=150, deadline=None)
@given(
    log=event_logs(),
    plan=st.lists(
        st.tuples(st.integers(1, 12), st.sampled_from(["save", "save", "crash", "redeliver"])),
        max_size=40,
    ),
    raw_form=st.booleans(),
)
def test_incremental_with_crashes_equals_replay_pure(
    log: list[Event], plan: list[Any], raw_form: bool
) -> None:
    """Folding in random batches — saving (a JSON round trip, as to Redis), crashing (losing
    everything since the last save) or re-delivering already applied events — ends equal to one
    fold of the whole log (entries as the archive stores them, and as Redis sends them)."""
    raw = raw_entries(log) if raw_form else entries(log)
    expected = [Position(p, p.new(CFG)) for p in ALL]
    apply_batch(0, expected, entries(log))

    saved = [(p, {}, "0-0") for p in ALL]  # (projection, stored entries, checkpoint)
    live = [Position(p, p.new(CFG)) for p in ALL]
    cursor = 0
    for size, action in [*plan, (len(raw) + 1, "save")]:
        apply_batch(0, live, raw[cursor : cursor + size])
        cursor = min(len(raw), cursor + size)
        if action == "save":
            saved = [(p.projection, _roundtrip(p.shard.entries), p.applied) for p in live]
        elif action == "crash":  # restart from what was saved; the reader resumes from there
            live = [Position(p, p.load(CFG, _roundtrip(e)), c, c) for p, e, c in saved]
            cursor = min((int(c.split("-")[0]) for _, _, c in saved), default=0)
        else:  # the reader goes back a little: those events must be skipped
            cursor = max(0, cursor - size)
    apply_batch(0, live, raw[cursor:])
    for got, want in zip(live, expected, strict=True):
        assert _roundtrip(got.shard.entries) == _roundtrip(want.shard.entries), got.projection.name
        assert got.applied == want.applied


async def _against_redis(url: str, log: list[Event], plan: list[tuple[int, str]]) -> None:
    redis = aioredis.Redis.from_url(url)
    ns = f"h{secrets.token_hex(4)}"
    try:
        for etype, task, data, ts in log:
            await redis.xadd(log_key(ns, 0), entry_fields(etype, task, "acme", ts, data))  # type: ignore[arg-type]
        store = ShardStore(redis, ns, CFG)
        runner = PartitionRunner(store, 0, ALL, batch=3)
        other = PartitionRunner(store, 0, ALL, batch=5)
        for batch, action in plan:
            runner.batch = batch
            if action == "crash":  # drop the runner with whatever it holds in memory
                runner = PartitionRunner(store, 0, ALL, batch=batch)
            elif action == "other":  # a second runner works the same partition
                await other.step()
            else:
                await runner.step()
        while await runner.step():
            pass
        rebuilt = await rebuild_partition(store, 0, ALL, None)
        for pos in rebuilt:
            stored, meta = await store.snapshot(0, pos.projection.name)
            assert stored == _roundtrip(pos.shard.entries), pos.projection.name
            assert meta.get("ckpt", "0-0") == pos.applied
    finally:
        await redis.aclose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log=event_logs(max_tasks=6),
    plan=st.lists(
        st.tuples(st.integers(1, 7), st.sampled_from(["step", "step", "crash", "other"])),
        max_size=15,
    ),
)
def test_runner_with_crashes_and_rivals_equals_replay_on_redis(
    redis_url: str, log: list[Event], plan: list[tuple[int, str]]
) -> None:
    """On a real redis-server, a runner that crashes at random points and races a second runner
    ends with stored views and checkpoints equal to a rebuild from scratch (invariant 5)."""
    asyncio.run(_against_redis(redis_url, log, plan))
