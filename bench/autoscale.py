"""A step load (idle → 5,000 tasks at once → idle) with a 200 ms provider, through an autoscaled
pool (`aiis worker --autoscale MIN:MAX`) and, in the same run, a fixed pool of MAX processes.

    python bench/autoscale.py [--tasks 5000] [--min 1] [--max 4] [--concurrency 64]

Prints time to drain, peak pool size, how long the pool took to grow to its peak and to shrink
back to MIN after the queue drained.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.runtime.embedded import EmbeddedRedis
from engine.settings import Settings


def children(pid: int) -> int:
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        n += len((task / "children").read_text().split())
    return n


async def run(url: str, args: argparse.Namespace, autoscale: bool) -> dict[str, float]:
    namespace = "auto" if autoscale else "fixed"
    settings = Settings(redis_url=url, namespace=namespace, queue_max_depth=1_000_000)
    env = {
        **os.environ,
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_PROVIDER": "scripted",
        "AIIS_AUTOSCALE_IDLE_S": str(args.idle),
    }
    mode = (
        ["--autoscale", f"{args.min}:{args.max}"] if autoscale else ["--processes", str(args.max)]
    )
    argv = [sys.executable, "-m", "engine", "worker", *mode, "--concurrency", str(args.concurrency)]
    pool = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    sizes: list[tuple[float, int]] = []
    try:
        async with Client.from_url(url, settings) as client:
            await asyncio.sleep(2.0)  # idle
            t0 = time.monotonic()
            params = {"script": ["sleep:0.2"]}
            await asyncio.gather(
                *(client.submit(f"t{i}", params=params) for i in range(args.tasks))
            )
            done_keys = [k.done for k in client.store.partitions]
            drained = None
            while True:
                now = time.monotonic() - t0
                sizes.append((now, children(pool.pid)))
                if drained is None:
                    finished = sum([await client.store.redis.zcard(k) for k in done_keys])
                    if finished >= args.tasks:
                        drained = now
                if drained is not None and (not autoscale or sizes[-1][1] <= args.min):
                    break
                if now > args.timeout:
                    break
                await asyncio.sleep(0.1)
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(60)
    peak = max(n for _, n in sizes)
    grew = next(t for t, n in sizes if n == peak)
    shrunk = sizes[-1][0] - (drained or 0.0) if autoscale else 0.0
    return {"drain": drained or float("nan"), "peak": peak, "grew": grew, "shrunk": shrunk}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--idle", type=float, default=5.0, help="AIIS_AUTOSCALE_IDLE_S")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        try:
            auto = asyncio.run(run(url, args, autoscale=True))
            fixed = asyncio.run(run(url, args, autoscale=False))
        finally:
            server.stop()
    print(
        f"step load: {args.tasks} tasks at once, provider 200 ms, concurrency "
        f"{args.concurrency}/process, {os.cpu_count()} cores, idle-to-shrink {args.idle}s"
    )
    print(f"{'pool':<22}{'drain s':>9}{'peak':>6}{'grow s':>8}{'shrink s':>10}")
    print(
        f"{f'autoscale {args.min}:{args.max}':<22}{auto['drain']:>9.1f}{auto['peak']:>6.0f}"
        f"{auto['grew']:>8.1f}{auto['shrunk']:>10.1f}"
    )
    print(f"{f'fixed {args.max}':<22}{fixed['drain']:>9.1f}{fixed['peak']:>6.0f}{'-':>8}{'-':>10}")
    print(f"autoscaled drain / fixed drain: {auto['drain'] / fixed['drain']:.2f}")


if __name__ == "__main__":
    main()
