"""SubmitTask over gRPC against ONE gateway process, beside the same number of tasks submitted
by the Python ``Client`` straight to Redis, in one run (DESIGN.md §5: measured here, never
asserted in tests).

    python bench/grpc_submit.py [--tasks 20000] [--concurrency 50] [--rounds 3] [--batch 100]

Starts an embedded redis-server and ``python -m gateway.grpc`` in a subprocess (open mode on
loopback, no workers: tasks only queue). Each round runs, with ``--concurrency`` concurrent
callers or streams each time:

- ``unary/py``     unary SubmitTask calls from a Python grpc.aio client (one call at a time per
                   caller, one channel per caller);
- ``unary/h2load`` the same unary calls from h2load (nghttp2's C load generator speaking gRPC
                   frames; one connection per caller), so the client costs little CPU and the
                   figure shows the gateway's capacity. Skipped, saying so, without ``h2load``
                   (Debian: ``apt-get install nghttp2-client``);
- ``stream xN/py`` the SubmitTasks bidi stream: one stream per caller, each carrying its share
                   of the tasks in messages of N tasks (``--batch``; and N = 1, one task per
                   message, so the per-message figure stays visible), replies read as they come
                   (a Python grpc.aio client);
- ``stream xN/h2load`` the same streams from h2load (each request body is the stream's share of
                   SubmitTasksRequest frames of N tasks; skipped without h2load);
- ``direct``       the same number of tasks from as many callers on one Python ``Client``
                   straight to Redis (the baseline; goal: gRPC ≥ 50 % of it);
- ``noop/...``     unary calls against a grpc.aio server whose handler does nothing (grpc's
                   own cost in Python, for scale).

Per mode it prints the rate, the ratio to ``direct`` and the CPU time per task of each
process (gateway, load generator, redis-server; from /proc and getrusage), as the median of
the rounds. The machine's other load shows in the CPU figures, not only in the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.client import Client
from engine.runtime.embedded import EmbeddedRedis, free_port
from engine.settings import Settings
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.gen import tasks_pb2_grpc

MAX_DEPTH = 100_000_000
PROMPT = "benchmark prompt"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    rate: float  # tasks/s
    server_us: float  # CPU µs per task in the gateway (or the no-op server)
    client_us: float  # … in the load generator
    redis_us: float  # … in redis-server


@dataclass
class Procs:
    server: int
    redis: int


async def measure(
    tasks: int, procs: Procs, run: Callable[[], Awaitable[None]], *, external: bool = False
) -> Sample:
    """Run one phase; CPU of the load generator is this process's, or (``external``) that of
    the child processes reaped during it."""
    client0 = children_cpu() if external else self_cpu()
    server0, redis0 = proc_cpu(procs.server), proc_cpu(procs.redis)
    t0 = time.perf_counter()
    await run()
    wall = time.perf_counter() - t0
    client = (children_cpu() if external else self_cpu()) - client0
    server, redis = proc_cpu(procs.server) - server0, proc_cpu(procs.redis) - redis0
    per = 1e6 / tasks
    return Sample(tasks / wall, server * per, client * per, redis * per)


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


def request() -> pb.SubmitTaskRequest:
    return pb.SubmitTaskRequest(prompt=PROMPT, priority=pb.PRIORITY_NORMAL)


def batches(tasks: int, size: int) -> list[pb.SubmitTasksRequest]:
    """``tasks`` tasks as SubmitTasks messages of ``size`` tasks (the last one may be short)."""
    full, last = divmod(tasks, size)
    sizes = [size] * full + ([last] if last else [])
    return [pb.SubmitTasksRequest(tasks=[request()] * n) for n in sizes]


def own_channel(target: str) -> grpc.aio.Channel:
    """A channel with its own connection: gRPC shares one connection among the channels to
    a target by default (the global subchannel pool), which put every caller on one gateway
    process behind SO_REUSEPORT."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


async def unary_py(target: str, tasks: int, concurrency: int) -> None:
    """``tasks`` unary SubmitTask calls from ``concurrency`` callers, one channel each."""
    opened = [own_channel(target) for _ in range(concurrency)]
    stubs = [tasks_pb2_grpc.TaskServiceStub(c) for c in opened]
    message = request()
    left = tasks

    async def caller(stub: tasks_pb2_grpc.TaskServiceStub) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await stub.SubmitTask(message)

    try:
        await asyncio.gather(*(caller(s) for s in stubs))
    finally:
        for c in opened:
            await c.close()


async def stream_py(target: str, tasks: int, concurrency: int, batch: int) -> None:
    """``tasks`` submits over ``concurrency`` SubmitTasks streams (one channel each), in
    messages of ``batch`` tasks."""
    opened = [own_channel(target) for _ in range(concurrency)]
    shares = [tasks // concurrency + (i < tasks % concurrency) for i in range(concurrency)]

    async def one(channel: grpc.aio.Channel, n: int) -> None:
        messages = batches(n, batch)

        async def requests() -> AsyncIterator[pb.SubmitTasksRequest]:
            for message in messages:
                yield message

        got = 0
        async for reply in tasks_pb2_grpc.TaskServiceStub(channel).SubmitTasks(requests()):
            for result in reply.results:
                if not result.task_id:
                    raise SystemExit(f"SubmitTasks item failed: {result.error}")
                got += 1
        assert got == n

    try:
        await asyncio.gather(*(one(c, n) for c, n in zip(opened, shares, strict=True)))
    finally:
        for c in opened:
            await c.close()


def frame(message: pb.SubmitTaskRequest | pb.SubmitTasksRequest) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def h2load_body(directory: Path) -> Path:
    """A unary SubmitTask request body for h2load."""
    path = directory / "submit.grpc"
    path.write_bytes(frame(request()))
    return path


def h2load_stream_body(directory: Path, tasks: int, batch: int) -> Path:
    """A SubmitTasks request body for h2load: ``tasks`` tasks in messages of ``batch``."""
    path = directory / f"stream-{tasks}x{batch}.grpc"
    path.write_bytes(b"".join(frame(m) for m in batches(tasks, batch)))
    return path


async def h2load(target: str, method: str, requests: int, concurrency: int, body: Path) -> None:
    """``requests`` calls from h2load over ``concurrency`` connections, one call at a time
    each (the Python phases' shape). h2load checks the HTTP status only; the caller checks
    that every task was made."""
    args = ["h2load", "-n", str(requests), "-c", str(concurrency), "-m", "1", "-d", str(body)]
    args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    proc = await asyncio.create_subprocess_exec(
        *args, f"http://{target}/aiis.v1.TaskService/{method}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    text = out.decode()
    if proc.returncode != 0 or f"{requests} succeeded" not in text:
        raise SystemExit(f"h2load failed:\n{text}")


async def direct(client: Client, tasks: int, concurrency: int) -> None:
    left = tasks

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.submit(PROMPT)

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def queued(client: Client) -> int:
    """Tasks in the namespace's queues (to check that every gRPC call made a task)."""
    store = client.store
    total = 0
    for p in range(client.settings.partitions):
        total += int(await store.redis.hlen(store.keys(p).state))
    return total


async def main(args: argparse.Namespace) -> None:
    n, conc, size = args.tasks, args.concurrency, args.batch
    has_h2load = shutil.which("h2load") is not None
    samples: dict[str, list[Sample]] = {}
    if n % conc:
        raise SystemExit("--tasks must be a multiple of --concurrency")
    if not 1 <= size <= 1000:
        raise SystemExit(
            "--batch must be 1 to 1000 (the server's default AIIS_GRPC_STREAM_MAX_BATCH)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        one = h2load_body(Path(tmp))
        share1 = h2load_stream_body(Path(tmp), n // conc, 1)
        share = h2load_stream_body(Path(tmp), n // conc, size)
        redis = EmbeddedRedis(Path(tmp), appendonly=False)
        redis.start()
        assert redis.process is not None
        port, noop_port = free_port(), free_port()
        grpc_ns, direct_ns = f"bg{uuid.uuid4().hex[:8]}", f"bd{uuid.uuid4().hex[:8]}"
        server, noop = start_server(redis.url, grpc_ns, port), start_noop(noop_port)
        target, noop_target = f"127.0.0.1:{port}", f"127.0.0.1:{noop_port}"
        settings = Settings(namespace=direct_ns, redis_url=redis.url, queue_max_depth=MAX_DEPTH)
        client = Client.from_url(redis.url, settings)
        gw_view = Client.from_url(redis.url, settings.model_copy(update={"namespace": grpc_ns}))
        procs, noop_procs = Procs(server.pid, redis.process.pid), Procs(noop.pid, redis.process.pid)

        def unary_h2(at: str) -> Callable[[], Awaitable[None]]:
            return lambda: h2load(at, "SubmitTask", n, conc, one)

        def stream_h2(body: Path) -> Callable[[], Awaitable[None]]:
            return lambda: h2load(target, "SubmitTasks", conc, conc, body)

        phases: list[tuple[str, Procs, Callable[[], Awaitable[None]], bool]] = [
            ("unary/py", procs, lambda: unary_py(target, n, conc), False),
            ("unary/h2load", procs, unary_h2(target), True),
            ("stream x1/py", procs, lambda: stream_py(target, n, conc, 1), False),
            ("stream x1/h2load", procs, stream_h2(share1), True),
            (f"stream x{size}/py", procs, lambda: stream_py(target, n, conc, size), False),
            (f"stream x{size}/h2load", procs, stream_h2(share), True),
            ("direct", procs, lambda: direct(client, n, conc), False),
            ("noop unary/py", noop_procs, lambda: unary_py(noop_target, n, conc), False),
            ("noop unary/h2load", noop_procs, unary_h2(noop_target), True),
        ]
        # without h2load its rows are skipped (and the report says so); --batch 1: no repeats
        named = {p[0]: p for p in phases if has_h2load or not p[0].endswith("/h2load")}
        phases = list(named.values())
        try:
            await wait_serving(target, server)
            await wait_serving(noop_target, noop)
            await client.store.prepare()
            # warm-up: connections, script loading, caches
            await unary_py(target, 500, conc)
            await stream_py(target, 500, conc, 1)
            await stream_py(target, 500, conc, size)
            await direct(client, 500, conc)
            for r in range(args.rounds):
                for name, owner, run, external in phases:
                    before = await queued(gw_view)
                    sample = await measure(n, owner, run, external=external)
                    if owner is procs and name != "direct":
                        made = await queued(gw_view) - before
                        if made != n:
                            raise SystemExit(f"{name}: {made} tasks made for {n} calls")
                    samples.setdefault(name, []).append(sample)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            await client.aclose()
            await gw_view.aclose()
            for proc in (server, noop):
                proc.terminate()
                proc.wait(15)
            redis.stop()
    report(args, samples, has_h2load)


def report(args: argparse.Namespace, samples: dict[str, list[Sample]], has_h2load: bool) -> None:
    def med(name: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[name])

    direct_rate = med("direct", "rate")
    print(
        f"{args.tasks} tasks per phase, {args.concurrency} concurrent callers/streams, "
        f"one gateway process; median of {args.rounds} rounds (2 cores, shared)"
    )
    if not has_h2load:
        print("h2load not found (apt-get install nghttp2-client): its phases are skipped")
    print(
        "stream xN = SubmitTasks with N tasks per stream message (x1: one task per message); "
        "unary = one SubmitTask call per task"
    )
    print(
        f"{'mode':<20} {'tasks/s':>9} {'vs direct':>10}   CPU µs per task: "
        f"{'gateway':>8} {'loadgen':>8} {'redis':>7}"
    )
    for name, runs in samples.items():
        rate = med(name, "rate")
        rates = ", ".join(f"{s.rate:,.0f}" for s in runs)
        print(
            f"{name:<20} {rate:9,.0f} {rate / direct_rate:10.1%}                   "
            f"{med(name, 'server_us'):8.0f} {med(name, 'client_us'):8.0f} "
            f"{med(name, 'redis_us'):7.0f}   ({rates})"
        )
    print("goal: gRPC ≥ 50 % of direct (gateway = the server process; for direct it is idle)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=100, help="tasks per SubmitTasks message (default 100)"
    )
    parser.add_argument(
        "--serve-noop", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS
    )
    parsed = parser.parse_args()
    if parsed.serve_noop is not None:
        asyncio.run(serve_noop(parsed.serve_noop))
    else:
        asyncio.run(main(parsed))
