"""Redis I/O of view shards: load a shard with its checkpoint, save changes and checkpoint in
one atomic step, write a rebuilt shard beside the live one and swap it in.

Every script touches the keys of one partition's hash tag only (see ``projections.keys``).
A save is a compare-and-set on ``gen`` and ``ckpt``: it applies only if the stored shard is
still the one this process loaded and advanced, so two runners, or a runner and a replay,
cannot interleave writes; the loser reloads.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core.scripts import lua_source
from engine.core.store import translate_errors
from projections import ids
from projections.fold import Position
from projections.keys import ShardKeys
from projections.script_args import ShardSave, build_view_save, build_view_swap, parse_view_save
from projections.view import Projection, ViewConfig

CHUNK = 500  # fields per HSET/HDEL (Lua unpack and reply sizes stay small)

# KEYS: view, meta per position. ARGV: n, then per position: expected "gen ckpt", new ckpt,
# events applied, last ts, nset, ndel, nset × (key, json), ndel × key.
# Returns the 1-based indices whose stored shard moved on (nothing is written then).
_SAVE = lua_source("view_save", package="projections")

# KEYS: view, meta, rebuild view, rebuild meta per projection. Swap each rebuilt shard in.
_SWAP = lua_source("view_swap", package="projections")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entries(raw: dict[Any, Any]) -> dict[str, Any]:
    return {_s(k): orjson.loads(v) for k, v in raw.items()}


class ShardStore:
    """Loads and saves the shards of the projections of one namespace."""

    def __init__(self, redis: aioredis.Redis, namespace: str, config: ViewConfig) -> None:
        self.redis = redis
        self.namespace = namespace
        self.config = config
        self._save = redis.register_script(_SAVE)
        self._swap = redis.register_script(_SWAP)

    def keys(self, partition: int, projection: Projection) -> ShardKeys:
        return ShardKeys(self.namespace, partition, projection.name)

    async def snapshot(
        self, partition: int, name: str, *, rebuild: bool = False
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """A consistent (entries, meta) pair of one shard, read in one transaction."""
        k = ShardKeys(self.namespace, partition, name)
        with translate_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.rebuild_view if rebuild else k.view)
                pipe.hgetall(k.rebuild_meta if rebuild else k.meta)
                raw, meta = await pipe.execute()
        return decode_entries(raw), {_s(a): _s(b) for a, b in meta.items()}

    async def meta(self, partition: int, name: str) -> dict[str, str]:
        with translate_errors():
            raw = await self.redis.hgetall(ShardKeys(self.namespace, partition, name).meta)
        return {_s(a): _s(b) for a, b in raw.items()}

    async def load(self, partition: int, projection: Projection) -> Position:
        entries, meta = await self.snapshot(partition, projection.name)
        ckpt = meta.get("ckpt", ids.ZERO)
        return Position(
            projection=projection,
            shard=projection.load(self.config, entries),
            applied=ckpt,
            saved=ckpt,
            gen=meta.get("gen", ""),
            last_ts=int(meta.get("ts", 0)),
        )

    async def save(self, partition: int, positions: Sequence[Position]) -> list[Position]:
        """Write every dirty position's changes and checkpoint atomically; returns the stale
        positions (another writer moved their stored shard; nothing was written)."""
        todo = [p for p in positions if p.dirty]
        if not todo:
            return []
        shards: list[ShardSave] = []
        for pos in todo:
            k = self.keys(partition, pos.projection)
            entries = pos.shard.entries
            shards.append(
                ShardSave(
                    k.view,
                    k.meta,
                    f"{pos.gen} {pos.saved}",
                    pos.applied,
                    pos.pending,
                    pos.last_ts,
                    [
                        (key, orjson.dumps(entries[key]))
                        for key in pos.shard.changed
                        if key in entries
                    ],
                    [key for key in pos.shard.changed if key not in entries],
                )
            )
        keys, argv = build_view_save(shards)
        with translate_errors():
            stale_idx = parse_view_save(await self._save(keys=keys, args=argv))
        if not stale_idx:
            for pos in todo:
                pos.shard.changed.clear()
                pos.saved = pos.applied
                pos.pending = 0
        return [todo[i] for i in stale_idx]

    async def write_rebuild(self, partition: int, pos: Position) -> None:
        """Store a rebuilt shard under the rebuild keys (not yet visible to readers)."""
        k = self.keys(partition, pos.projection)
        items = list(pos.shard.entries.items())
        with translate_errors():
            await self.redis.delete(k.rebuild_view, k.rebuild_meta)
            for start in range(0, len(items), CHUNK):
                chunk = items[start : start + CHUNK]
                mapping = {key: orjson.dumps(rec) for key, rec in chunk}
                await self.redis.hset(k.rebuild_view, mapping=mapping)  # type: ignore[arg-type]
            await self.redis.hset(
                k.rebuild_meta,
                mapping={
                    "ckpt": pos.applied,
                    "gen": secrets.token_hex(6),
                    "events": pos.pending,
                    "ts": pos.last_ts,
                },
            )

    async def swap(self, partition: int, projections: Sequence[Projection]) -> None:
        """Make the rebuilt shards of one partition live, all in one atomic step."""
        keys, argv = build_view_swap(
            (k.view, k.meta, k.rebuild_view, k.rebuild_meta)
            for k in (self.keys(partition, projection) for projection in projections)
        )
        with translate_errors():
            await self._swap(keys=keys, args=argv)

    async def discard_rebuild(self, partition: int, projections: Sequence[Projection]) -> None:
        with translate_errors():
            for projection in projections:
                k = self.keys(partition, projection)
                await self.redis.delete(k.rebuild_view, k.rebuild_meta)
