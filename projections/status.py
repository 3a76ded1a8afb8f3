"""How far behind each projection is: checkpoints against the log's newest entry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from engine.core.store import translate_errors
from projections import ids
from projections.keys import ShardKeys, log_key

BEHIND_CAP = 10_000  # count events behind up to this many (Redis 6.2 has no cheap lag)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def partition_status(
    redis: aioredis.Redis, namespace: str, partition: int, names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per projection: checkpoint, lag in ms of event time, events behind (capped), halted."""
    log = log_key(namespace, partition)
    with translate_errors():
        tail = await redis.xrevrange(log, "+", "-", count=1)
        head = _s(tail[0][0]) if tail else ids.ZERO
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            meta = {
                _s(k): _s(v)
                for k, v in (
                    await redis.hgetall(ShardKeys(namespace, partition, name).meta)
                ).items()
            }
            ckpt = meta.get("ckpt", ids.ZERO)
            behind = 0
            if ids.parse(head) > ids.parse(ckpt):
                behind = len(await ids.xrange(redis, log, f"({ckpt}", count=BEHIND_CAP))
            lag_ms = 0
            if behind:
                since = ckpt
                if ckpt == ids.ZERO:  # never ran: lag since the oldest entry
                    first = await ids.xrange(redis, log, "-", count=1)
                    since = _s(first[0][0]) if first else head
                lag_ms = max(0, ids.ms_of(head) - ids.ms_of(since))
            out[name] = {
                "checkpoint": ckpt,
                "head": head,
                "lag_ms": lag_ms,
                "behind": behind,
                "more": behind >= BEHIND_CAP,
                "events": int(meta.get("events", 0)),
                "halted": meta.get("halted"),
            }
    return out


async def lag_report(
    redis: aioredis.Redis, namespace: str, partitions: int, names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per projection over all partitions: worst lag, total behind, halted messages."""
    total: dict[str, dict[str, Any]] = {
        n: {"lag_ms": 0, "behind": 0, "more": False, "events": 0, "halted": []} for n in names
    }
    for p in range(partitions):
        for name, st in (await partition_status(redis, namespace, p, names)).items():
            t = total[name]
            t["lag_ms"] = max(t["lag_ms"], st["lag_ms"])
            t["behind"] += st["behind"]
            t["more"] = t["more"] or st["more"]
            t["events"] += st["events"]
            if st["halted"]:
                t["halted"].append(st["halted"])
    return total
