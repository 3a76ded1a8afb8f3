"""WebSocket fan-out benchmark (DESIGN.md §5): one `aiis gateway` process, N subscribers each
following its own tenant, one dashboard subscriber following every tenant, events appended
straight to the log at a fixed total rate. Clients run in a separate process.

    python bench/fanout.py [--subscribers 2000] [--rate 1000] [--seconds 20] [--charts-events N]

Prints delivery latency p50/p99 (producer XADD → client receive, same host clock), events
missing or duplicated per subscriber, and gateway RSS growth per idle connection.

The dashboard's stats push with its charts: before the run, ``--charts-events`` (200,000)
synthetic task events spread over the last 24 h go to a second partition and an ``aiis
projections`` process folds them; three more clients subscribe to the stats push, one per
charts window (15 min, 1 h, 24 h). Prints the push latency p50/p99 (the snapshot's ``ts``, when
the gateway began it → client receive) over the frames received while events flow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

# run as a script, sys.path[0] is bench/, where providers.py would shadow the providers package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- client process ----------------------------------------------------------------------------


async def clients(url: str, n: int) -> None:
    from websockets.asyncio.client import connect

    received: dict[str, list[str]] = {f"b{i}": [] for i in range(n)}
    dashboard: list[str] = []
    latencies: list[float] = []
    pushes: list[float] = []  # stats push latency (s), while events flow
    flowing = False

    async def stats(window: str) -> None:
        async with connect(url, max_queue=64, ping_interval=None, max_size=2**24) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "stats": window}))
            await ws.recv()
            ready.release()
            async for raw in ws:
                now = time.time()
                msg = orjson.loads(raw)
                if msg.get("op") == "stats" and flowing and msg["stats"]["charts"]:
                    pushes.append(now - msg["stats"]["ts"] / 1000)

    async def follow(tenant: str, sink: list[str], measure: bool) -> None:
        async with connect(url, max_queue=64, ping_interval=None) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "tenant": tenant}))
            await ws.recv()
            ready.release()
            async for raw in ws:
                now = time.time()
                msg = orjson.loads(raw)
                if msg.get("op") != "event":
                    continue
                sink.append(msg["event"]["id"])
                if measure:
                    latencies.append(now - msg["event"]["data"]["sent"])

    ready = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(follow("*", dashboard, False))]
    tasks += [asyncio.create_task(stats(w)) for w in ("15m", "1h", "24h")]
    for i in range(n):
        tasks.append(asyncio.create_task(follow(f"b{i}", received[f"b{i}"], True)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # stay under the listen backlog
    for _ in range(n + 4):
        await ready.acquire()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    assert (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "GO"
    flowing = True
    expected_total = int(await loop.run_in_executor(None, sys.stdin.readline))
    flowing = False
    deadline = time.monotonic() + 30
    while len(dashboard) < expected_total and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        "RESULT "
        + json.dumps(
            {
                "received": received,
                "dashboard": dashboard,
                "latencies": latencies,
                "pushes": pushes,
            },
        ),
        flush=True,
    )


# --- orchestrator ------------------------------------------------------------------------------


async def produce(redis: Any, log_key: str, n: int, rate: int, seconds: float) -> None:
    from engine.core.mapper import entry_fields

    tick = 0.01
    per_tick = max(1, int(rate * tick))
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(per_tick):
                sub = i % n
                data = {"attempt": 1, "delta": "x", "sent": time.time()}
                fields = entry_fields(
                    "TaskProgress", f"task-{sub}", f"b{sub}", int(time.time() * 1000), data
                )
                pipe.xadd(log_key, fields)  # type: ignore[arg-type]
                i += 1
            await pipe.execute()
        tick_end = start + (i // per_tick) * tick
        await asyncio.sleep(max(0.0, tick_end - time.monotonic()))


async def seed_charts(url: str, namespace: str, n: int) -> int:
    """``n`` synthetic task events spread over the last 24 h, into partition 1's log."""
    import random

    from bench.replay import T0, task_events
    from engine.core.keys import PartitionKeys
    from engine.core.mapper import entry_fields
    from engine.runtime.connection import connect

    redis = connect(url)
    key = PartitionKeys(namespace, 1).log
    start = int(time.time() * 1000) - 86_400_000
    scale = 86_400_000 / (n * 34)  # task_events spaces events ≈ 34 ms apart
    count = 0
    async with redis.pipeline(transaction=False) as pipe:
        for etype, tid, tenant, ts, data in task_events(random.Random(7), n):
            pipe.xadd(key, entry_fields(etype, tid, tenant, start + int((ts - T0) * scale), data))  # type: ignore[arg-type]
            count += 1
            if count % 10_000 == 0:
                await pipe.execute()
        await pipe.execute()
    await redis.aclose()
    return count


async def caught_up(url: str, namespace: str, events: int) -> None:
    """Wait until ``aiis projections`` folded partition 1 (the charts view at the log's head)."""
    from engine.core.keys import PartitionKeys
    from engine.runtime.connection import connect
    from projections.keys import ShardKeys

    redis = connect(url)
    head = (await redis.xrevrange(PartitionKeys(namespace, 1).log, count=1))[0][0]
    meta = ShardKeys(namespace, 1, "charts").meta
    while await redis.hget(meta, "ckpt") != head:
        await asyncio.sleep(0.2)
    await redis.aclose()
    print(f"charts history: {events:,} events folded", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000, help="events/s in total")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--charts-events", type=int, default=200_000)
    parser.add_argument("--role", default="main")
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    if args.role == "clients":
        await clients(args.url, args.subscribers)
        return 0

    from engine.core.keys import PartitionKeys
    from engine.runtime.connection import connect
    from engine.runtime.embedded import EmbeddedRedis

    embedded = None
    url = os.environ.get("AIIS_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()), appendonly=False)
        url = embedded.start()
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "AIIS_REDIS_URL": url, "AIIS_NAMESPACE": namespace}
    env |= {
        "AIIS_GATEWAY_PORT": "0",
        "AIIS_GRPC_PORT": "0",
        "AIIS_GATEWAY_TOKENS": "",
        "AIIS_GATEWAY_HOST": "127.0.0.1",
    }
    env["AIIS_PARTITIONS"] = "2"  # partition 1: the chart history; partition 0: the fan-out
    seeded = await seed_charts(url, namespace, args.charts_events)
    projections = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "projections", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "gateway", env=env, stdout=asyncio.subprocess.PIPE
    )
    client_proc = None
    try:
        await caught_up(url, namespace, seeded)
        assert gateway.stdout is not None
        ws_url = None
        while ws_url is None:
            line = (await gateway.stdout.readline()).decode()
            if not line:
                raise RuntimeError("gateway exited")
            found = re.search(r"(ws://\S+/v1/ws)", line)
            ws_url = found[1] if found else None
        await asyncio.sleep(1)
        rss_before = rss_kb(gateway.pid)
        client_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "clients",
            "--url",
            ws_url,
            "--subscribers",
            str(args.subscribers),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**30,
        )
        assert client_proc.stdout is not None and client_proc.stdin is not None
        line = (await client_proc.stdout.readline()).decode()
        assert line.startswith("READY"), line
        await asyncio.sleep(2)
        rss_idle = rss_kb(gateway.pid)
        redis = connect(url)
        log_key = PartitionKeys(namespace, 0).log
        client_proc.stdin.write(b"GO\n")
        await client_proc.stdin.drain()
        t0 = time.monotonic()
        await produce(redis, log_key, args.subscribers, args.rate, args.seconds)
        elapsed = time.monotonic() - t0
        total = int(await redis.xlen(log_key))
        client_proc.stdin.write(f"{total}\n".encode())
        await client_proc.stdin.drain()
        line = (await client_proc.stdout.readline()).decode()
        result = json.loads(line.removeprefix("RESULT "))
        entries = await redis.xrange(log_key)
        expected: dict[str, list[str]] = {}
        for eid, fields in entries:
            expected.setdefault(fields[b"tenant"].decode(), []).append(eid.decode())
        await redis.aclose()
        missing = sum(
            len(set(ids) - set(result["received"].get(t, []))) for t, ids in expected.items()
        )
        dupes = sum(len(r) - len(set(r)) for r in result["received"].values())
        wrong = sum(len(set(r) - set(expected.get(t, []))) for t, r in result["received"].items())
        dash_missing = total - len(set(result["dashboard"]))
        lat = sorted(result["latencies"])
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        conns = args.subscribers + 1
        print(f"gateway pid {gateway.pid}; {conns} WebSocket connections")
        print(f"events: {total} in {elapsed:.1f} s = {total / elapsed:.0f}/s")
        print(f"deliveries measured: {len(lat)} (+ {len(result['dashboard'])} to the dashboard)")
        print(f"latency ms: p50 {p(0.50):.1f}  p99 {p(0.99):.1f}  max {lat[-1] * 1000:.1f}")
        print(
            f"missing {missing}, duplicated {dupes}, misrouted {wrong}, "
            f"dashboard missing {dash_missing}"
        )
        print(
            f"gateway RSS: {rss_before} kB idle-empty, {rss_idle} kB with {conns} idle "
            f"connections -> {(rss_idle - rss_before) / conns:.1f} kB per connection"
        )
        push = sorted(result["pushes"])
        q = lambda x: push[min(len(push) - 1, int(x * len(push)))] * 1000  # noqa: E731
        print(
            f"stats push with charts (15m, 1h, 24h over {seeded:,} events of history): "
            f"{len(push)} frames, ms p50 {q(0.50):.1f}  p99 {q(0.99):.1f}  "
            f"max {push[-1] * 1000:.1f}"
        )
        ok = missing == dupes == wrong == dash_missing == 0 and p(0.99) < 100 and q(0.99) < 100
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for proc in (client_proc, gateway, projections):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
