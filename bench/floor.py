"""The floor of the design's critical path on this machine: the same processes and the same
Redis hops as a streamed chat completion through the service, with none of the service's code
(issue 18's latency goal, measured against what no implementation of the design can go under).

    python bench/floor.py [--rates 10,100] [--seconds 5] [--latency 1.0]

A streamed completion through the service crosses: the caller → the gateway; the gateway's
submit script (task hash, work queue, log); the worker's blocked XREADGROUP woken; its adopt
script; its HTTP request to the provider; the provider's first token → the worker's commit
script; the gateway's blocked XREAD woken; the SSE frame → the caller. This script runs exactly
that chain with minimal code in each process — a raw asyncio HTTP/1.1 server as the
"gateway", one Lua script per step, a consumer-group reader as the "worker" calling the real
provider sandbox — on the same embedded redis-server, uvloop and redis-py (hiredis) as the
service, and measures it the way ``bench/openai_compat.py`` measures the service: open loop,
interleaved with the same request straight to the sandbox, added latency = the skeleton's
percentile minus the direct path's. No validation, admission, PII screening, routing, breaker,
limiter, metrics or audit: what it adds is what the hops themselves cost here.

Three parts: (1) the sandbox and the load generator alone — their latency and the CPU they
take, i.e. what the machine has left at each rate; (2) the skeleton beside the direct path;
(3) the sandbox over HTTP/2 (a bare h2 client) beside HTTP/1.1, at rates up to 100 req/s:
the service's worker calls providers over HTTP/2 while the skeleton and the direct path use
HTTP/1.1, so this is the part of the service's added latency that is the sandbox's.
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

import h2.config
import h2.connection
import h2.events
import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from openai_compat import (  # type: ignore[import-not-found]
    BODY,
    ROOT,
    Pool,
    Samples,
    cpu_snapshot,
    has_token,
    load,
    open_loop,
    pct,
    stop,
    wait_http,
)

from engine.runtime.embedded import EmbeddedRedis, free_port
from engine.runtime.workers import run_loop

QUEUE, LOG, GROUP = "floor:queue", "floor:log", "workers"
SUBMIT = """
redis.call('HSET', KEYS[1], 'state', 'queued', 'input', ARGV[2])
redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
return redis.call('XADD', KEYS[3], '*', 't', ARGV[1], 'e', 'requested')
"""
ADOPT = """
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running')
return redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'e', 'started')
"""
COMMIT = "return redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'e', ARGV[2], 'd', ARGV[3])"
FINISH = """
redis.call('HSET', KEYS[1], 'state', 'succeeded')
redis.call('XACK', KEYS[3], ARGV[3], ARGV[2])
return redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'e', 'succeeded')
"""


def connect(url: str) -> aioredis.Redis:
    """A pool that waits for a free connection (as the service's does), never a refusal."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=None)
    return aioredis.Redis(connection_pool=pool)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    line = await reader.readline()
    if not line:
        return None
    length = 0
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def gateway(redis_url: str, port: int) -> None:
    """A streamed request: register, submit, then write each of the task's log entries the
    hub's XREAD brings as an SSE frame."""
    redis = connect(redis_url)
    hub = aioredis.Redis.from_url(redis_url)
    submit = redis.register_script(SUBMIT)
    waiting: dict[bytes, asyncio.Queue[tuple[bytes, bytes]]] = {}

    async def fan_out() -> None:
        last = b"$"
        while True:
            reply = await hub.xread({LOG: last}, block=1000, count=512)
            for _, entries in reply:
                for eid, fields in entries:
                    last = eid
                    queue = waiting.get(fields[b"t"])
                    if queue is not None:
                        queue.put_nowait((fields[b"e"], fields.get(b"d", b"")))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (body := await read_request(reader)) is not None:
                request = orjson.loads(body)
                task = uuid.uuid4().hex.encode()
                queue = waiting[task] = asyncio.Queue()
                await submit(keys=[b"floor:task:" + task, QUEUE, LOG], args=[task, body])
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                while True:
                    kind, data = await queue.get()
                    if kind == b"delta":
                        frame = {"model": request["model"], "choices": [{"delta": {"content": ""}}]}
                        frame["choices"][0]["delta"]["content"] = data.decode()
                        writer.write(chunk(b"data: " + orjson.dumps(frame) + b"\n\n"))
                    elif kind == b"succeeded":
                        writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                        break
                del waiting[task]
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await asyncio.gather(fan_out(), server.serve_forever())


async def worker(redis_url: str, sandbox: str) -> None:
    """Woken by the queue, adopt, call the provider (streamed, keep-alive HTTP/1.1), commit
    the first token as it arrives and the rest at the end, finish."""
    redis = connect(redis_url)
    reader_conn = aioredis.Redis.from_url(redis_url)
    adopt = redis.register_script(ADOPT)
    commit = redis.register_script(COMMIT)
    finish = redis.register_script(FINISH)
    await redis.xgroup_create(QUEUE, GROUP, id="0", mkstream=True)
    host, port = sandbox.removeprefix("http://").split(":")
    body = orjson.dumps(BODY)
    head = (
        f"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer sandbox-openai-key\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def run(eid: bytes, task: bytes) -> None:
        key = b"floor:task:" + task
        await adopt(keys=[key, LOG], args=[task])
        r, w = idle.pop() if idle else await asyncio.open_connection(host, int(port))
        w.write(head)
        await r.readline()
        while (await r.readline()) not in (b"\r\n", b""):
            pass
        rest: list[bytes] = []
        first = True
        while size := int((await r.readline()).split(b";")[0], 16):
            data = (await r.readexactly(size + 2))[:-2]
            for line in data.split(b"\n"):
                if not line.startswith(b"data: {"):
                    continue
                delta = orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if delta and first:
                    first = False
                    await commit(keys=[LOG], args=[task, b"delta", delta])
                elif delta:
                    rest.append(delta.encode())
        await r.readline()
        idle.append((r, w))
        await commit(keys=[LOG], args=[task, b"delta", b"".join(rest)])
        await finish(keys=[key, LOG, QUEUE], args=[task, eid, GROUP])

    tasks: set[asyncio.Task[None]] = set()
    while True:
        reply = await reader_conn.xreadgroup(GROUP, "w1", {QUEUE: ">"}, block=1000, count=64)
        for _, entries in reply:
            for eid, fields in entries:
                job = asyncio.create_task(run(eid, fields[b"t"]))
                tasks.add(job)
                job.add_done_callback(tasks.discard)


class BareH2(asyncio.Protocol):
    """A bare HTTP/2 client on one connection (h2's state machine, no httpx, no pool): what the
    sandbox's HTTP/2 server costs, apart from the worker's transport."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True)
        self.conn = h2.connection.H2Connection(config)
        self.first: dict[int, asyncio.Future[float]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport: it writes
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 30)
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
                chunk = event.data or b""
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
                waiter = self.first.get(event.stream_id)
                if waiter is not None and not waiter.done() and has_token(chunk):
                    waiter.set_result(time.perf_counter())
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    async def first_token(self, authority: str) -> float:
        sid = self.conn.get_next_available_stream_id()
        waiter = self.first[sid] = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        headers = [
            (":method", "POST"), (":authority", authority), (":scheme", "http"),
            (":path", "/openai/v1/chat/completions"),
            ("authorization", "Bearer sandbox-openai-key"), ("content-type", "application/json"),
        ]  # fmt: skip
        self.conn.send_headers(sid, headers)
        self.conn.send_data(sid, orjson.dumps(BODY), end_stream=True)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())
        try:
            return await waiter - start
        finally:
            del self.first[sid]


async def h2_beside_h1(
    rate: float, seconds: float, sandbox: str
) -> tuple[list[float], list[float]]:
    """Time to the first token from the sandbox over HTTP/2 (bare client) and HTTP/1.1 (the
    load generator's client), interleaved in one process."""
    authority = sandbox.removeprefix("http://")
    host, port = authority.split(":")
    _, bare = await asyncio.get_running_loop().create_connection(BareH2, host, int(port))
    h1 = Pool(f"{sandbox}/openai/v1/chat/completions", "sandbox-openai-key")
    over_h2: list[float] = []
    over_h1: list[float] = []

    async def one_h2() -> None:
        over_h2.append(await bare.first_token(authority))

    async def one_h1() -> None:
        first, _ = await h1.call()
        if first is not None:
            over_h1.append(first)

    await one_h2()
    await one_h1()
    over_h2.clear()
    over_h1.clear()
    await open_loop(rate, seconds, lambda: [one_h2(), one_h1()])
    h1.close()
    assert bare.transport is not None
    bare.transport.close()
    return over_h2, over_h1


def row(rate: float, name: str, s: Samples) -> str:
    return (
        f"{rate:>6.0f} {name:>8} {len(s.last):>6} {s.errors:>4} {pct(s.first, 0.5) * 1000:>8.1f}ms "
        f"{pct(s.first, 0.99) * 1000:>8.1f}ms {pct(s.last, 0.5) * 1000:>7.1f}ms "
        f"{pct(s.last, 0.99) * 1000:>7.1f}ms"
    )


def role(argv: list[str]) -> None:
    name, redis_url, arg = argv
    if name == "gateway":
        run_loop(gateway(redis_url, int(arg)))
    else:
        run_loop(worker(redis_url, arg))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        role(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10,100")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="aiis-bench-floor-")), appendonly=False)
    url = redis.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sb_port, gw_port = free_port(), free_port()
        sandbox = f"http://127.0.0.1:{sb_port}"
        argv = [sys.executable, "-m", "providers.sandbox", "--port", str(sb_port)]
        argv += ["--latency", str(args.latency)]
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL))
        wait_http(f"{sandbox}/_sandbox/stats", procs[-1])
        me = [sys.executable, __file__, "--role"]
        procs.append(subprocess.Popen([*me, "worker", url, sandbox], cwd=ROOT))
        procs.append(subprocess.Popen([*me, "gateway", url, str(gw_port)], cwd=ROOT))
        skeleton = f"http://127.0.0.1:{gw_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                run_loop(asyncio.open_connection("127.0.0.1", gw_port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the skeleton gateway did not start") from None
                time.sleep(0.1)
        rates = [float(r) for r in args.rates.split(",")]
        print(f"sandbox latency {args.latency} s; {args.seconds} s per rate")
        head = (
            f"{'rate':>6} {'path':>8} {'n':>6} {'err':>4} "
            f"{'first p50':>10} {'first p99':>10} {'last p50':>9} {'last p99':>9}"
        )
        print("1. straight to the sandbox alone (the skeleton idle): what the machine has left")
        print(head)
        pids = {"sandbox": [procs[0].pid]}
        for rate in rates:
            cpu0 = cpu_snapshot(pids)
            _, alone = asyncio.run(load(rate, args.seconds, None, sandbox))
            cpu1 = cpu_snapshot(pids)
            used = {k: cpu1[k] - cpu0[k] for k in cpu0}
            n = max(1, int(rate * args.seconds))
            parts = "  ".join(f"{k} {v / n * 1000:.2f}" for k, v in used.items())
            cores = sum(used.values()) / n * rate
            print(row(rate, "direct", alone))
            print(
                f"{rate:>6.0f} {'cpu':>8} ms per request: {parts}; at {rate:.0f} req/s they use "
                f"{cores:.2f} of {os.cpu_count()} cores"
            )
        print("2. the skeleton beside the same request straight to the sandbox, interleaved")
        print(head)
        for rate in rates:
            via, direct = asyncio.run(load(rate, args.seconds, skeleton, sandbox))
            print(row(rate, "skeleton", via))
            print(row(rate, "direct", direct))
            added = [(pct(via.first, q) - pct(direct.first, q)) * 1000 for q in (0.5, 0.99)] + [
                (pct(via.last, q) - pct(direct.last, q)) * 1000 for q in (0.5, 0.99)
            ]
            print(
                f"{rate:>6.0f} {'added':>8} {'':>6} {via.errors:>4} {added[0]:>8.1f}ms "
                f"{added[1]:>8.1f}ms {added[2]:>7.1f}ms {added[3]:>7.1f}ms"
            )
            sys.stdout.flush()
        print(
            "3. the sandbox itself over HTTP/2 (a bare h2 client: the worker calls providers over "
            "HTTP/2) beside HTTP/1.1 (the direct path's), first token, one process"
        )
        for rate in (r for r in rates if r <= 100):
            over_h2, over_h1 = run_loop(h2_beside_h1(rate, args.seconds, sandbox))
            gap = [(pct(over_h2, q) - pct(over_h1, q)) * 1000 for q in (0.5, 0.99)]
            print(
                f"{rate:>6.0f} HTTP/2 p50 {pct(over_h2, 0.5) * 1000:.1f}ms "
                f"p99 {pct(over_h2, 0.99) * 1000:.1f}ms  "
                f"HTTP/1.1 p50 {pct(over_h1, 0.5) * 1000:.1f}ms "
                f"p99 {pct(over_h1, 0.99) * 1000:.1f}ms  "
                f"HTTP/2 later by {gap[0]:.2f} / {gap[1]:.2f} ms"
            )
    finally:
        for proc in reversed(procs):
            stop(proc)
        redis.stop()


if __name__ == "__main__":
    main()
