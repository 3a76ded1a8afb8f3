"""SubmitTask over gRPC against one gRPC server process, beside the same number of tasks
submitted by the Python ``Client`` straight to Redis, in one run (DESIGN.md §5: measured here,
never asserted in tests).

    python bench/grpc_submit.py [--tasks 20000] [--concurrency 50] [--channels 50]

Starts an embedded redis-server and ``python -m gateway.grpc`` in a subprocess (open mode on
loopback, no workers: tasks only queue), then runs ``--concurrency`` concurrent callers, each
submitting one task at a time (unary calls spread over ``--channels`` channels). The direct
run has the same number of concurrent callers on one ``Client``. Prints tasks/s of both, the
ratio (goal ≥ 50 %) and the gRPC call latency percentiles. For scale it also measures the
floor of grpc.aio itself: the same calls against a server whose handler does nothing
(``--serve-noop PORT`` runs that server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.embedded import EmbeddedRedis, free_port
from engine.settings import Settings
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.gen import tasks_pb2_grpc

MAX_DEPTH = 10_000_000


def start_server(redis_url: str, namespace: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AIIS_REDIS_URL": redis_url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_QUEUE_MAX_DEPTH": str(MAX_DEPTH),
        "AIIS_GATEWAY_TOKENS": "",  # open mode: loopback only, every caller an operator
        "AIIS_GRPC_HOST": "127.0.0.1",
        "AIIS_GRPC_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AIIS_GATEWAY_TOKENS_FILE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.grpc"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
    )


class NoopService(tasks_pb2_grpc.TaskServiceServicer):
    async def SubmitTask(self, request: object, context: object) -> pb.SubmitTaskResponse:
        return pb.SubmitTaskResponse(task_id="0" * 32)


async def serve_noop(port: int) -> None:
    from grpc_health.v1 import health

    server = grpc.aio.server()
    tasks_pb2_grpc.add_TaskServiceServicer_to_server(NoopService(), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checks.set("aiis.v1.TaskService", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def start_noop(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--serve-noop", str(port)], cwd=ROOT)


async def wait_serving(target: str, proc: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the gRPC server exited with {proc.returncode}")
            try:
                request = health_pb2.HealthCheckRequest(service="aiis.v1.TaskService")
                reply = await health.Check(request, timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the gRPC server did not become SERVING within 30 s")
            await asyncio.sleep(0.1)


async def run_grpc(target: str, tasks: int, concurrency: int, channels: int) -> list[float]:
    """Latencies (s) of ``tasks`` SubmitTask calls made by ``concurrency`` callers."""
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [tasks_pb2_grpc.TaskServiceStub(c) for c in opened]
    request = pb.SubmitTaskRequest(prompt="benchmark prompt", priority=pb.PRIORITY_NORMAL)
    latencies: list[float] = []
    left = tasks

    async def caller(i: int) -> None:
        nonlocal left
        stub = stubs[i % channels]
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await stub.SubmitTask(request)
            latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    finally:
        for c in opened:
            await c.close()
    return latencies


async def run_direct(client: Client, tasks: int, concurrency: int) -> None:
    left = tasks

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.submit("benchmark prompt")

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp), appendonly=False)
        redis.start()
        port = free_port()
        grpc_ns, direct_ns = f"bg{uuid.uuid4().hex[:8]}", f"bd{uuid.uuid4().hex[:8]}"
        server = start_server(redis.url, grpc_ns, port)
        target = f"127.0.0.1:{port}"
        settings = Settings(namespace=direct_ns, redis_url=redis.url, queue_max_depth=MAX_DEPTH)
        client = Client.from_url(redis.url, settings)
        try:
            await wait_serving(target, server)
            await client.store.prepare()
            # warm-up: connections, script loading, JIT-less but cache-warm paths
            await run_grpc(target, 500, args.concurrency, args.channels)
            await run_direct(client, 500, args.concurrency)

            t0 = time.perf_counter()
            latencies = await run_grpc(target, args.tasks, args.concurrency, args.channels)
            grpc_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            await run_direct(client, args.tasks, args.concurrency)
            direct_s = time.perf_counter() - t0
        finally:
            await client.aclose()
            server.terminate()
            server.wait(15)
            redis.stop()
    noop_port = free_port()
    noop = start_noop(noop_port)
    try:
        noop_target = f"127.0.0.1:{noop_port}"
        await wait_serving(noop_target, noop)
        await run_grpc(noop_target, 500, args.concurrency, args.channels)
        t0 = time.perf_counter()
        await run_grpc(noop_target, args.tasks, args.concurrency, args.channels)
        noop_s = time.perf_counter() - t0
    finally:
        noop.terminate()
        noop.wait(15)
    grpc_rate, direct_rate = args.tasks / grpc_s, args.tasks / direct_s
    noop_rate = args.tasks / noop_s
    cuts = statistics.quantiles(latencies, n=100)
    print(f"tasks per run: {args.tasks}, callers: {args.concurrency}, channels: {args.channels}")
    print(f"gRPC SubmitTask (one server process): {grpc_rate:10,.0f} tasks/s")
    print(f"Python Client straight to Redis:      {direct_rate:10,.0f} tasks/s")
    print(f"grpc.aio floor (handler does nothing): {noop_rate:9,.0f} calls/s")
    print(f"ratio gRPC / direct:                  {grpc_rate / direct_rate:10.1%}  (goal ≥ 50 %)")
    print(f"ratio gRPC / grpc.aio floor:          {grpc_rate / noop_rate:10.1%}")
    print(
        f"gRPC call latency: p50 {cuts[49] * 1000:.2f} ms, p99 {cuts[98] * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument(
        "--serve-noop", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS
    )
    parsed = parser.parse_args()
    if parsed.serve_noop is not None:
        asyncio.run(serve_noop(parsed.serve_noop))
    else:
        asyncio.run(main(parsed))
