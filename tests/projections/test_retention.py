"""A bounded log whose finished tasks stay readable (DESIGN.md §3 invariants 6 and 10): after
the log was archived and trimmed, `get` and `watch` still give a task's whole story; the janitor
caps finished tasks and forgets what was kept for them; the DLQ stays capped; a running
`aiis projections` archives on its own schedule."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core.events import Event
from projections.archive import archive_log, list_segments
from projections.keys import ShardKeys
from projections.registry import PROJECTIONS
from tests.archived import archive_now, catch_up
from tests.conftest import Engine, Workers, fast_settings

STREAM = {"script": ["stream:6"]}


async def _story(engine: Engine, task_id: str, since: str | None = None) -> list[Event]:
    async with asyncio.timeout(15):  # a watch that hangs fails here
        return [e async for e in engine.client.watch(task_id, since=since, block_ms=200)]


async def _finished(engine: Engine, n: int, **params: object) -> list[str]:
    ids = [await engine.client.submit(f"hi {i}", params=params or STREAM) for i in range(n)]
    for task_id in ids:
        await _story(engine, task_id)
    return ids


async def test_get_returns_terminal_and_result_after_archive(
    engine: Engine, tmp_path: Path
) -> None:
    """After `archive --min-age 0` trimmed every event of a finished task, `get` still returns
    its terminal event with the result."""
    engine.start_worker()
    [task_id] = await _finished(engine, 1)
    before = await engine.client.get(task_id)
    assert before.terminal is not None and before.terminal.data.result.text  # type: ignore[union-attr]
    reports = await archive_now(engine.client.store.redis, engine.settings, tmp_path)
    assert sum(r.archived for r in reports) > 0
    assert await engine.log(task_id=task_id) == []  # really trimmed from the log
    after = await engine.client.get(task_id)
    assert after.status == before.status
    assert after.terminal == before.terminal


async def test_watch_replays_the_whole_story_after_archive(engine: Engine, tmp_path: Path) -> None:
    """`Client.watch` from the start and with `since` replays an archived task's events, in
    order, and ends at its terminal event (no hang)."""
    engine.start_worker()
    [task_id] = await _finished(engine, 1)
    story = [e.id for e in await _story(engine, task_id)]
    assert len(story) >= 4
    await archive_now(engine.client.store.redis, engine.settings, tmp_path)
    assert await engine.log(task_id=task_id) == []
    assert [e.id for e in await _story(engine, task_id)] == story
    for k in (0, 2, len(story) - 2):
        assert [e.id for e in await _story(engine, task_id, since=story[k])] == story[k + 1 :]


async def test_watch_of_a_task_running_across_an_archive_sees_everything(
    engine: Engine, tmp_path: Path
) -> None:
    """A task whose first events were archived while it ran is watched whole: kept part, then
    the log."""
    worker = engine.workers.start(engine.client)
    task_id = await engine.client.submit("slow", params={"script": ["sleep:1"]})
    async with asyncio.timeout(15):
        async for event in engine.client.watch(task_id, block_ms=200):
            if event.type == "TaskStarted":
                break
    await archive_now(engine.client.store.redis, engine.settings, tmp_path)
    assert await engine.log(task_id=task_id) == []  # requested + started: trimmed
    story = await _story(engine, task_id)
    assert [e.type for e in story][:2] == ["TaskRequested", "TaskStarted"]
    assert story[-1].type == "TaskSucceeded"
    await engine.workers.stop(worker)


async def test_janitor_caps_finished_tasks_and_forgets_their_kept_events(
    redis_url: str, workers: Workers, tmp_path: Path
) -> None:
    """Beyond `AIIS_TASK_RETAINED_MAX` the oldest finished tasks are forgotten (the `done` set
    stays capped) with the events kept for them; the newest stay readable."""
    from engine.client import Client

    settings = fast_settings(redis_url=redis_url, task_retained_max=100)
    client = Client.from_url(redis_url, settings)
    try:
        await client.store.prepare()
        engine = Engine(settings, client, workers)
        workers.start(client)
        ids = await _finished(engine, 130, script=["ok"])
        await archive_now(client.store.redis, settings, tmp_path)
        keys = client.store.keys(0)
        redis = client.store.redis
        assert await redis.hlen(keys.kept) == 130
        forgotten = await client.store.janitor(0, cutoff_ms=0)
        assert forgotten == 30
        assert await redis.zcard(keys.done) == 100
        gone = [t for t in ids if await client.state_word(t) is None]
        assert len(gone) == 30
        assert not any(await redis.hmget(keys.kept, gone))
        assert await redis.hlen(keys.kept) == 100
        for task_id in set(ids) - set(gone):
            view = await client.get(task_id)
            assert view.terminal is not None and view.terminal.type == "TaskSucceeded"
    finally:
        await workers.stop_all()
        await client.aclose()


async def test_dead_letter_stream_stays_capped(engine: Engine) -> None:
    """The DLQ stream never holds far more than `AIIS_DLQ_MAX_LEN` entries."""
    from engine.client import Client

    settings = engine.settings.model_copy(update={"dlq_max_len": 10, "max_deliveries": 1})
    client = Client(engine.client.store.redis, settings)
    engine.workers.start(client)
    for i in range(300):
        await client.submit(f"bad {i}", params={"script": ["NetworkError"]})
    key = client.store.keys(0).dlq
    async with asyncio.timeout(30):
        while await client.store.redis.xlen(key) < 5 or await _queued(client):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await client.store.redis.xlen(key) <= 10 + 100  # MAXLEN ~ trims in whole nodes


async def _queued(client: object) -> bool:
    from engine.client import Client

    assert isinstance(client, Client)
    words = await client.store.redis.hvals(client.store.keys(0).state)
    return any(w.decode()[0] not in "SFXC" for w in words)


@pytest.mark.slow
async def test_running_projections_process_archives_and_trims_on_its_schedule(
    engine: Engine, tmp_path: Path
) -> None:
    """`aiis projections` with `AIIS_ARCHIVE_INTERVAL_S` archives and trims by itself; the
    archived tasks stay readable."""
    engine.start_worker()
    ids = await _finished(engine, 5, script=["ok"])
    env = {
        **os.environ,
        "AIIS_REDIS_URL": engine.settings.redis_url or "",
        "AIIS_NAMESPACE": engine.settings.namespace,
        "AIIS_ARCHIVE_INTERVAL_S": "0.3",
        "AIIS_PROJ_ARCHIVE_MIN_AGE_S": "0",
        "AIIS_PROJ_ARCHIVE_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "projections"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        log = engine.client.store.keys(0).log
        deadline = time.monotonic() + 30
        while await engine.client.store.redis.xlen(log) > 0:
            assert time.monotonic() < deadline, "the log was never trimmed"
            await asyncio.sleep(0.1)
        segments = list_segments(tmp_path, engine.settings.namespace, 0)
        assert sum(s.count for s in segments) >= 5 * 3
        more = await _finished(engine, 2, script=["ok"])  # the next tick takes these too
        while await engine.client.store.redis.xlen(log) > 0:
            assert time.monotonic() < deadline, "the second tick never trimmed"
            await asyncio.sleep(0.1)
        for task_id in ids + more:
            view = await engine.client.get(task_id)
            assert view.terminal is not None and view.terminal.type == "TaskSucceeded"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode == 0


def _archive_cli(engine: Engine, root: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIIS_REDIS_URL": engine.settings.redis_url or "",
        "AIIS_NAMESPACE": engine.settings.namespace,
        "AIIS_PROJ_ARCHIVE_DIR": str(root),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "archive", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_archive_cli_says_the_min_age_held_it_back(engine: Engine, tmp_path: Path) -> None:
    """With every projection caught up, `aiis archive` names the min-age, not a projection, as
    what held the recent log back."""
    engine.start_worker()
    await _finished(engine, 2, script=["ok"])
    await catch_up(engine.client.store.redis, engine.settings)
    proc = _archive_cli(engine, tmp_path, "--min-age", "3600")
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert b"held back by the min-age" in out and b"checkpoint" not in out


async def test_archive_cli_into_a_closed_pipe_prints_no_traceback(
    engine: Engine, tmp_path: Path
) -> None:
    """`aiis archive | head` (the reader gone before the output): no traceback, exit 0."""
    proc = _archive_cli(engine, tmp_path)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 0


@pytest.mark.slow
async def test_archived_tasks_stay_readable_on_a_redis_cluster(
    tmp_path: Path, workers: Workers
) -> None:
    """On a 3-master cluster with 4 partitions, archiving keeps each task's events in its own
    slot (no CROSSSLOT) and `get`/`watch` read archived tasks whole."""
    from engine.client import Client
    from tests.cluster import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster")
    cluster.start()
    try:
        settings = fast_settings(redis_url=cluster.url, redis_cluster=True, partitions=4)
        client = Client.from_url(cluster.url, settings)
        try:
            await client.store.prepare()
            engine = Engine(settings, client, workers)
            workers.start(client)
            ids = await _finished(engine, 12)
            stories = {t: [e.id for e in await _story(engine, t)] for t in ids}
            # the projection runner is not cluster-ready yet (projections/source.py, issue 14
            # item 1, another engineer's work): mark every projection caught up by hand
            redis = client.store.redis
            for p in range(4):
                head = await redis.xrevrange(client.store.keys(p).log, count=1)
                for name in PROJECTIONS:
                    meta = ShardKeys(settings.namespace, p, name).meta
                    await redis.hset(meta, "ckpt", head[0][0] if head else "0-0")
            reports = await archive_log(
                redis,
                settings.namespace,
                4,
                tmp_path / "archive",
                list(PROJECTIONS),
                segment_events=1000,
                min_age_ms=0,
            )
            assert {r.partition for r in reports if r.archived} == {0, 1, 2, 3}
            for task_id in ids:
                assert await engine.log(task_id=task_id) == []
                assert [e.id for e in await _story(engine, task_id)] == stories[task_id]
                view = await client.get(task_id)
                assert view.terminal is not None and view.terminal.id == stories[task_id][-1]
            assert {r.partition for r in reports if r.kept} == {0, 1, 2, 3}
        finally:
            await workers.stop_all()
            await client.aclose()
    finally:
        cluster.stop()
