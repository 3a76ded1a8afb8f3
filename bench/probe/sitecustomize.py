"""A probe of the gateway's stats push, loaded into every Python process started with this
directory on ``PYTHONPATH`` and ``AIIS_BENCH_PROBE=<dir>`` set; only the process that imports
``gateway.stats`` (the gateway) is instrumented, when it does. Used for docs/benchmarks.md,
"Dashboard charts"; not part of the service.

    AIIS_BENCH_PROBE=/tmp/probe PYTHONPATH=.:bench/probe python bench/fanout.py --seconds 60
    python bench/probe/summary.py /tmp/probe

Writes to ``<dir>/pushes.jsonl`` one line per push: ms from its start until the views were
read (``proj``), the queue lengths (``queues``), the charts (``charts``), the snapshot
(``snap``), the first and the last frame queued (``put1``, ``putN``). ``<dir>/loop.log``: every
garbage collection of ≥ 10 ms (``GC <time> gen<N> <ms>``), every overshoot of ≥ 20 ms of a 5 ms
sleep on the event loop with the thread's CPU time over it (``LAG <time> <ms> <cpu ms>``), and
the times of the first and the last event the gateway read (``FIRST``, ``LAST``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from typing import Any


def _patch(mod: types.ModuleType, out_dir: str) -> None:
    import asyncio
    import gc
    import json
    import time

    from gateway import charts, outbox

    os.makedirs(out_dir, exist_ok=True)
    pushes = open(os.path.join(out_dir, "pushes.jsonl"), "a", buffering=1)  # noqa: SIM115
    loop_log = open(os.path.join(out_dir, "loop.log"), "a", buffering=1)  # noqa: SIM115
    marks: dict[str, float] = {}
    events: dict[str, float] = {}
    stats = mod.Stats

    def flush() -> None:
        if marks:
            t0 = marks.pop("t0")
            row = {k: round((v - t0) * 1000, 1) for k, v in marks.items()}
            pushes.write(json.dumps({**row, "t0": t0}) + "\n")
            marks.clear()

    def timed(cls: Any, name: str, mark: str) -> None:
        original = getattr(cls, name)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(self, *args, **kwargs)
            marks[mark] = time.time()
            return result

        setattr(cls, name, wrapper)

    original_snapshot = stats.snapshot

    async def snapshot(self: Any) -> Any:
        flush()
        if "last" in events:
            loop_log.write(f"LAST {events['last']:.3f}\n")
        marks["t0"] = time.time()
        result = await original_snapshot(self)
        marks["snap"] = time.time()
        return result

    stats.snapshot = snapshot
    timed(stats, "_projections", "proj")
    timed(stats, "_queues", "queues")
    timed(charts.Charts, "read", "charts")

    original_put = outbox.Outbox.put

    def put(self: Any, msg: Any) -> bool:
        if isinstance(msg, str) and msg.startswith('{"op":"stats"'):
            marks.setdefault("put1", time.time())
            marks["putN"] = time.time()
        return bool(original_put(self, msg))

    outbox.Outbox.put = put

    original_observe = stats.observe

    def observe(self: Any, item: Any) -> None:
        now = time.time()
        if "first" not in events:
            events["first"] = now
            loop_log.write(f"FIRST {now:.3f}\n")
        events["last"] = now
        original_observe(self, item)

    stats.observe = observe

    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            return
        ms = (time.perf_counter() - started["t"]) * 1000
        if ms >= 10:
            loop_log.write(f"GC {time.time():.3f} gen{info['generation']} {ms:.1f}\n")

    gc.callbacks.append(on_gc)

    async def lag() -> None:
        while True:
            a, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.005)
            over = (time.perf_counter() - a - 0.005) * 1000
            if over >= 20:
                used = (time.thread_time() - cpu) * 1000
                loop_log.write(f"LAG {time.time():.3f} {over:.1f} {used:.1f}\n")

    original_push = stats.push_forever

    async def push_forever(self: Any) -> None:
        probe = asyncio.create_task(lag())
        try:
            await original_push(self)
        finally:
            probe.cancel()

    stats.push_forever = push_forever


class _Finder(importlib.abc.MetaPathFinder):
    """Instruments ``gateway.stats`` right after it is first executed."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "gateway.stats":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        execute = loader.exec_module
        out_dir = self.out_dir

        def exec_module(module: types.ModuleType) -> None:
            execute(module)
            _patch(module, out_dir)

        loader.exec_module = exec_module
        return spec


if os.environ.get("AIIS_BENCH_PROBE"):
    sys.meta_path.insert(0, _Finder(os.environ["AIIS_BENCH_PROBE"]))
