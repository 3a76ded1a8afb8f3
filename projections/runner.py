"""The projection runner: catch-up readers, not consumer groups.

Per partition, the runner reads the log after the lowest checkpoint of its projections (XRANGE
with an exclusive start; non-blocking, with an idle back-off, so connections stay bounded
whatever the partition count), folds each event into every projection that has not applied it,
and saves all changed entries with the new checkpoints in one compare-and-set script on the
partition's hash tag. A crash before the save loses only memory; one after it leaves nothing to
redo. An entry the code cannot read, of an unknown type, or that a view cannot apply is skipped
and counted (``projections.fold.apply_batch``, ``engine.core.tolerant``): the runner never stops on
one, and its checkpoint moves past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis

from engine.core.keys import meta_key
from engine.core.store import translate_errors
from engine.errors import ConfigError, RedisUnavailable
from engine.settings import Settings
from projections import ids
from projections.archive import archive_log
from projections.errors import ArchiveError
from projections.fold import Position, apply_batch
from projections.registry import PROJECTIONS
from projections.settings import ProjectionSettings, archive_dir
from projections.source import stream_page
from projections.status import lag_report
from projections.storage import ShardStore
from projections.view import Projection, ViewConfig

log = logging.getLogger("aiis.projections")
RECONNECT_S = 1.0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep until ``stop`` is set or ``seconds`` pass. (Not ``asyncio.wait_for``: on 3.11 it
    can swallow a cancellation that arrives as its timeout fires.)"""
    if stop.is_set():
        return
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


class PartitionRunner:
    """The projections of one partition, advanced batch by batch."""

    def __init__(
        self, store: ShardStore, partition: int, projections: Sequence[Projection], batch: int
    ) -> None:
        self.store = store
        self.partition = partition
        self.projections = list(projections)
        self.batch = batch
        self.positions: list[Position] = []

    async def load(self) -> None:
        self.positions = [await self.store.load(self.partition, p) for p in self.projections]

    @property
    def cursor(self) -> str:
        return min((p.applied for p in self.positions), key=ids.parse, default=ids.ZERO)

    async def step(self) -> int:
        """Read, fold and save one batch; returns the number of entries read."""
        if not self.positions:
            await self.load()
        start = self.cursor
        ns = self.store.namespace
        page = await stream_page(self.store.redis, ns, self.partition, start, self.batch)
        if not page:
            return 0
        apply_batch(self.partition, self.positions, page)
        await self.save()
        return len(page)

    async def save(self) -> None:
        stale = await self.store.save(self.partition, self.positions)
        for pos in stale:  # another writer (runner or replay) moved the stored shard: reload
            log.info(
                "partition %d: %s moved on elsewhere; reloading",
                self.partition,
                pos.projection.name,
            )
            i = self.positions.index(pos)
            self.positions[i] = await self.store.load(self.partition, pos.projection)

    async def run(self, stop: asyncio.Event, idle_min_s: float, idle_max_s: float) -> None:
        idle = idle_min_s
        while not stop.is_set():
            try:
                read = await self.step()
            except RedisUnavailable as exc:
                # Redis restarting: keep nothing unsaved we cannot trust, retry with back-off
                log.warning("partition %d: %s; retrying", self.partition, exc)
                self.positions = []
                read = 0
                idle = max(idle, RECONNECT_S)
            if read >= self.batch:
                idle = idle_min_s
                continue
            await wait_or_stop(stop, idle)
            idle = min(idle * 2, max(idle_max_s, idle))
        if self.positions:
            await self.save()


async def check_partitions(redis: aioredis.Redis, settings: Settings) -> None:
    """Refuse to project with a partition count other than the one the data was written with."""
    with translate_errors():
        stored = await redis.hget(meta_key(settings.namespace), "partitions")
    if stored is not None and int(stored) != settings.partitions:
        raise ConfigError(
            f"AIIS_PARTITIONS={settings.partitions} but this Redis holds data written with "
            f"{int(stored)} partitions"
        )


async def run_projections(
    redis: aioredis.Redis,
    settings: Settings,
    stop_event: asyncio.Event,
    proj: ProjectionSettings,
    projections: Sequence[Projection] | None = None,
) -> None:
    """Keep every projection up to date until ``stop_event`` is set (then save and return).

    Raises what stops one partition (e.g. ``ConfigError``); the other partitions stop and
    save first.
    """
    chosen = list(projections) if projections is not None else list(PROJECTIONS.values())
    config = ViewConfig.from_settings(settings.partitions, settings.task_retention_s, proj)
    await check_partitions(redis, settings)
    store = ShardStore(redis, settings.namespace, config)
    runners = [PartitionRunner(store, p, chosen, proj.batch) for p in range(settings.partitions)]
    inner = asyncio.Event()

    async def relay() -> None:
        await stop_event.wait()
        inner.set()

    async def one(runner: PartitionRunner) -> None:
        try:
            await runner.run(inner, proj.idle_min_s, proj.idle_max_s)
        except BaseException:
            inner.set()  # stop the other partitions cleanly, then report this failure
            raise

    async def report() -> None:
        caught_up_at: list[int] | None = None  # events applied when we last said "0 behind"
        while not inner.is_set():
            await wait_or_stop(inner, proj.lag_report_s)
            if inner.is_set():
                return
            lags = await lag_report(
                redis, settings.namespace, settings.partitions, [p.name for p in chosen]
            )
            if all(v["behind"] == 0 for v in lags.values()):
                applied = [int(v["events"]) for v in lags.values()]
                if applied == caught_up_at:
                    continue  # idle and already said so: no line every lag_report_s
                caught_up_at = applied
            else:
                caught_up_at = None
            log.info(
                "projection lag: %s",
                ", ".join(
                    f"{name} {v['lag_ms']} ms ({v['behind']}{'+' if v['more'] else ''} events)"
                    for name, v in lags.items()
                ),
            )

    relay_task = asyncio.create_task(relay())
    report_task = asyncio.create_task(report())
    archive_task = asyncio.create_task(archive_on_schedule(redis, settings, proj, inner))
    try:
        results = await asyncio.gather(*(one(r) for r in runners), return_exceptions=True)
    finally:
        relay_task.cancel()
        report_task.cancel()
        archive_task.cancel()
        await asyncio.gather(relay_task, report_task, archive_task, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


async def archive_on_schedule(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, stop: asyncio.Event
) -> None:
    """``aiis archive`` every ``AIIS_ARCHIVE_INTERVAL_S`` until ``stop`` (0: never), so the log
    stays bounded without an operator. A failed run is logged and retried at the next tick."""
    if proj.archive_interval_s <= 0:
        return
    root = archive_dir(settings, proj)
    while not stop.is_set():
        await wait_or_stop(stop, proj.archive_interval_s)
        if stop.is_set():
            return
        try:
            reports = await archive_log(
                redis,
                settings.namespace,
                settings.partitions,
                root,
                list(PROJECTIONS),
                segment_events=proj.segment_events,
                min_age_ms=int(proj.archive_min_age_s * 1000),
            )
        except (ArchiveError, RedisUnavailable) as exc:
            log.warning("scheduled archive skipped: %s", exc)
            continue
        archived = sum(r.archived for r in reports)
        if archived:
            log.info(
                "archived %d events (%d trimmed) to %s",
                archived,
                sum(r.trimmed for r in reports),
                root,
            )
