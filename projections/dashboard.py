"""What the dashboard's stats push shows of the views — ``throughput``, ``cost_today`` and
``providers``, exactly as ``projections.stats.gather`` reports them — read in one round trip.

``gather`` is the whole ``aiis stats`` report: besides these three it reads the queue counters,
every task state's count and the projections' lag, which XRANGEs up to 10,000 log entries per
projection and partition when the projections are behind — dozens of sequential round trips
and tens of thousands of short-lived objects (which push the gateway into full garbage
collections), once a second, for a report the push never sent. This reads only the three
sections: one pipeline of an HMGET of the last 15 minutes' throughput records and two HGETALLs
per partition; each command touches one shard's key, so it works on a Redis Cluster too.
"""

from __future__ import annotations

from typing import Any

import orjson

from engine.core.store import translate_errors
from projections.keys import ShardKeys
from projections.stats import THROUGHPUT_WINDOWS, costs, health, throughput
from projections.storage import ShardStore, decode_entries


def _minutes(now_ms: int) -> list[str]:
    """The ``queue_length`` throughput fields ``throughput`` counts at ``now_ms``."""
    now_min = now_ms // 60_000
    return [f"tp:{m}" for m in range(now_min - max(THROUGHPUT_WINDOWS) + 1, now_min + 1)]


async def read(store: ShardStore, partitions: int, now_ms: int, day: str) -> dict[str, Any]:
    """``throughput``, ``cost_today`` and ``providers`` of ``gather(store, partitions, now_ms,
    day)``, from one pipelined round trip."""
    fields = _minutes(now_ms)
    ns = store.namespace
    with translate_errors():
        async with store.redis.pipeline(transaction=False) as pipe:
            for p in range(partitions):
                pipe.hmget(ShardKeys(ns, p, "queue_length").view, fields)
                pipe.hgetall(ShardKeys(ns, p, "cost").view)
                pipe.hgetall(ShardKeys(ns, p, "provider_health").view)
            replies = await pipe.execute()
    minutes = [
        {f: orjson.loads(v) for f, v in zip(fields, values, strict=True) if v is not None}
        for values in replies[0::3]
    ]
    cfg = store.config
    return {
        "throughput": throughput(minutes, now_ms),
        "cost_today": costs((decode_entries(raw) for raw in replies[1::3]), day),
        "providers": health(
            (decode_entries(raw) for raw in replies[2::3]),
            cfg.health_bucket_ms,
            min(5, cfg.health_buckets),
        ),
    }
