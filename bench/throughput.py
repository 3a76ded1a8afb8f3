"""Engine throughput against the ceiling of a bare redis-py loop, in one run.

    python bench/throughput.py [--tasks 20000] [--concurrency 512] [--tracing]

Starts an embedded redis-server (AOF on, as `aiis serve` does), then measures:
  1. bare:    a producer process pipelining XADD, a consumer process doing XREADGROUP +
              pipelined XADD (result) + XACK — the minimum per task, no guarantees;
  2. engine:  this process submitting through `engine.Client`, one `aiis worker` process
              (echo provider); then the same with two worker processes.
With ``--tracing``: also one worker beside an ``aiis ops`` process, with tracing off and then
on (admission spans in this process, the task spans built by ops, both exported over OTLP/HTTP
to a loopback sink), and the ratio of the two (issue 19: tracing costs <= 10 %).
Prints tasks/s, Redis commands per task (INFO commandstats deltas), submit→terminal latency
p50/p99 (from event timestamps), the workers' peak RSS, and the ratio to the bare ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.operations import tracing
from engine.runtime.embedded import EmbeddedRedis
from engine.settings import Settings

BATCH = 500


def cluster_nodes(url: str) -> list[redis.Redis]:
    """A client per master of the cluster ``url`` belongs to (commandstats are per node)."""
    seed = redis.Redis.from_url(url)
    nodes: Any = seed.execute_command("CLUSTER", "NODES")
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "master" in parts[2]:
            host, port = parts[1].split("@")[0].rsplit(":", 1)
            out.append(redis.Redis(host=host, port=int(port)))
    return out


def reset_stats(r: redis.Redis) -> None:
    r.config_resetstat()


def command_calls(r: redis.Redis) -> int:
    stats: Any = r.info("commandstats")
    skip = {"cmdstat_info", "cmdstat_config", "cmdstat_ping", "cmdstat_zcard", "cmdstat_xlen"}
    return sum(v["calls"] for k, v in stats.items() if k not in skip)


# --- bare loop -------------------------------------------------------------------------------


def bare_producer(url: str, n: int) -> None:
    r = redis.Redis.from_url(url)
    for start in range(0, n, BATCH):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + BATCH)):
            pipe.xadd("bare:q", {"t": str(i), "ts": str(time.time())})
        pipe.execute()


def bare_consumer(url: str, n: int) -> None:
    r = redis.Redis.from_url(url)
    done = 0
    while done < n:
        reply: Any = r.xreadgroup("g", "c", {"bare:q": ">"}, count=BATCH, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        pipe = r.pipeline(transaction=False)
        for _, fields in entries:
            pipe.xadd("bare:done", {"t": fields[b"t"], "ts": fields[b"ts"]})
        pipe.xack("bare:q", "g", *[eid for eid, _ in entries])
        pipe.execute()
        done += len(entries)


def run_bare(url: str, n: int) -> dict[str, float]:
    r = redis.Redis.from_url(url)
    r.delete("bare:q", "bare:done")
    r.xgroup_create("bare:q", "g", id="0", mkstream=True)
    reset_stats(r)
    me = [sys.executable, __file__, "--url", url, "--tasks", str(n)]
    t0 = time.perf_counter()
    consumer = subprocess.Popen([*me, "--role", "bare-consumer"])
    producer = subprocess.Popen([*me, "--role", "bare-producer"])
    producer.wait()
    consumer.wait()
    elapsed = time.perf_counter() - t0
    calls = command_calls(r)
    return {"tasks_s": n / elapsed, "cmds": calls / n, "elapsed": elapsed}


# --- engine ----------------------------------------------------------------------------------


def rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def run_engine(
    url: str,
    n: int,
    workers: int,
    concurrency: int,
    *,
    partitions: int = 1,
    cluster: bool = False,
    namespace: str | None = None,
    ops: bool = False,
    tracing: bool = False,
) -> dict[str, float]:
    """N tasks through `workers` worker processes; returns tasks/s, cmds/task, latency, RSS."""
    namespace = namespace or f"bench{workers}"
    settings = Settings(
        redis_url=url,
        namespace=namespace,
        queue_max_depth=10_000_000,
        partitions=partitions,
        redis_cluster=cluster,
        tracing=tracing,
    )
    env = {
        **os.environ,
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_PROVIDER": "echo",
        "AIIS_QUEUE_MAX_DEPTH": "10000000",
        "AIIS_PARTITIONS": str(partitions),
        "AIIS_REDIS_CLUSTER": "true" if cluster else "false",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--concurrency", str(concurrency)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    if ops:
        traced = {"AIIS_TRACING": "1" if tracing else "0"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "engine", "ops"],
                env={**env, **traced},
                stderr=subprocess.DEVNULL,
            )
        )
    client = Client.from_url(url, settings)
    await client.store.prepare()
    await asyncio.sleep(1.5)  # let the workers connect
    nodes = cluster_nodes(url) if cluster else [redis.Redis.from_url(url)]
    for node in nodes:
        reset_stats(node)
    all_keys = client.store.partitions
    t0 = time.perf_counter()
    for start in range(0, n, 2000):
        batch = range(start, min(n, start + 2000))
        await asyncio.gather(*(client.submit(f"task {i}") for i in batch))
    submitted = time.perf_counter() - t0
    while sum([await client.store.redis.zcard(k.done) for k in all_keys]) < n:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    calls = sum(command_calls(node) for node in nodes)
    peak = max(rss_peak_mb(p.pid) for p in procs)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    requested: dict[bytes, int] = {}
    latencies = []
    for keys in all_keys:
        cursor = "-"
        while True:
            rows: Any = await client.store.redis.xrange(keys.log, cursor, "+", count=10_000)
            for _, f in rows:
                if f[b"type"] == b"TaskRequested":
                    requested[f[b"task"]] = int(f[b"ts"])
                elif f[b"type"] == b"TaskSucceeded":
                    latencies.append(int(f[b"ts"]) - requested[f[b"task"]])
            if len(rows) < 10_000:
                break
            cursor = "(" + rows[-1][0].decode()
    await client.aclose()
    q = statistics.quantiles(latencies, n=100)
    return {
        "tasks_s": n / elapsed,
        "submit_s": n / submitted,
        "cmds": calls / n,
        "p50": q[49],
        "p99": q[98],
        "rss": peak,
        "elapsed": elapsed,
    }


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts and drops spans (counts the requests)."""

    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).received += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def otlp_sink() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--role", default="main")
    parser.add_argument("--url")
    parser.add_argument("--tracing", action="store_true", help="also measure tracing's cost")
    parser.add_argument(
        "--sample",
        type=float,
        default=1.0,
        help="with --tracing: the share of traces recorded (OTEL_TRACES_SAMPLER "
        "parentbased_traceidratio); 1 = every task",
    )
    args = parser.parse_args()
    if args.role == "bare-producer":
        return bare_producer(args.url, args.tasks)
    if args.role == "bare-consumer":
        return bare_consumer(args.url, args.tasks)

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        try:
            n = args.tasks
            bare = run_bare(url, n)
            one = asyncio.run(run_engine(url, n, 1, args.concurrency))
            two = asyncio.run(run_engine(url, n, 2, args.concurrency))
            traced: dict[str, dict[str, float]] = {}
            if args.tracing:
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_sink()
                os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
                os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(args.sample)
                for on in (False, True):
                    if on:  # this process's admission spans (one SDK provider per process)
                        tracing.configure(Settings(tracing=True), "bench")
                    traced["on" if on else "off"] = asyncio.run(
                        run_engine(
                            url,
                            n,
                            1,
                            args.concurrency,
                            namespace=f"bench-ops-{int(on)}",
                            ops=True,
                            tracing=on,
                        )
                    )
        finally:
            server.stop()
    cores = os.cpu_count()
    print(f"N = {n} tasks, echo provider, embedded redis-server 6.2 (AOF everysec), {cores} cores")
    head = ("tasks/s", "cmds/task", "p50 ms", "p99 ms", "peak RSS", "vs bare")
    print(f"{'':<22}" + "".join(f"{h:>10}" for h in head))
    print(
        f"{'bare redis-py loop':<22}{bare['tasks_s']:>10.0f}{bare['cmds']:>10.2f}"
        + f"{'-':>10}" * 3
        + f"{'1.00':>10}"
    )
    for label, r in (("engine, 1 worker", one), ("engine, 2 workers", two)):
        print(
            f"{label:<22}{r['tasks_s']:>10.0f}{r['cmds']:>10.2f}{r['p50']:>10.0f}{r['p99']:>10.0f}"
            f"{r['rss']:>8.0f}MB{r['tasks_s'] / bare['tasks_s']:>10.2f}"
        )
    if traced:
        for label, r in (("1 worker + ops", traced["off"]), ("  ... tracing on", traced["on"])):
            print(
                f"{label:<22}{r['tasks_s']:>10.0f}{r['cmds']:>10.2f}{r['p50']:>10.0f}"
                f"{r['p99']:>10.0f}{r['rss']:>8.0f}MB{r['tasks_s'] / bare['tasks_s']:>10.2f}"
            )
        cost = 1 - traced["on"]["tasks_s"] / traced["off"]["tasks_s"]
        print(
            f"tracing on ({args.sample:.0%} of tasks sampled): "
            f"{traced['on']['tasks_s'] / traced['off']['tasks_s']:.2f}x the rate with it off "
            f"({cost:+.1%} cost; goal <= 10 %); OTLP requests received: {_Sink.received}"
        )
    print(f"(engine submit rate alone: {one['submit_s']:.0f} tasks/s through engine.Client)")


if __name__ == "__main__":
    main()
