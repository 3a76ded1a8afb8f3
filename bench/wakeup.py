"""What one hop costs on this machine: a Redis round trip back-to-back and after the processes
went idle, and an XADD waking a blocked XREAD in another connection (issue 18's floor).

    python bench/wakeup.py [--samples 300] [--idle-ms 10]

A streamed chat completion crosses about ten such hops before its first token reaches the
caller (gateway → Redis → worker → Redis → worker → provider, then worker → Redis → gateway →
caller); at 100 req/s each process sleeps between them, so the idle figure is the one that
counts. On a VM an idle vCPU halts and every wake-up is a trip through the hypervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime.embedded import EmbeddedRedis
from engine.runtime.workers import run_loop


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, samples: int, idle_s: float) -> None:
    client = aioredis.Redis.from_url(url)
    other = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        for label, gap in (("back-to-back", 0.0), (f"after {idle_s * 1000:.0f} ms idle", idle_s)):
            took = []
            for _ in range(samples):
                t0 = time.perf_counter()
                await client.ping()
                took.append((time.perf_counter() - t0) * 1e6)
                if gap:
                    await asyncio.sleep(gap)
            print(f"PING round trip, {label:>20}: p50 {pct(took, 0.5):6.0f} µs  "
                  f"p90 {pct(took, 0.9):6.0f} µs")  # fmt: skip

        async def reader() -> list[float]:
            woke, last = [], "$"
            for _ in range(samples):
                reply = await other.xread({"wake": last}, block=5000)
                eid, fields = reply[0][1][0]
                woke.append((time.time_ns() // 1000 - int(fields[b"t"])) * 1.0)
                last = eid
            return woke

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.2)
        for _ in range(samples):
            await client.xadd("wake", {"t": str(time.time_ns() // 1000)})
            await asyncio.sleep(idle_s)
        woke = await task
        print(f"XADD → blocked XREAD woken,  {idle_s * 1000:.0f} ms apart: "
              f"p50 {pct(woke, 0.5):6.0f} µs  p90 {pct(woke, 0.9):6.0f} µs")  # fmt: skip
    finally:
        await client.aclose()
        await other.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--idle-ms", type=float, default=10.0)
    args = parser.parse_args()
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="aiis-bench-wakeup-")), appendonly=False)
    url = redis.start()
    try:
        run_loop(measure(url, args.samples, args.idle_ms / 1000))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
