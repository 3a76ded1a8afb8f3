"""This engine against arq, taskiq (RedisStreamBroker), Celery and Dramatiq: one run, one Redis.

    python bench/peers.py [--tasks 20000] [--runs 3] [--concurrency 512] [--timeout 180]
                          [--only engine,arq,...]

One embedded redis-server (AOF everysec, as `aiis serve` runs it) serves every system; before
each run the data is flushed (FLUSHALL, then BGREWRITEAOF so every run starts from an empty
AOF). Each run: start one worker process for the system, warm it up with one job, CONFIG
RESETSTAT, then this process enqueues all N no-op jobs and polls a counter until N have
completed; tasks/s = N / (first enqueue → last completion). The peers' job is ``INCR
bench:done`` (`bench/peers_jobs.py`); that INCR and this script's polling GETs are subtracted
from commands/task. The engine runs through `bench/throughput.py`'s `run_engine` (echo provider,
completion = the `done` zset), the ceiling through its `run_bare`. Systems are interleaved round
by round, so drift (other load on the machine) hits all of them alike; the figures are medians.

enqueue/s: N / (first → last enqueue returned), the producer alone (median run; the bare
loop's producer is a separate process and not timed alone). CPU columns: CPU time over the
measured window in % of one core, sampled from /proc — the worker process(es), redis-server,
and this process (the producer; it also runs the sampler).
See docs/peers.md for settings, fairness rules and results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from throughput import command_calls, reset_stats, run_bare, run_engine

from engine.core.keys import all_partitions
from engine.runtime.embedded import EmbeddedRedis

DONE = "bench:done"
INFLIGHT = 100  # concurrent enqueues of the asyncio producers: redis-py's default async pool size
PEERS = ("arq", "taskiq", "celery", "dramatiq")
SYSTEMS = ("bare", "engine", *PEERS)
LABELS = {
    "bare": "bare redis-py loop",
    "engine": "this engine (echo)",
    "arq": "arq",
    "taskiq": "taskiq + RedisStream",
    "celery": "celery (redis)",
    "dramatiq": "dramatiq (redis)",
}
CLK = os.sysconf("SC_CLK_TCK")


class RunTimeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound a run (also the imported run_bare/run_engine, which block): SIGALRM → RunTimeout."""

    def fire(signum: int, frame: Any) -> None:
        raise RunTimeout(f"no result within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- processes and CPU -----------------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, float]]:
    """pid → (ppid, CPU seconds) for every process on the machine."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK)
    return out


def descendants(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


class CpuSampler(threading.Thread):
    """Every 0.1 s: CPU seconds of redis-server, of this process and of its other descendants."""

    def __init__(self, redis_pid: int) -> None:
        super().__init__(daemon=True)
        self.redis_pid = redis_pid
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.halt = threading.Event()

    def snapshot(self) -> None:
        table = proc_table()
        me = os.getpid()
        pids = descendants(me, table) | {me}
        self.samples.append((time.monotonic(), {p: table[p][1] for p in pids if p in table}))

    def run(self) -> None:
        while not self.halt.wait(0.1):
            self.snapshot()

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds spent in [start, end] by the worker processes, redis-server, producer."""
        self.snapshot()
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        for t, cpu in self.samples:
            if t <= start:
                first.update(cpu)
            if t <= end + 0.05:
                last.update(cpu)
        delta = {pid: v - first.get(pid, 0.0) for pid, v in last.items()}
        me = os.getpid()
        return {
            "redis": delta.get(self.redis_pid, 0.0),
            "producer": delta.get(me, 0.0),
            "worker": sum(v for p, v in delta.items() if p not in (me, self.redis_pid)),
        }


def reap_leftovers(redis_pid: int) -> list[int]:
    """Terminate (then kill) any process this script started that is still running, but Redis."""
    table = proc_table()
    left = sorted(descendants(os.getpid(), table) - {redis_pid})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(Path(f"/proc/{p}").exists() for p in left):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-1, os.WNOHANG)
            time.sleep(0.05)
    return left


# --- redis -----------------------------------------------------------------------------------


def fresh(r: redis.Redis) -> None:
    """Empty the server and its AOF, so no run inherits data or an AOF rewrite from another."""
    r.flushall()
    while True:
        info: Any = r.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            break
        time.sleep(0.05)
    r.bgrewriteaof()
    time.sleep(0.05)
    while True:
        info = r.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            break
        time.sleep(0.05)


def command_breakdown(r: redis.Redis, drop: tuple[str, ...] = ()) -> dict[str, int]:
    stats: Any = r.info("commandstats")
    skip = {"info", "config", "ping", "zcard", "xlen", *drop}
    out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return {k: v for k, v in out.items() if k not in skip}


# --- producers: the fastest documented way each library enqueues ----------------------------


class Producer:
    """open() before the clock starts, send(n) inside it, close() after."""

    def open(self) -> None: ...
    def send(self, n: int) -> None: ...
    def close(self) -> None: ...


class AsyncProducer(Producer):
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def one(self) -> None:
        raise NotImplementedError

    async def many(self, n: int) -> None:
        async def lane(count: int) -> None:
            for _ in range(count):
                await self.one()

        lanes = min(INFLIGHT, n)
        await asyncio.gather(*(lane(n // lanes + (k < n % lanes)) for k in range(lanes)))

    def send(self, n: int) -> None:
        self.run(self.many(n))


class ArqProducer(AsyncProducer):
    """`ArqRedis.enqueue_job`, INFLIGHT in flight (each is a WATCH/MULTI transaction)."""

    def open(self) -> None:
        import peers_jobs
        from arq.connections import RedisSettings, create_pool

        self.pool = self.run(create_pool(RedisSettings.from_dsn(peers_jobs.URL)))

    async def one(self) -> None:
        await self.pool.enqueue_job("arq_noop")

    def close(self) -> None:
        self.run(self.pool.aclose())
        self.loop.close()


class TaskiqProducer(AsyncProducer):
    """`task.kiq()`, INFLIGHT in flight (each an XADD)."""

    def open(self) -> None:
        import peers_jobs

        self.broker = peers_jobs.taskiq_broker
        self.task = peers_jobs.taskiq_noop
        self.run(self.broker.startup())  # declares the consumer group, as the worker does

    async def one(self) -> None:
        await self.task.kiq()

    def close(self) -> None:
        self.run(self.broker.shutdown())
        self.loop.close()


class CeleryProducer(Producer):
    """`apply_async` in a loop through one producer (a connection held for the whole batch)."""

    def open(self) -> None:
        import peers_jobs

        self.app = peers_jobs.celery_app
        self.task = peers_jobs.celery_noop
        self.producer_cm = self.app.producer_or_acquire()
        self.producer = self.producer_cm.__enter__()

    def send(self, n: int) -> None:
        for _ in range(n):
            self.task.apply_async(producer=self.producer)

    def close(self) -> None:
        self.producer_cm.__exit__(None, None, None)


class DramatiqProducer(Producer):
    """`actor.send()` in a loop (dramatiq has no batch enqueue; `group` sends one by one)."""

    def open(self) -> None:
        import peers_jobs

        self.actor = peers_jobs.dramatiq_noop

    def send(self, n: int) -> None:
        for _ in range(n):
            self.actor.send()


PRODUCERS: dict[str, Callable[[], Producer]] = {
    "arq": ArqProducer,
    "taskiq": TaskiqProducer,
    "celery": CeleryProducer,
    "dramatiq": DramatiqProducer,
}


def worker_command(system: str, concurrency: int) -> list[str]:
    py = sys.executable
    return {
        "arq": [py, "-m", "arq", "peers_jobs.ArqSettings"],
        "taskiq": [
            *(py, "-m", "taskiq", "worker", "peers_jobs:taskiq_broker"),
            *("--workers", "1", "--max-async-tasks", str(concurrency)),
        ],
        "celery": [
            *(py, "-m", "celery", "-A", "peers_jobs:celery_app", "worker"),
            *("--pool", "threads", "--concurrency", "8"),
        ],
        "dramatiq": [
            *(py, "-m", "dramatiq", "peers_jobs:dramatiq_broker"),
            *("--processes", "1", "--threads", "8"),
        ],
    }[system]


# --- one run of a peer -----------------------------------------------------------------------


def run_peer(
    system: str, url: str, n: int, concurrency: int, sampler: CpuSampler, logdir: Path
) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    env = {
        **os.environ,
        "BENCH_REDIS_URL": url,
        "BENCH_CONCURRENCY": str(concurrency),
        "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
    }
    log = open(logdir / f"{system}.log", "ab")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen(
        worker_command(system, concurrency),
        cwd=BENCH,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    producer = PRODUCERS[system]()
    try:
        producer.open()
        producer.send(1)  # warm-up: the worker is up, connected and has run one job
        while int(r.get(DONE) or 0) < 1:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}, see {log.name}")
            time.sleep(0.05)
        r.delete(DONE)
        reset_stats(r)
        polls = 0
        t0 = time.perf_counter()
        m0 = time.monotonic()
        producer.send(n)
        submitted = time.perf_counter() - t0
        while int(r.get(DONE) or 0) < n:
            polls += 1
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        m1 = time.monotonic()
        polls += 1
        breakdown = command_breakdown(r)
        breakdown["incrby"] -= n  # the job's completion counter (redis-py sends INCR as INCRBY)
        breakdown["get"] -= polls  # our polling
        calls = command_calls(r) - n - polls
    finally:
        with contextlib.suppress(Exception):
            producer.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
    cpu = sampler.window(m0, m1)
    return {
        "tasks_s": n / elapsed,
        "submit_s": n / submitted,
        "cmds": calls / n,
        "elapsed": elapsed,
        "cpu": cpu,
        "breakdown": breakdown,
    }


def run_one(
    system: str, url: str, n: int, concurrency: int, sampler: CpuSampler, logdir: Path
) -> dict[str, Any]:
    if system in PEERS:
        return run_peer(system, url, n, concurrency, sampler, logdir)
    r = redis.Redis.from_url(url)
    if system == "bare":
        result: dict[str, Any] = dict(run_bare(url, n))
        end = time.monotonic()
    else:
        # run_engine goes on after the last task (worker shutdown, latency scan): a thread
        # notes when the `done` zset reaches n (ZCARD, which the command counts leave out)
        done_key = all_partitions("peers", 1)[0].done
        finished: list[float] = []
        halt = threading.Event()

        def watch() -> None:
            while not halt.is_set() and r.zcard(done_key) < n:
                time.sleep(0.01)
            finished.append(time.monotonic())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = dict(asyncio.run(run_engine(url, n, 1, concurrency, namespace="peers")))
        finally:
            halt.set()
            watcher.join()
        end = finished[0]
    result["cpu"] = sampler.window(end - result["elapsed"], end)
    # the breakdown since RESETSTAT: run_engine's latency scan (XRANGE) and polls excluded
    result["breakdown"] = command_breakdown(r, drop=("xrange",))
    return result


# --- report ----------------------------------------------------------------------------------


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose tasks/s is the median (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda x: x["tasks_s"])
    return ordered[(len(ordered) - 1) // 2]


def report(
    results: dict[str, list[dict[str, Any]]],
    failures: dict[str, list[str]],
    n: int,
    runs: int,
) -> None:
    import platform

    print(
        f"N = {n} no-op tasks per run, {runs} runs per system (interleaved), one worker process "
        f"per system, one embedded redis-server (AOF everysec); {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    med = {s: statistics.median(r["tasks_s"] for r in rs) for s, rs in results.items() if rs}
    engine = med.get("engine")
    head = ("tasks/s", "cmds/task", "vs engine", "enqueue/s", "worker", "redis", "producer", "ok")
    print(f"{'system':<22}" + "".join(f"{h:>10}" for h in head))
    print(f"{'':<22}{'(median)':>10}{'':>30}{'CPU % of one core, median run':>30}")
    for system, rs in results.items():
        if not rs:
            print(f"{LABELS[system]:<22}{'FAILED':>10}  {'; '.join(failures[system])}")
            continue
        m = median_run(rs)
        ratio = f"{med[system] / engine:.2f}" if engine else "-"
        cpu = m["cpu"]
        print(
            f"{LABELS[system]:<22}{med[system]:>10.0f}{m['cmds']:>10.2f}{ratio:>10}"
            + (f"{m['submit_s']:>10.0f}" if "submit_s" in m else f"{'-':>10}")
            + "".join(
                f"{100 * cpu[k] / m['elapsed']:>9.0f}%" for k in ("worker", "redis", "producer")
            )
            + f"{len(rs):>8}/{runs}"
        )
    peers = {s: v for s, v in med.items() if s in PEERS}
    if engine and peers:
        best = max(peers, key=lambda s: peers[s])
        print(
            f"engine / fastest peer ({LABELS[best]}): {engine / peers[best]:.2f}x"
            f"   (goal >= 2x: {'met' if engine >= 2 * peers[best] else 'NOT met'})"
        )
    print("\nRedis commands per task, median run (peers: without the job's INCR and our GETs):")
    for system, rs in results.items():
        if not rs:
            continue
        m = median_run(rs)
        top = sorted(m["breakdown"].items(), key=lambda kv: -kv[1])
        parts = [f"{k} {v / n:.2f}" for k, v in top if v / n >= 0.005]
        print(f"  {LABELS[system]:<22}" + ", ".join(parts))
    for system, why in failures.items():
        for line in why:
            print(f"  {LABELS[system]}: failed run: {line}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    parser.add_argument("--only", default=",".join(SYSTEMS))
    args = parser.parse_args()
    systems = [s for s in SYSTEMS if s in args.only.split(",")]

    results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    failures: dict[str, list[str]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        url = server.start()
        os.environ["BENCH_REDIS_URL"] = url  # read by peers_jobs when this process imports it
        os.environ["BENCH_CONCURRENCY"] = str(args.concurrency)
        assert server.process is not None
        redis_pid = server.process.pid
        sampler = CpuSampler(redis_pid)
        sampler.start()
        r = redis.Redis.from_url(url)
        try:
            for round_ in range(args.runs):
                for system in systems:
                    fresh(r)
                    try:
                        with deadline(args.timeout):
                            res = run_one(
                                system, url, args.tasks, args.concurrency, sampler, Path(tmp)
                            )
                        results[system].append(res)
                        status = f"{res['tasks_s']:.0f} tasks/s"
                    except Exception as exc:  # a failed run is reported, not fatal
                        failures[system].append(f"round {round_ + 1}: {type(exc).__name__}: {exc}")
                        status = f"FAILED ({type(exc).__name__}: {exc})"
                    left = reap_leftovers(redis_pid)
                    if left:
                        status += f" [stopped leftover pids {left}]"
                    print(f"round {round_ + 1} {system:<9} {status}", file=sys.stderr, flush=True)
        finally:
            sampler.halt.set()
            reap_leftovers(redis_pid)
            server.stop()
    report(results, failures, args.tasks, args.runs)


if __name__ == "__main__":
    main()
