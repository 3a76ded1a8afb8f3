"""What the dashboard's charts add to a stats push: the series of each window read and merged
(``projections.series``) over a day of history, against ``projections.stats.gather`` (what every
push read before) and ``projections.dashboard.read`` (what it reads now).

    python bench/charts_push.py [--events 200000] [--reads 20]

Seeds ``--events`` synthetic task events spread over the last 24 h (as ``bench/fanout.py``
does) into an embedded redis-server, replays them into every view, then times ``--reads``
reads of each window, of ``gather`` and of the push's read; prints the median and the max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fanout import seed_charts
from engine.runtime.connection import connect
from engine.runtime.embedded import EmbeddedRedis
from projections import dashboard
from projections.registry import PROJECTIONS
from projections.replay import replay
from projections.series import WINDOWS, read, series
from projections.settings import ProjectionSettings
from projections.stats import gather
from projections.storage import ShardStore
from projections.view import ViewConfig


async def timed(label: str, reads: int, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run`` ``reads`` times; print the median and the maximum in ms."""
    times = []
    for _ in range(reads):
        t = time.perf_counter()
        await run()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{label}: median {times[len(times) // 2]:.1f} ms, max {times[-1]:.1f}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--reads", type=int, default=20)
    args = ap.parse_args()
    server = EmbeddedRedis(Path(tempfile.mkdtemp()), appendonly=False)
    url = server.start()
    try:
        n = await seed_charts(url, "bench", args.events)
        redis = connect(url)
        config = ViewConfig.from_settings(2, 86_400.0, ProjectionSettings())
        store = ShardStore(redis, "bench", config)
        await replay(store, 2, list(PROJECTIONS.values()), None)
        print(f"{n:,} events over the last 24 h folded into every view")
        for window in WINDOWS:

            async def charts_read(window: str = window) -> None:
                now = int(time.time() * 1000)
                series(await read(store, 2, window, now), window, now)

            await timed(f"charts {window}", args.reads, charts_read)

        async def stats_gather() -> None:
            day = dt.datetime.now(dt.UTC)
            await gather(store, 2, int(day.timestamp() * 1000), day.date().isoformat())

        async def push_read() -> None:
            day = dt.datetime.now(dt.UTC)
            await dashboard.read(store, 2, int(day.timestamp() * 1000), day.date().isoformat())

        await timed("stats gather", args.reads, stats_gather)
        await timed("push read (dashboard)", args.reads, push_read)
        await redis.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
