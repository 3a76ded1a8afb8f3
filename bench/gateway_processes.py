"""Unary gRPC ``SubmitTask`` against ``aiis gateway --processes 1`` and ``--processes 2``, side
by side in one run (issue 18: two processes ≥ 1.6× one).

    python bench/gateway_processes.py [--tasks 20000] [--concurrency 50] [--rounds 3]

Starts an embedded redis-server, then for each process count a real ``aiis gateway
--processes N`` (open mode on loopback, no workers: tasks only queue) and, per round, the
unary calls of ``bench/grpc_submit.py`` from h2load (nghttp2's C load generator: the client
costs little CPU; one connection per caller, which the kernel spreads over the processes) and
from a Python grpc.aio client (one channel per caller). Prints the median rate per mode and
process count, and the ratio of two processes to one. On a 2-core machine redis-server and the
load generator share the cores with the gateways: the ratio shows what a second process buys
there, not on a larger machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_submit import (  # type: ignore[import-not-found]
    MAX_DEPTH,
    ROOT,
    h2load,
    h2load_body,
    queued,
    unary_py,
    wait_serving,
)
from openai_compat import children_of, proc_cpu  # type: ignore[import-not-found]

from engine.client import Client
from engine.runtime.embedded import EmbeddedRedis, free_port
from engine.settings import Settings


def start_gateway(
    redis_url: str, namespace: str, port: int, processes: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIIS_REDIS_URL": redis_url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_QUEUE_MAX_DEPTH": str(MAX_DEPTH),
        "AIIS_GATEWAY_TOKENS": "",  # open mode: loopback only, every caller an operator
        "AIIS_GATEWAY_PORT": "0",
        "AIIS_GRPC_HOST": "127.0.0.1",
        "AIIS_GRPC_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AIIS_GATEWAY_TOKENS_FILE", None)
    argv = [sys.executable, "-m", "engine", "gateway", "--processes", str(processes)]
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


async def all_serving(target: str, proc: subprocess.Popen[bytes], processes: int) -> None:
    """SERVING on the port (the first child up), then a grace for the other children: which
    child answers a health check is not visible from outside."""
    await wait_serving(target, proc)
    await asyncio.sleep(1.0 + 0.5 * processes)


def cpu_now(gateway: subprocess.Popen[bytes], redis: EmbeddedRedis) -> dict[str, float]:
    """CPU seconds so far: the gateway's processes, redis-server, the load generator (this
    script and the h2load runs it waited for)."""
    assert redis.process is not None
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load, once reaped
    return {
        "gateway": sum(proc_cpu(p) for p in (gateway.pid, *children_of(gateway.pid))),
        "redis": proc_cpu(redis.process.pid),
        "client": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
    }


Rates = dict[str, dict[int, list[float]]]
Cores = dict[str, dict[int, list[dict[str, float]]]]


async def run(args: argparse.Namespace) -> tuple[Rates, Cores]:
    n, conc = args.tasks, args.concurrency
    has_h2load = shutil.which("h2load") is not None
    rates: Rates = {"unary/h2load": {}, "unary/py": {}}
    cores: Cores = {"unary/h2load": {}, "unary/py": {}}
    with tempfile.TemporaryDirectory() as tmp:
        body = h2load_body(Path(tmp))
        redis = EmbeddedRedis(Path(tmp), appendonly=False)
        redis.start()
        try:
            for processes in args.processes:
                namespace = f"bp{uuid.uuid4().hex[:8]}"
                port = free_port()
                target = f"127.0.0.1:{port}"
                gateway = start_gateway(redis.url, namespace, port, processes)
                settings = Settings(namespace=namespace, redis_url=redis.url)
                view = Client.from_url(redis.url, settings)
                try:
                    await all_serving(target, gateway, processes)
                    modes: dict[str, Callable[[], Awaitable[None]]] = {
                        "unary/py": functools.partial(unary_py, target, n, conc)
                    }
                    if has_h2load:
                        modes["unary/h2load"] = functools.partial(
                            h2load, target, "SubmitTask", n, conc, body
                        )
                    for _ in range(args.rounds):
                        for mode, phase in modes.items():
                            before = await queued(view)
                            cpu0 = cpu_now(gateway, redis)
                            t0 = time.perf_counter()
                            await phase()
                            took = time.perf_counter() - t0
                            cpu1 = cpu_now(gateway, redis)
                            made = await queued(view) - before
                            if made != n:
                                raise SystemExit(f"{mode}: {made} tasks made, not {n}")
                            rates[mode].setdefault(processes, []).append(n / took)
                            busy = {k: (cpu1[k] - cpu0[k]) / took for k in cpu0}
                            cores[mode].setdefault(processes, []).append(busy)
                finally:
                    await view.aclose()
                    gateway.send_signal(signal.SIGTERM)
                    gateway.wait(timeout=60)
        finally:
            redis.stop()
    if not has_h2load:
        print("unary/h2load: skipped (h2load not installed: apt-get install nghttp2-client)")
    return rates, cores


def report(args: argparse.Namespace, rates: Rates, cores: Cores) -> None:
    print(
        f"{args.tasks} unary SubmitTask calls, {args.concurrency} callers, median of "
        f"{args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    for mode, by_count in rates.items():
        if not by_count:
            continue
        medians = {count: statistics.median(r) for count, r in by_count.items()}
        cells = "  ".join(f"{c} process(es): {m:8,.0f} tasks/s" for c, m in medians.items())
        ratio = ""
        if 1 in medians and 2 in medians:
            ratio = f"  2 vs 1: {medians[2] / medians[1]:.2f}x"
        print(f"{mode:13s} {cells}{ratio}")
        for count, runs in cores[mode].items():
            busy = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            total = sum(busy.values())
            parts = ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
            line = f"{'':13s} {count} process(es): cores busy {parts}; total {total:.2f}"
            if count == 1:
                # the same CPU per task on all the cores: the most any process count can give
                line += f"; ceiling on {os.cpu_count()} cores: {(os.cpu_count() or 1) / total:.2f}x"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2]
    )
    args = parser.parse_args()
    report(args, *asyncio.run(run(args)))


if __name__ == "__main__":
    main()
