"""Intake admission against ``Client.submit``, in one run (issue 17).

    python bench/intake.py [--tasks 20000] [--concurrency 512]

Starts an embedded redis-server (AOF on, as `aiis serve` does) and one `aiis worker` process
(echo provider), then, each in its own namespace:
  1. submit: this process submits the tasks through `engine.Client.submit` (``--concurrency``
     in flight, group-committed);
  2. intake: one `aiis intake` process is started and left idle, then this process XADDs the
     same tasks (plain entries, pipelined) to the intake stream.
Prints, for each, the admission rate (tasks/s until the last TaskRequested is written and, for
the intake, its entry acknowledged), the Redis commands per task until every task is terminal
(INFO commandstats delta: producer + admission + worker), and the intake's ratio and extra
commands per task (goals: >= 50 %, <= 3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.core.keys import INTAKE_GROUP, PartitionKeys, intake_key
from engine.runtime.embedded import EmbeddedRedis
from engine.settings import Settings

SKIP = {"cmdstat_info", "cmdstat_config", "cmdstat_ping", "cmdstat_zcard", "cmdstat_xinfo"}


def command_calls(r: redis.Redis) -> int:
    stats: Any = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in SKIP)


def engine_process(url: str, namespace: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_PROVIDER": "echo",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args], env=env, stderr=subprocess.DEVNULL
    )


def wait_done(r: redis.Redis, namespace: str, n: int, timeout: float = 600) -> None:
    done = PartitionKeys(namespace, 0).done
    deadline = time.monotonic() + timeout
    while r.zcard(done) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {r.zcard(done)} of {n} tasks finished")
        time.sleep(0.02)


async def submit_phase(url: str, namespace: str, n: int, concurrency: int) -> float:
    client = Client.from_url(url, Settings(redis_url=url, namespace=namespace))
    await client.store.prepare()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.submit(f"task {i}")

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - began
    await client.aclose()
    return took


def intake_phase(r: redis.Redis, namespace: str, n: int) -> float:
    stream = intake_key(namespace)
    began = time.perf_counter()
    last = b""
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(stream, {"task": orjson.dumps({"input": f"task {i}"})})
        last = pipe.execute()[-1]
    while True:
        groups: Any = r.xinfo_groups(stream)
        g = next(g for g in groups if g["name"] == INTAKE_GROUP.encode())
        if g["last-delivered-id"] == last and int(g["pending"]) == 0:
            return time.perf_counter() - began
        time.sleep(0.005)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=512)
    args = ap.parse_args()
    n = args.tasks
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        r = redis.Redis.from_url(url)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            # 1. Client.submit
            ns1 = f"b{uuid.uuid4().hex[:8]}"
            procs.append(engine_process(url, ns1, "worker", "--processes", "1"))
            time.sleep(2)
            r.config_resetstat()
            before = command_calls(r)
            took_submit = asyncio.run(submit_phase(url, ns1, n, args.concurrency))
            wait_done(r, ns1, n)
            cmds_submit = (command_calls(r) - before) / n
            procs.pop().terminate()
            # 2. the intake
            ns2 = f"b{uuid.uuid4().hex[:8]}"
            procs.append(engine_process(url, ns2, "worker", "--processes", "1"))
            procs.append(engine_process(url, ns2, "intake"))
            while not r.exists(intake_key(ns2)):
                time.sleep(0.05)
            time.sleep(2)
            r.config_resetstat()
            before = command_calls(r)
            took_intake = intake_phase(r, ns2, n)
            wait_done(r, ns2, n)
            cmds_intake = (command_calls(r) - before) / n
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
            server.stop()
    rate_submit, rate_intake = n / took_submit, n / took_intake
    print(f"tasks: {n}")
    print(f"Client.submit: {rate_submit:,.0f} tasks/s, {cmds_submit:.2f} Redis commands/task")
    print(f"intake:        {rate_intake:,.0f} tasks/s, {cmds_intake:.2f} Redis commands/task")
    print(
        f"intake / submit: {rate_intake / rate_submit:.0%} of the rate (goal >= 50 %), "
        f"{cmds_intake - cmds_submit:+.2f} commands per task (goal <= 3)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
