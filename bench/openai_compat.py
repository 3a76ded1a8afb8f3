"""Streamed chat completions through the OpenAI-compatible API (``aiis gateway --processes N``
+ a worker) beside the same calls straight to the sandbox, in one run, open-loop at fixed
rates (issue 18's benchmark).

    python bench/openai_compat.py [--rates 100,1000] [--seconds 5] [--processes 1,2]
                                  [--latency 1.0]

Starts an embedded redis-server, the provider sandbox (``--latency`` seconds before each
answer), one ``aiis worker`` process and, per process count, ``aiis gateway --processes N``
(open mode, loopback). At each rate, requests start on a fixed schedule (open loop: a slow
answer never delays the next start), alternating a streamed ``POST /v1/chat/completions``
with model ``gpt-5-mini`` through the gateway and the same streamed request straight to the
sandbox's OpenAI endpoint, so both see the same machine load. For each it records the time to
the first body bytes holding a token (first token) and to the last byte. Prints p50/p99 of
each and their difference (what the service adds), errors and the peak in flight, and the
CPU each process spent per request pair (from /proc; the sandbox and this load generator serve
both paths) with the cores that CPU needs at that rate. On these 2-core machines
redis-server, the sandbox, the worker, the gateway and this load generator all share the
cores: the added latency includes that contention, and where the cores needed exceed the
machine's, no latency goal can hold on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime.embedded import EmbeddedRedis, free_port

BODY = {
    "model": "gpt-5-mini",
    "messages": [{"role": "user", "content": "Summarise the benefits of open-loop load tests"}],
    "stream": True,
}
RATE_LIMITS = {
    f"AIIS_{n}": "0"
    for n in (
        "GEMINI_RPM", "GEMINI_TPM", "OPENAI_RPM", "OPENAI_TPM",
        "ANTHROPIC_RPM", "ANTHROPIC_TPM", "UNSPLASH_RPM", "PEXELS_RPM",
    )
}  # fmt: skip


@dataclass
class Samples:
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    errors: int = 0
    why: Counter[str] = field(default_factory=Counter)  # error kind -> count
    in_flight: int = 0
    peak: int = 0


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process and its reaped children used so far; 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICK  # utime, stime, cutime, cstime


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    snap = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    snap["load generator"] = usage.ru_utime + usage.ru_stime
    return snap


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def has_token(data: bytes) -> bool:
    """Whether a chunk of a streamed chat completion holds a token (a non-empty content)."""
    return b'"content":"' in data.replace(b'"content":""', b"")


class Pool:
    """A few lines of HTTP/1.1 over asyncio streams, keep-alive: the load generator shares the
    cores with what it measures, and httpx costs several times more CPU per request."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path
        body = orjson.dumps(BODY)
        self.request = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(self) -> tuple[float | None, bytes]:
        """(seconds to the first token, the body's tail); raises OSError/ValueError."""
        start = time.perf_counter()
        while self.idle:
            reader, writer = self.idle.pop()
            if not (reader.at_eof() or writer.is_closing()):
                break
            # the server closed it while idle (its keep-alive timeout), as HTTP clients check
            # before reusing one (httpcore does): a new connection instead of a failed request
            writer.close()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        writer.write(self.request)
        status = await reader.readline()
        if b" 200 " not in status:
            writer.close()
            raise ValueError(status.decode(errors="replace").strip())
        chunked, length = False, None
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name.lower() == "content-length":
                length = int(value)
        first: float | None = None
        tail = b""

        def seen(data: bytes) -> None:
            nonlocal first, tail
            if first is None and has_token(data):
                first = time.perf_counter() - start
            tail = (tail + data)[-32:]

        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                seen(data[:-2])
        elif length is not None:
            seen(await reader.readexactly(length))
        else:
            seen(await reader.read())
        self.idle.append((reader, writer))
        return first, tail

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def one(pool: Pool, out: Samples) -> None:
    out.in_flight += 1
    out.peak = max(out.peak, out.in_flight)
    start = time.perf_counter()
    try:
        first, tail = await pool.call()
        if first is None or not tail.rstrip().endswith(b"[DONE]"):
            out.errors += 1
            out.why["no token" if first is None else "no [DONE]"] += 1
            return
        out.first.append(first)
        out.last.append(time.perf_counter() - start)
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        out.errors += 1
        out.why[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
    finally:
        out.in_flight -= 1


async def open_loop(
    rate: float, seconds: float, calls: Callable[[], list[Coroutine[Any, Any, None]]]
) -> None:
    """Start ``calls()`` every 1/rate s for ``seconds`` whatever the earlier ones do (open
    loop), then wait for all of them."""
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks += [asyncio.create_task(call) for call in calls()]
    await asyncio.gather(*tasks)


async def load(
    rate: float, seconds: float, gateway: str | None, sandbox: str
) -> tuple[Samples, Samples]:
    """Open loop at ``rate``: the same streamed request through ``gateway`` (when given) and
    straight to the sandbox, interleaved; (via the gateway, direct)."""
    via, direct = Samples(), Samples()
    pools = [(Pool(f"{sandbox}/openai/v1/chat/completions", "sandbox-openai-key"), direct)]
    if gateway is not None:
        pools.insert(0, (Pool(f"{gateway}/v1/chat/completions", "bench"), via))
    for _ in range(3):  # warm up: connections, the worker's provider connection
        for pool, _ in pools:
            await one(pool, Samples())
    await open_loop(rate, seconds, lambda: [one(pool, out) for pool, out in pools])
    for pool, _ in pools:
        pool.close()
    return via, direct


def overhead(gateway: str) -> str:
    """``aiis_overhead_seconds`` as the gateway reports it (every process's, summed; the
    counts since the gateway started)."""
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "aiis_overhead_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    mean = total / count * 1000 if count else float("nan")
    return f"aiis_overhead_seconds: mean {mean:.1f} ms over {count:.0f} requests"


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    counts = [int(p) for p in args.processes.split(",")]
    data = Path(tempfile.mkdtemp(prefix="aiis-bench-openai-"))
    redis = EmbeddedRedis(data, appendonly=False)
    url = redis.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sb_port = free_port()
        sandbox = f"http://127.0.0.1:{sb_port}"
        argv = [sys.executable, "-m", "providers.sandbox", "--port", str(sb_port)]
        procs.append(
            subprocess.Popen(
                [*argv, "--latency", str(args.latency)], cwd=ROOT, stdout=subprocess.DEVNULL
            )
        )
        wait_http(f"{sandbox}/_sandbox/stats", procs[-1])
        env = {
            **os.environ,
            **RATE_LIMITS,
            "AIIS_REDIS_URL": url,
            "AIIS_NAMESPACE": f"b{uuid.uuid4().hex[:8]}",
            "AIIS_SANDBOX_URL": sandbox,
            "AIIS_CONCURRENCY": "4000",
            "AIIS_QUEUE_MAX_DEPTH": "100000",
            "AIIS_GATEWAY_TOKENS": "",
        }
        worker = [sys.executable, "-m", "engine", "worker", "--processes", "1"]
        procs.append(subprocess.Popen(worker, env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
        print(f"sandbox latency {args.latency} s; 1 worker process; {args.seconds} s per rate")
        header = (
            f"{'procs':>5} {'rate':>6} {'path':>8} {'n':>6} {'err':>4} {'peak':>5} "
            f"{'first p50':>10} {'first p99':>10} {'last p50':>9} {'last p99':>9}"
        )
        print(header)
        for count in counts:
            port = free_port()
            gw = [sys.executable, "-m", "engine", "gateway", "--processes", str(count)]
            gateway_env = {**env, "AIIS_GATEWAY_PORT": str(port), "AIIS_GRPC_ENABLED": "0"}
            proc = subprocess.Popen(gw, env=gateway_env, cwd=ROOT, stdout=subprocess.DEVNULL)
            gateway = f"http://127.0.0.1:{port}"
            try:
                wait_http(f"{gateway}/healthz", proc)
                time.sleep(1.0 if count > 1 else 0.2)  # every child listening
                assert redis.process is not None
                pids = {
                    "gateway": [proc.pid, *children_of(proc.pid)],
                    "worker": [procs[1].pid],
                    "sandbox": [procs[0].pid],
                    "redis-server": [redis.process.pid],
                }
                for rate in rates:
                    cpu0 = cpu_snapshot(pids)
                    via, direct = asyncio.run(load(rate, args.seconds, gateway, sandbox))
                    cpu1 = cpu_snapshot(pids)
                    pairs = max(1, int(rate * args.seconds))
                    for name, s in (("gateway", via), ("direct", direct)):
                        print(
                            f"{count:>5} {rate:>6.0f} {name:>8} {len(s.last):>6} {s.errors:>4} "
                            f"{s.peak:>5} {pct(s.first, 0.5) * 1000:>8.1f}ms "
                            f"{pct(s.first, 0.99) * 1000:>8.1f}ms "
                            f"{pct(s.last, 0.5) * 1000:>7.1f}ms {pct(s.last, 0.99) * 1000:>7.1f}ms"
                        )
                    print(
                        f"{count:>5} {rate:>6.0f} {'added':>8} {'':>6} {via.errors:>4} {'':>5} "
                        f"{(pct(via.first, 0.5) - pct(direct.first, 0.5)) * 1000:>8.1f}ms "
                        f"{(pct(via.first, 0.99) - pct(direct.first, 0.99)) * 1000:>8.1f}ms "
                        f"{(pct(via.last, 0.5) - pct(direct.last, 0.5)) * 1000:>7.1f}ms "
                        f"{(pct(via.last, 0.99) - pct(direct.last, 0.99)) * 1000:>7.1f}ms"
                    )
                    if via.why or direct.why:
                        kinds = {"gateway": dict(via.why), "direct": dict(direct.why)}
                        print(f"{count:>5} {rate:>6.0f} {'errors':>8} {kinds}")
                    print(f"{count:>5} {rate:>6.0f} {'metric':>8} {overhead(gateway)}")
                    spent = {k: cpu1[k] - cpu0[k] for k in cpu0}
                    parts = "  ".join(f"{k} {v / pairs * 1000:.2f}" for k, v in spent.items())
                    needed = sum(spent.values()) / pairs * rate
                    print(
                        f"{count:>5} {rate:>6.0f} {'cpu':>8} ms per request pair: {parts}; "
                        f"cores needed at {rate:.0f} req/s: {needed:.2f} of {os.cpu_count()}"
                    )
                    sys.stdout.flush()
            finally:
                stop(proc)
    finally:
        for proc in reversed(procs):
            stop(proc)
        redis.stop()


if __name__ == "__main__":
    main()
