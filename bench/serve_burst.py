"""A burst through `aiis serve` as a newcomer runs it (sandbox, two workers), in tasks/s.

    python bench/serve_burst.py [--tasks 1000] [--workers 2] [--concurrency N] [--env K=V ...]

Starts `aiis serve` in a temporary data directory (free ports, no provider key: the loopback
sandbox), submits ``--tasks`` text tasks at once, waits for every terminal event, prints the
rate from the first submit to the last terminal event and the outcome counts, then stops it
with SIGINT. ``--env`` passes settings through (e.g. ``AIIS_GEMINI_RPM=0``) to compare
defaults; ``--latency S`` runs the sandbox with an answer latency, as real providers have.
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
from collections import Counter
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.core import mapper
from engine.core.events import TERMINAL_EVENTS
from engine.runtime.embedded import free_port
from engine.settings import Settings


async def burst(url: str, tasks: int) -> tuple[float, Counter[str]]:
    async with Client.from_url(url, Settings(redis_url=url)) as client:
        start = time.monotonic()
        ids = [await client.submit(f"burst task {i}") for i in range(tasks)]
        ends: dict[str, str] = {}
        while len(ends) < len(ids):
            for keys in client.store.partitions:
                for eid, fields in await client.store.redis.xrange(keys.log):
                    env = mapper.envelope(eid, fields)
                    if env["type"] in TERMINAL_EVENTS:
                        ends[env["task_id"]] = env["type"]
            await asyncio.sleep(0.2)
        return time.monotonic() - start, Counter(ends.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="run the sandbox with this answer latency"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIIS_") and not k.endswith(("_API_KEY", "_ACCESS_KEY"))
        }
        env.update(
            AIIS_DATA_DIR=str(Path(tmp) / "data"),
            AIIS_GATEWAY_PORT=str(free_port()),
            AIIS_GRPC_PORT=str(free_port()),
            PYTHONPATH=str(ROOT),
        )
        env.update(dict(item.split("=", 1) for item in args.env))
        sandbox = None
        if args.latency:  # our own sandbox (serve starts none when AIIS_SANDBOX_URL is set)
            port = free_port()
            argv = [sys.executable, "-m", "providers.sandbox", "--port", str(port)]
            sandbox = subprocess.Popen(
                [*argv, "--latency", str(args.latency)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            env["AIIS_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "engine", "serve", "--workers", str(args.workers)]
        if args.concurrency:
            argv += ["--concurrency", str(args.concurrency)]
        serve = subprocess.Popen(
            argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            info = Path(tmp) / "data" / "redis.json"
            while not info.exists():
                time.sleep(0.1)
            url = orjson.loads(info.read_bytes())["url"]
            time.sleep(3)  # the workers connect
            seconds, outcomes = asyncio.run(burst(url, args.tasks))
        finally:
            serve.send_signal(signal.SIGINT)
            serve.wait(120)
            if sandbox is not None:
                sandbox.terminate()
                sandbox.wait(30)
    print(
        f"{args.tasks} tasks, {args.workers} workers, concurrency "
        f"{args.concurrency or 'default'}, sandbox latency {args.latency} s, "
        f"env {args.env or '-'}: {seconds:.1f} s, "
        f"{args.tasks / seconds:.0f} tasks/s, {dict(outcomes)}"
    )


if __name__ == "__main__":
    main()
