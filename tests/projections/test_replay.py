"""`aiis replay`: rebuild and swap, --verify, empty logs, the CLI."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from engine.runtime.cli import main
from engine.settings import Settings
from projections.fold import Position
from projections.registry import PROJECTIONS
from projections.replay import rebuild_partition, replay, verify
from projections.runner import PartitionRunner
from projections.storage import ShardStore

from .conftest import Log

ALL = list(PROJECTIONS.values())


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("AIIS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("AIIS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("AIIS_PARTITIONS", str(settings.partitions))
    monkeypatch.setenv("AIIS_DATA_DIR", str(settings.data_dir))


async def test_verify_catches_a_tampered_view(
    store: ShardStore,
    log: Log,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After someone edits a live view entry, `--verify` lists that entry and exits 1; before,
    it exits 0."""
    for i in range(4):
        await log.task(f"t{i}", provider="openai", cost=0.5)
    await PartitionRunner(store, 0, ALL, batch=100).step()
    assert await verify(store, settings.partitions, ALL, None) == []
    _env(monkeypatch, settings)
    assert await asyncio.to_thread(main, ["replay", "--verify"]) == 0

    (key,) = (await store.snapshot(0, "cost"))[0]
    await store.redis.hset(
        f"{settings.namespace}:{{p0}}:proj:cost", key, b'{"requests": 4, "usd_nanos": 1}'
    )
    diffs = await verify(store, settings.partitions, ALL, None)
    assert [(d.projection, d.key) for d in diffs] == [("cost", key)]
    assert diffs[0].rebuilt["usd_nanos"] == 2_000_000_000
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["replay", "--verify", "--projection", "cost"]) == 1
    out = capsys.readouterr().out
    assert "1 difference" in out and "openai" in out


async def test_replay_on_empty_log_builds_empty_views(
    store: ShardStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying a namespace with no events succeeds and leaves empty views at checkpoint 0-0."""
    _env(monkeypatch, settings)
    assert await asyncio.to_thread(main, ["replay"]) == 0
    for p in range(settings.partitions):
        for projection in ALL:
            entries, meta = await store.snapshot(p, projection.name)
            assert entries == {} and meta["ckpt"] == "0-0"
    assert await verify(store, settings.partitions, ALL, None) == []


async def test_replay_swaps_complete_views_and_running_runners_reload(
    store: ShardStore, log: Log, redis: aioredis.Redis
) -> None:
    """A rebuild stays invisible until the swap, which replaces the whole shard at once; a
    runner that had the old generation loaded reloads instead of writing over it."""
    for i in range(3):
        await log.task(f"t{i}")
    runner = PartitionRunner(store, 0, ALL, batch=2)
    await runner.step()  # the live view is part-way
    live_before = await store.snapshot(0, "task_state")
    positions = await rebuild_partition(store, 0, ALL, None)
    for pos in positions:
        await store.write_rebuild(0, pos)
    assert await store.snapshot(0, "task_state") == live_before  # nothing visible yet
    await store.swap(0, ALL)
    entries, meta = await store.snapshot(0, "task_state")
    assert set(entries) == {"t0", "t1", "t2"} and meta["ckpt"] == positions[0].applied
    await runner.step()  # its stored shard moved on: it must reload, not overwrite
    await runner.step()
    assert await verify(store, 1, ALL, None) == []


async def test_replay_rebuilds_what_deleted_views_held(store: ShardStore, log: Log) -> None:
    """Deleting every view key and replaying gives back exactly the views the runner built
    (invariant 1: any projection can be deleted and rebuilt)."""
    for i in range(10):
        await log.task(f"t{i}", tenant=f"tenant{i % 3}")
    await PartitionRunner(store, 0, ALL, batch=7).step()
    while await PartitionRunner(store, 0, ALL, batch=7).step():
        pass
    before = {p.name: (await store.snapshot(0, p.name))[0] for p in ALL}
    await store.redis.delete(
        *[store.keys(0, p).view for p in ALL], *[store.keys(0, p).meta for p in ALL]
    )
    assert await replay(store, 2, ALL, None) == 30
    assert {p.name: (await store.snapshot(0, p.name))[0] for p in ALL} == before
    assert isinstance(Position, type)


async def test_a_rebuild_does_not_remember_every_key_it_touched(
    store: ShardStore, log: Log
) -> None:
    """A rebuilt shard is written whole, so the rebuild keeps no set of changed keys: its memory
    does not grow with the number of tasks in the log, only with what the views hold."""
    for i in range(12):
        await log.task(f"t{i}")
    positions = await rebuild_partition(store, 0, ALL, None)
    assert [pos.shard.changed for pos in positions] == [set()] * len(ALL)
    tasks = next(pos for pos in positions if pos.projection.name == "task_state")
    assert len(tasks.shard.entries) == 12 and tasks.pending == 36
