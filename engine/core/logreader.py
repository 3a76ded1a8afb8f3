"""Following the event logs of several partitions at once: the one reader the gateway's hub,
the ops reader and the dashboard share.

On a standalone Redis one XREAD covers every partition (what keeps the fan-out cheap). On a
Redis Cluster each partition's log lives in its own slot and one command may not touch two, so
each partition gets its own XREAD, all in flight at the same time; ``read`` returns as soon as
any of them answers and leaves the others in flight for the next call (a read whose cursor the
caller has moved since is sent again with the new one). ``aclose`` cancels what is left;
redis-py can swallow the cancellation of a blocked XREAD (redis-py#2028), so a caller keeps a
stop flag of its own as well, and an XREAD ends within its ``block`` anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.core.keys import PartitionKeys
from engine.core.store import translate_errors

Entry = tuple[bytes, dict[bytes, bytes]]
Batch = list[tuple[int, list[Entry]]]  # (partition, entries in log order), partitions ascending


def is_cluster(redis: aioredis.Redis) -> bool:
    """Whether ``redis`` is a cluster client (it has no single connection pool then)."""
    return isinstance(redis, RedisCluster)


class LogReader:
    """``read(cursors)``: the next entries of each partition after its cursor (exclusive)."""

    def __init__(
        self, redis: aioredis.Redis, namespace: str, partitions: Sequence[int] | int
    ) -> None:
        self.redis = redis
        parts = range(partitions) if isinstance(partitions, int) else partitions
        self.keys = {p: PartitionKeys(namespace, p).log for p in parts}
        self._partition_of = {key: p for p, key in self.keys.items()}
        self.per_partition = is_cluster(redis)
        self._inflight: dict[int, asyncio.Task[Any]] = {}
        self._issued: dict[int, str] = {}  # the cursor each read in flight was sent with

    async def read(
        self, cursors: Mapping[int, str], count: int, block_ms: int | None = None
    ) -> Batch:
        """Entries after ``cursors`` (partition -> id), at most ``count`` per partition; with
        ``block_ms``, wait up to that long for the first one. Raises ``RedisUnavailable``."""
        if not self.per_partition:
            return await self._one_xread(cursors, count, block_ms)
        for p, cursor in cursors.items():
            if p in self._inflight and self._issued[p] != cursor:  # the caller moved it
                stale = self._inflight.pop(p)
                stale.cancel()
                stale.add_done_callback(_retrieve)
            if p not in self._inflight:
                coro = self.redis.xread({self.keys[p]: cursor}, count=count, block=block_ms)
                self._inflight[p] = asyncio.ensure_future(coro)
                self._issued[p] = cursor
        if block_ms is None:
            await asyncio.wait(self._inflight.values())
        else:
            await asyncio.wait(self._inflight.values(), return_when=asyncio.FIRST_COMPLETED)
        batch: Batch = []
        failure: BaseException | None = None
        for p in sorted(self._inflight):
            task = self._inflight[p]
            if not task.done():
                continue
            del self._inflight[p]
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                failure = failure or exc
                continue
            reply = task.result()
            if reply and reply[0][1]:
                batch.append((p, list(reply[0][1])))
        if failure is not None and not batch:
            with translate_errors():
                raise failure
        return batch

    async def _one_xread(
        self, cursors: Mapping[int, str], count: int, block_ms: int | None
    ) -> Batch:
        streams = {self.keys[p]: c for p, c in cursors.items()}
        with translate_errors():
            reply: Any = await self.redis.xread(
                streams,  # type: ignore[arg-type]
                count=count,
                block=block_ms,
            )
        batch: Batch = []
        for key, entries in reply or []:
            name = key.decode() if isinstance(key, bytes) else key
            if entries:
                batch.append((self._partition_of[name], list(entries)))
        batch.sort(key=lambda pair: pair[0])
        return batch

    async def aclose(self) -> None:
        """Cancel the reads still in flight (each ends within its block at the latest)."""
        inflight, self._inflight = self._inflight, {}
        for task in inflight.values():
            task.cancel()
        await asyncio.gather(*inflight.values(), return_exceptions=True)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Consume the outcome of an abandoned read (so asyncio never reports it as unretrieved)."""
    if not task.cancelled():
        task.exception()
