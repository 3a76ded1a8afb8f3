"""Soak: many tasks through the `echo` provider with scheduled archiving; Redis memory plateaus.

    python bench/soak.py [--tasks 500000] [--rate 1000] [--max-seconds 0] [--retention-s 60]
                         [--archive-interval-s 10] [--min-age-s 10] [--sample-s 5]
    python bench/soak.py --measure 20000     # bytes per retained task: log vs kept vs none

Starts an embedded redis-server, one `aiis worker` (echo provider) and one `aiis projections`
(which archives and trims every `AIIS_ARCHIVE_INTERVAL_S`), and submits tasks from this process
with back-pressure (at most `--window` waiting). Samples Redis `used_memory` every `--sample-s`
seconds and prints the series; the plateau starts once a task's whole life — retention, the
archive's min-age and interval, the janitor's minute — has passed (`--warmup-s`, computed when
0), and the ratio last/first-plateau sample says whether memory kept growing. At the end,
`aiis replay --verify` must be clean. `--max-seconds` stops submitting earlier (a shared
machine); the number of tasks that went through is printed.

`--measure N` answers what keeping a finished task readable costs: N tasks finished, then
Redis memory with their events in the log, after archiving (events kept beside each task),
without the kept events (what reading the archive instead would leave), and with the tasks
forgotten.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.runtime.embedded import EmbeddedRedis
from engine.settings import Settings
from projections.archive import archive_log
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig

JANITOR_S = 60  # the worker runs retention once a minute


def env_of(url: str, namespace: str, args: argparse.Namespace, archive: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_PROVIDER": "echo",
        "AIIS_QUEUE_MAX_DEPTH": "10000000",
        "AIIS_TASK_RETENTION_S": str(args.retention_s),
        "AIIS_ARCHIVE_INTERVAL_S": str(args.archive_interval_s),
        "AIIS_PROJ_ARCHIVE_MIN_AGE_S": str(args.min_age_s),
        "AIIS_PROJ_ARCHIVE_DIR": str(archive),
    }


async def used_memory(client: Client) -> int:
    info: Any = await client.store.redis.info("memory")
    return int(info["used_memory"])


async def soak(url: str, args: argparse.Namespace, archive: Path) -> dict[str, str]:
    namespace = "soak"
    env = env_of(url, namespace, args, archive)
    settings = Settings(redis_url=url, namespace=namespace, queue_max_depth=10_000_000)
    client = Client.from_url(url, settings)
    await client.store.prepare()
    cmd = [sys.executable, "-m", "engine"]
    logs = archive.parent
    worker = subprocess.Popen([*cmd, "worker"], env=env, stderr=open(logs / "worker.log", "wb"))  # noqa: ASYNC230, SIM115
    runner = subprocess.Popen(
        [*cmd, "projections"],
        env=env,
        stderr=open(logs / "projections.log", "wb"),  # noqa: ASYNC230, SIM115
    )
    keys = client.store.keys(0)
    queue = keys.queue("normal")
    warmup = args.warmup_s or (
        args.retention_s + args.min_age_s + args.archive_interval_s + JANITOR_S + 30
    )
    samples: list[tuple[float, int, int, int, int]] = []  # t, submitted, used, log, done
    submitted = 0
    t0 = time.monotonic()
    stop_at = t0 + args.max_seconds if args.max_seconds else None

    async def sample() -> None:
        while True:
            r = client.store.redis
            samples.append(
                (
                    time.monotonic() - t0,
                    submitted,
                    await used_memory(client),
                    await r.xlen(keys.log),
                    await r.zcard(keys.done),
                )
            )
            await asyncio.sleep(args.sample_s)

    sampler = asyncio.create_task(sample())
    try:
        while submitted < args.tasks and (stop_at is None or time.monotonic() < stop_at):
            if await client.store.redis.xlen(queue) > args.window:
                await asyncio.sleep(0.05)
                continue
            if args.rate and submitted > args.rate * (time.monotonic() - t0):
                await asyncio.sleep(0.05)
                continue
            n = min(500, args.tasks - submitted)
            await asyncio.gather(*(client.submit(f"soak {submitted + i}") for i in range(n)))
            submitted += n
        while await client.store.redis.xlen(queue) > 0:  # let the last ones finish
            await asyncio.sleep(0.2)
        loaded = time.monotonic() - t0
        await asyncio.sleep(args.sample_s)  # one sample after the load
    finally:
        sampler.cancel()
        worker.terminate()
        runner.terminate()
        worker.wait()
        runner.wait()
    print(f"{submitted:,} tasks in {loaded:.0f} s ({submitted / loaded:,.0f} tasks/s)")
    for name in ("worker", "projections"):
        lines = (logs / f"{name}.log").read_text(errors="replace").splitlines()
        notable = [x for x in lines if "WARNING" in x or "ERROR" in x or "archived" in x]
        print(f"{name}: {len(lines)} log lines; last notable: {notable[-3:]}")
    print(f"{'t (s)':>7} {'submitted':>10} {'used_memory':>12} {'log len':>8} {'done':>8}")
    for t, n, used, log_len, done in samples:
        print(f"{t:7.0f} {n:10,} {used / 1e6:10.1f} MB {log_len:8,} {done:8,}")
    plateau = [s for s in samples if s[0] >= warmup]
    if len(plateau) >= 2:
        first, last = plateau[0], plateau[-1]
        print(
            f"plateau from t={first[0]:.0f} s: first {first[2] / 1e6:.1f} MB, "
            f"last {last[2] / 1e6:.1f} MB, ratio last/first-plateau {last[2] / first[2]:.2f} "
            f"(max {max(s[2] for s in plateau) / 1e6:.1f} MB)"
        )
    else:
        print(f"run shorter than the warm-up ({warmup:.0f} s): no plateau to compare")
    await client.aclose()
    return env


def replay_verify(env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "engine", "replay", "--verify"]
    verify = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    print(f"aiis replay --verify: exit {verify.returncode}: {verify.stdout.strip()[-300:]}")
    return verify.returncode


async def measure(url: str, n: int, archive: Path) -> None:
    """Bytes per finished task: events in the log, kept beside the task, or neither."""
    settings = Settings(redis_url=url, namespace="measure", queue_max_depth=10_000_000)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": "measure",
        "AIIS_PROVIDER": "echo",
        "AIIS_QUEUE_MAX_DEPTH": "10000000",
    }
    client = Client.from_url(url, settings)
    await client.store.prepare()
    redis = client.store.redis
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine", "worker"], env=env, stderr=subprocess.DEVNULL
    )
    keys = client.store.keys(0)
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(client.submit(f"measure task {i}") for i in range(start, start + 1000))
        )
    while await redis.zcard(keys.done) < n:
        await asyncio.sleep(0.1)
    worker.terminate()
    worker.wait()
    await redis.memory_purge()
    config = ViewConfig.from_settings(1, settings.task_retention_s, ProjectionSettings())
    store = ShardStore(redis, "measure", config)
    run = PartitionRunner(store, 0, list(PROJECTIONS.values()), batch=1000)
    while await run.step():
        pass
    views = await used_memory(client)
    await archive_log(
        redis, "measure", 1, archive, list(PROJECTIONS), segment_events=100_000, min_age_ms=0
    )
    kept = await used_memory(client)
    await redis.delete(keys.kept)
    none_kept = await used_memory(client)
    while await client.store.janitor(0, int(time.time() * 1000) + 1):
        pass
    forgotten = await used_memory(client)
    await client.aclose()
    per = {  # minus the state after the janitor forgot every task (views and base remain)
        "events in the log (before archiving)": views - forgotten,
        "events kept beside the task (archived)": kept - forgotten,
        "no events (reading the archive instead)": none_kept - forgotten,
    }
    print(f"{n:,} finished echo tasks; Redis bytes per retained task (record + state + events):")
    for what, total in per.items():
        print(f"  {what:42} {total / n:8,.0f} B")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=500_000)
    ap.add_argument("--max-seconds", type=float, default=0, help="stop submitting after this")
    ap.add_argument("--retention-s", type=float, default=60)
    ap.add_argument("--archive-interval-s", type=float, default=10)
    ap.add_argument("--min-age-s", type=float, default=10)
    ap.add_argument("--sample-s", type=float, default=5)
    ap.add_argument("--warmup-s", type=float, default=0)
    ap.add_argument("--window", type=int, default=20_000, help="tasks waiting at most")
    ap.add_argument(
        "--rate", type=float, default=1000, help="tasks/s submitted at most (0: no limit)"
    )
    ap.add_argument("--measure", type=int, default=0, metavar="N")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "redis").mkdir()
        server = EmbeddedRedis(Path(tmp) / "redis", appendonly=False)
        url = server.start()
        try:
            if args.measure:
                asyncio.run(measure(url, args.measure, Path(tmp) / "archive"))
                return
            code = replay_verify(asyncio.run(soak(url, args, Path(tmp) / "archive")))
        finally:
            server.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
