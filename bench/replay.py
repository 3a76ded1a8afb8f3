"""Replay throughput: N synthetic events into every view (five with charts), streaming.

    python bench/replay.py --events 1000000 [--source redis|archive] [--partitions 1]

Generates a realistic task mix (requested, started, streamed deltas, retries, fallback notices,
succeeded/failed/cancelled; 20 tenants, 3 providers, two days of event time) into a real
embedded redis-server (or into archive segments with --source archive and an empty stream),
then times `projections.replay.replay` — read, decode, fold into task_state, queue_length, cost,
provider_health and charts, write the rebuilt shards and swap them in. Prints events/s and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.mapper import entry_fields
from engine.runtime.embedded import EmbeddedRedis
from projections.archive import SegmentWriter, partition_dir
from projections.keys import log_key
from projections.registry import PROJECTIONS
from projections.replay import replay
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig

T0 = 1_700_000_000_000
PROVIDERS = ("gemini", "openai", "claude")


def task_events(rng: random.Random, n: int) -> Iterator[tuple[str, str, str, int, dict[str, Any]]]:
    """About ``n`` events of interleaved task lifecycles, in time order."""
    ts, i, made = T0, 0, 0
    while made < n:
        tid, tenant, prov = f"{i:032x}", f"tenant{i % 20}", PROVIDERS[i % 3]
        i += 1
        ts += rng.randint(0, 170)  # ≈ 1M events over two days
        evs: list[tuple[str, dict[str, Any]]] = [
            (
                "TaskRequested",
                {
                    "kind": "text",
                    "input": "x" * 40,
                    "priority": "normal",
                    "deadline_ms": ts + 900_000,
                },
            ),
            ("TaskStarted", {"attempt": 1, "worker": "w1"}),
        ]
        attempt = 1
        if rng.random() < 0.1:
            evs += [
                (
                    "TaskRetryScheduled",
                    {
                        "attempt": 1,
                        "delay_ms": 1000,
                        "due_ms": ts + 1000,
                        "error": {"error_class": "RateLimited", "message": "429", "provider": prov},
                    },
                ),
                ("TaskRequeued", {"attempt": 1, "reason": "retry_due"}),
                ("TaskStarted", {"attempt": 2, "worker": "w2"}),
            ]
            attempt = 2
        if rng.random() < 0.05:
            evs.append(
                (
                    "TaskProgress",
                    {"attempt": attempt, "notice": "fallback", "detail": {"provider": prov}},
                )
            )
        evs += [("TaskProgress", {"attempt": attempt, "delta": "chunk " * 8})] * 2
        r = rng.random()
        if r < 0.9:
            evs.append(
                (
                    "TaskSucceeded",
                    {
                        "attempt": attempt,
                        "provider": prov,
                        "model": f"{prov}-{i % 2}",
                        "usage": {
                            "input_tokens": 40,
                            "output_tokens": 200,
                            "cached_tokens": 0,
                            "reasoning_tokens": 0,
                        },
                        "cost_usd": None if i % 50 == 0 else 0.000123,
                        "finish_reason": "stop",
                        "result": {"text": "y" * 200, "images": []},
                        "latency_ms": rng.randint(50, 4000),
                    },
                )
            )
        elif r < 0.97:
            evs.append(
                (
                    "TaskFailed",
                    {
                        "attempt": attempt,
                        "error": {
                            "error_class": "InvalidRequest",
                            "message": "bad",
                            "provider": prov,
                        },
                    },
                )
            )
        else:
            evs.append(("TaskCancelled", {"attempt": attempt, "stage": "running"}))
        for k, (etype, data) in enumerate(evs):
            yield etype, tid, tenant, ts + k * 5, data
        made += len(evs)


async def fill_redis(redis: aioredis.Redis, ns: str, partitions: int, n: int) -> int:
    rng, count = random.Random(7), 0
    pipe = redis.pipeline(transaction=False)
    for etype, tid, tenant, ts, data in task_events(rng, n):
        pipe.xadd(log_key(ns, hash(tid) % partitions), entry_fields(etype, tid, tenant, ts, data))  # type: ignore[arg-type]
        count += 1
        if count % 10_000 == 0:
            await pipe.execute()
    await pipe.execute()
    return count


def fill_archive(root: Path, ns: str, partitions: int, n: int, segment: int = 100_000) -> int:
    rng, count = random.Random(7), 0
    writers = [SegmentWriter(partition_dir(root, ns, p)) for p in range(partitions)]
    seq = [0] * partitions
    for etype, tid, tenant, ts, data in task_events(rng, n):
        p = hash(tid) % partitions
        fields = {
            k: v.decode() if isinstance(v, bytes) else v
            for k, v in entry_fields(etype, tid, tenant, ts, data).items()
        }
        seq[p] += 1
        writers[p].write(f"{T0 // 1000}-{seq[p]}", fields)
        count += 1
        if writers[p].count >= segment:
            writers[p].commit()
            writers[p] = SegmentWriter(partition_dir(root, ns, p))
    for w in writers:
        w.commit() if w.count else w.abort()
    return count


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--source", choices=["redis", "archive"], default="redis")
    ap.add_argument("--partitions", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aiis-bench-"))
    server = EmbeddedRedis(tmp / "redis", appendonly=False)
    url = server.start()
    redis = aioredis.Redis.from_url(url)
    ns, root = "bench", tmp / "archive"
    try:
        t = time.perf_counter()
        if args.source == "redis":
            n = await fill_redis(redis, ns, args.partitions, args.events)
        else:
            n = fill_archive(root, ns, args.partitions, args.events)
        print(f"generated {n:,} events into {args.source} in {time.perf_counter() - t:.1f} s")
        config = ViewConfig.from_settings(args.partitions, 86_400.0, ProjectionSettings())
        store = ShardStore(redis, ns, config)
        t = time.perf_counter()
        applied = await replay(
            store,
            args.partitions,
            list(PROJECTIONS.values()),
            root if args.source == "archive" else None,
        )
        elapsed = time.perf_counter() - t
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"replayed {applied:,} events into {len(PROJECTIONS)} views in {elapsed:.1f} s: "
            f"{applied / elapsed:,.0f} events/s; peak RSS {peak_mb:,.0f} MB"
        )
    finally:
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
