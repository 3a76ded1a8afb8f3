"""Rebuilding views from the log (archive, then stream).

``replay`` folds each partition's whole history into fresh shards in memory, writes them under
the rebuild keys and swaps them in with one script per partition: a reader sees either the old
shard or the complete new one, never a half-built one. (Shards of different partitions swap one
after the other — each is always a complete view of its partition, as during normal running.)
A running ``aiis projections`` notices the new generation at its next save and reloads.

``verify`` snapshots each live shard with its checkpoint, rebuilds beside it in memory up to
exactly that checkpoint, and lists every entry that differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from engine.core.store import translate_errors
from projections import ids
from projections.archive import list_segments
from projections.fold import Position, apply_batch, paused_gc
from projections.keys import log_key
from projections.source import history
from projections.storage import ShardStore
from projections.view import Projection

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Difference:
    partition: int
    projection: str
    key: str
    live: Any  # None: missing in the live view
    rebuilt: Any  # None: missing in the rebuilt view


def _noop(n: int) -> None:
    return None


async def estimate_events(
    redis: aioredis.Redis, namespace: str, partitions: int, archive_root: Path | None
) -> int:
    """Roughly how many entries a full replay reads (for a progress bar)."""
    total = 0
    with translate_errors():
        for p in range(partitions):
            total += int(await redis.xlen(log_key(namespace, p)))
    if archive_root is not None:
        for p in range(partitions):
            total += sum(s.count for s in list_segments(archive_root, namespace, p))
    return total


async def rebuild_partition(
    store: ShardStore,
    partition: int,
    projections: Sequence[Projection],
    archive_root: Path | None,
    *,
    until: str | None = None,
    progress: Progress = _noop,
) -> list[Position]:
    """Fresh shards of ``projections`` holding the partition's history (up to ``until``)."""
    positions = [Position(p, p.new(store.config)) for p in projections]
    if until == ids.ZERO:
        return positions
    pages = history(store.redis, store.namespace, partition, archive_root, until=until)
    async with aclosing(pages):  # a rebuild pauses cyclic GC throughout (see paused_gc)
        with paused_gc():
            async for page in pages:
                apply_batch(partition, positions, page, until=until, reader="replay")
                for pos in positions:  # written whole: which keys changed need not be kept
                    pos.shard.changed.clear()
                progress(len(page))
    return positions


async def replay(
    store: ShardStore,
    partitions: int,
    projections: Sequence[Projection],
    archive_root: Path | None,
    progress: Progress = _noop,
) -> int:
    """Rebuild ``projections`` from zero and swap them in; returns the events applied."""
    applied = 0
    for p in range(partitions):
        try:
            positions = await rebuild_partition(
                store, p, projections, archive_root, progress=progress
            )
            for pos in positions:
                await store.write_rebuild(p, pos)
            await store.swap(p, projections)
        except BaseException:
            await store.discard_rebuild(p, projections)
            raise
        applied += max((pos.pending for pos in positions), default=0)
    return applied


async def verify(
    store: ShardStore,
    partitions: int,
    projections: Sequence[Projection],
    archive_root: Path | None,
    progress: Progress = _noop,
) -> list[Difference]:
    """Every difference between the live shards and a rebuild at the same checkpoints."""
    diffs: list[Difference] = []
    for p in range(partitions):
        snaps = {pr.name: await store.snapshot(p, pr.name) for pr in projections}
        by_ckpt: dict[str, list[Projection]] = {}
        for pr in projections:
            by_ckpt.setdefault(snaps[pr.name][1].get("ckpt", ids.ZERO), []).append(pr)
        for ckpt, group in by_ckpt.items():
            rebuilt = await rebuild_partition(
                store, p, group, archive_root, until=ckpt, progress=progress
            )
            for pos in rebuilt:
                name = pos.projection.name
                diffs += compare(p, name, snaps[name][0], pos.shard.entries)
    return diffs


def compare(
    partition: int, name: str, live: dict[str, Any], rebuilt: dict[str, Any]
) -> list[Difference]:
    return [
        Difference(partition, name, key, live.get(key), rebuilt.get(key))
        for key in sorted(live.keys() | rebuilt.keys())
        if live.get(key) != rebuilt.get(key)
    ]
