"""The ``charts`` view and its series: a real faulty run agrees with ``aiis stats --json``
(standalone and on the cluster), the coarse resolutions equal the fine one, depth follows the
queue, old buckets go, and the live view equals a replay."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine.runtime.cli import main
from engine.settings import Settings
from projections.registry import PROJECTIONS
from projections.replay import verify
from projections.runner import PartitionRunner
from projections.series import WINDOWS, read, series
from projections.settings import ProjectionSettings
from projections.storage import ShardStore
from projections.view import ViewConfig
from projections.views import charts
from providers.sandbox import start_sandbox
from tests.conftest import TOPOLOGIES, Topology
from tests.faulty_run import catch_up, faulty_run

from .conftest import Log, error, requested, succeeded

ALL = list(PROJECTIONS.values())
T0 = 1_700_000_000_000  # a multiple of 10 min


@pytest.mark.slow
@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_series_totals_equal_stats_after_a_faulty_run(
    topology: Topology,
    redis: aioredis.Redis,
    settings: Settings,
    proj: ProjectionSettings,
    store: ShardStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a real worker's run (Gemini rate-limited → OpenAI, one dead letter), every
    window's series add up to what `aiis stats --json` reports: completions by outcome, calls
    per provider, USD per provider and per tenant, the queue depth now; OpenAI has latency
    percentiles; `aiis replay --verify` holds with the charts view."""
    async with start_sandbox() as sandbox:
        await faulty_run(settings, sandbox)
    await catch_up(redis, store, settings, proj)
    monkeypatch.setenv("AIIS_REDIS_URL", topology.url)
    monkeypatch.setenv("AIIS_REDIS_CLUSTER", "true" if topology.cluster else "false")
    monkeypatch.setenv("AIIS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("AIIS_PARTITIONS", str(settings.partitions))
    monkeypatch.setenv("AIIS_DATA_DIR", str(settings.data_dir))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stats", "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    now = int(time.time() * 1000)
    done = stats["throughput"]["15m"]
    assert (done["succeeded"], done["dead_lettered"]) == (8, 1)
    for window in WINDOWS:
        s = series(await read(store, settings.partitions, window, now), window, now)
        totals = s["totals"]
        assert totals["completed"] == {
            o: done[o] for o in ("succeeded", "failed", "dead_lettered", "cancelled")
        }, window
        assert totals["calls"] == {
            p: {"ok": h["ok"], "fail": h["fail"]} for p, h in stats["providers"].items()
        }, window
        assert totals["calls"]["gemini"]["ok"] == 0 and totals["calls"]["gemini"]["fail"] > 0
        assert totals["calls"]["openai"]["ok"] == 8
        cost = stats["cost_today"]
        assert totals["usd_nanos_provider"] == {
            p: c["usd_nanos"] for p, c in cost["by_provider"].items() if c["usd_nanos"]
        }, window
        assert totals["usd_nanos_tenant"] == {
            t: c["usd_nanos"] for t, c in cost["by_tenant"].items() if c["usd_nanos"]
        }, window
        assert set(totals["usd_nanos_tenant"]) == {"acme", "globex"}
        waiting = {p: q["waiting"] for p, q in stats["queues"]["by_priority"].items()}
        assert {p: v[-1] for p, v in s["depth"].items()} == waiting, window
        assert set(s["depth"]) == {"high", "normal", "low"}
        assert any(v is not None for v in s["latency"]["openai"]["p95"]), window
        assert all(len(v) == s["n"] for v in s["completed"].values())
        assert [m[1:] for m in s["marks"] if m[1] == "gemini"] == [["gemini", "opened"]]
    assert await verify(store, settings.partitions, ALL, None) == []
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["replay", "--verify"]) == 0
    assert "charts" in capsys.readouterr().out


def _fold(events: list[dict[str, Any]]) -> charts.ChartShard:
    view = charts.load(ViewConfig(), {})
    for e in events:
        view = charts.evolve(view, e)
    return view


def _event(
    etype: str, task: str, ts: int, data: dict[str, Any], tenant: str = "acme"
) -> dict[str, Any]:
    return {"id": f"{ts}-0", "type": etype, "task_id": task, "tenant": tenant, "ts": ts} | {
        "v": 1,
        "data": data,
    }


def _tasks(n: int, spacing_ms: int) -> list[dict[str, Any]]:
    """``n`` tasks one after the other, each requested, started and succeeded (or, every
    fourth, retried then dead-lettered)."""
    out = []
    for i in range(n):
        ts, tid = T0 + i * spacing_ms, f"t{i}"
        out.append(_event("TaskRequested", tid, ts, requested(("high", "low")[i % 2])))
        out.append(_event("TaskStarted", tid, ts + 1, {"attempt": 1, "worker": "w"}))
        if i % 4 == 3:
            err = error("Overloaded", "gemini")
            dead = {"attempt": 1, "error": err, "reason": "retries_exhausted"}
            out.append(_event("TaskDeadLettered", tid, ts + 2, dead))
        else:
            out.append(_event("TaskSucceeded", tid, ts + 2, succeeded(latency=100 + i)))
    return out


def test_coarse_windows_equal_the_fine_one() -> None:
    """Events over 12 minutes: the 1 h and 24 h windows (rolled up, plus the newest 10 s bucket
    added by the reader) total exactly what the 15 min window's 10 s buckets hold."""
    view = _fold(_tasks(70, 10_000))  # one task every 10 s
    entries = dict(view.entries)
    now = T0 + 70 * 10_000
    fine = series([entries], "15m", now)["totals"]
    assert fine["completed"] == {"succeeded": 53, "failed": 0, "dead_lettered": 17, "cancelled": 0}
    for window in ("1h", "24h"):
        assert series([entries], window, now)["totals"] == fine
    assert sum(x for x in series([entries], "15m", now)["completed"]["succeeded"]) == 53


def test_depth_is_the_waiting_tasks_at_each_buckets_end() -> None:
    """Three tasks queue in the first bucket, one starts in the third, two more in the sixth:
    the depth series reads 3, 3, 2, 2, 2, 0 — carried across buckets without events."""
    ev = [_event("TaskRequested", f"t{i}", T0 + i, requested("normal")) for i in range(3)]
    ev.append(_event("TaskStarted", "t0", T0 + 25_000, {"attempt": 1, "worker": "w"}))
    ev += [
        _event("TaskStarted", f"t{i}", T0 + 55_000 + i, {"attempt": 1, "worker": "w"})
        for i in (1, 2)
    ]
    view = _fold(ev)
    s = series([dict(view.entries)], "15m", T0 + 55_000)
    assert s["depth"]["normal"][-6:] == [3, 3, 2, 2, 2, 0]
    assert s["depth"]["normal"][:-6] == [0] * (s["n"] - 6)


def test_old_buckets_are_dropped() -> None:
    """After 20 minutes of events, the 10 s resolution keeps 91 buckets, no more."""
    view = _fold(_tasks(120, 10_000))
    fine = [k for k in view.entries if k.startswith("10s:")]
    assert len(fine) == 91
    assert min(int(k[4:]) for k in fine) == (T0 + 119 * 10_000) // 10_000 - 90


async def test_the_runner_in_small_steps_equals_a_replay(store: ShardStore, log: Log) -> None:
    """Folded by the runner a few events at a time (the shard reloaded in between), the
    charts view equals a rebuild from the log: the newest-bucket rollup survives restarts."""
    for e in _tasks(30, 7_000):
        await log.add(e["type"], e["task_id"], e["data"], e["tenant"], ts=e["ts"])
    while True:
        runner = PartitionRunner(store, 0, [charts.PROJECTION], batch=7)  # a fresh load each time
        if not await runner.step():
            break
    assert await verify(store, 1, [charts.PROJECTION], None) == []
    entries, _ = await store.snapshot(0, "charts")
    assert series([entries], "1h", T0 + 30 * 7_000)["totals"]["completed"]["succeeded"] == 23
