"""``aiis stats`` data: the views' shards read and merged into one JSON-ready report.

Queue lengths and throughput come from ``queue_length``, cost from ``cost``, provider health
from ``provider_health``; the dead-letter stream's current length is read directly (the view
counts dead letters ever written; ``aiis dlq purge`` is not an event). Time windows ("today",
"last 5 minutes") use the caller's clock — this is the I/O edge, not a view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.core.keys import PRIORITIES
from engine.core.store import translate_errors
from projections import histogram
from projections.keys import ShardKeys, dlq_key
from projections.registry import PROJECTIONS
from projections.status import lag_report
from projections.storage import ShardStore
from projections.view import public
from projections.views import cost, queue_length

THROUGHPUT_WINDOWS = (1, 5, 15)  # minutes


def _sum_into(target: dict[str, int], source: dict[str, int]) -> None:
    for k, v in source.items():
        target[k] = target.get(k, 0) + v


def queues(shards: Iterable[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    by_priority: dict[str, dict[str, int]] = {}
    by_partition: dict[str, dict[str, dict[str, int]]] = {}
    for partition, entries in shards:
        for key, rec in public(entries).items():
            if key.startswith("q:"):
                prio = key[2:]
                _sum_into(by_priority.setdefault(prio, queue_length.new_counters()), rec)
                by_partition.setdefault(str(partition), {})[prio] = rec
    order = [p.value for p in PRIORITIES] + sorted(set(by_priority) - {p.value for p in PRIORITIES})
    return {
        "by_priority": {p: by_priority[p] for p in order if p in by_priority},
        "by_partition": by_partition,
    }


def throughput(shards: Iterable[dict[str, Any]], now_ms: int) -> dict[str, Any]:
    minutes: dict[int, dict[str, int]] = {}
    for entries in shards:
        for key, rec in entries.items():
            if key.startswith("tp:"):
                _sum_into(minutes.setdefault(int(key[3:]), {}), rec)
    now_min = now_ms // 60_000
    out: dict[str, Any] = {}
    for window in THROUGHPUT_WINDOWS:
        total = queue_length.new_throughput()
        for minute, rec in minutes.items():
            if now_min - window < minute <= now_min:
                _sum_into(total, rec)
        done = total["succeeded"] + total["failed"] + total["dead_lettered"] + total["cancelled"]
        out[f"{window}m"] = {**total, "completed_per_s": round(done / (window * 60), 2)}
    return out


def costs(shards: Iterable[dict[str, Any]], day: str) -> dict[str, Any]:
    """Cost of one UTC day by provider, by tenant and by model."""
    groups: dict[str, dict[str, dict[str, int]]] = {"provider": {}, "tenant": {}, "model": {}}
    total = cost.new_record()
    for entries in shards:
        for key, rec in entries.items():
            d, provider, model, tenant = cost.split_key(key)
            if d != day:
                continue
            _sum_into(total, rec)
            for dim, value in (
                ("provider", provider),
                ("tenant", tenant),
                ("model", f"{provider}/{model}"),
            ):
                _sum_into(groups[dim].setdefault(value, cost.new_record()), rec)

    def usd(rec: dict[str, int]) -> dict[str, Any]:
        return {**rec, "usd": rec["usd_nanos"] / 1e9}

    return {
        "day": day,
        "total": usd(total),
        **{f"by_{dim}": {k: usd(v) for k, v in sorted(g.items())} for dim, g in groups.items()},
    }


def health(shards: Iterable[dict[str, Any]], bucket_ms: int, window_buckets: int) -> dict[str, Any]:
    merged: dict[str, list[dict[str, Any]]] = {}
    for entries in shards:
        for name, rec in public(entries).items():
            merged.setdefault(name, []).append(rec)
    out: dict[str, Any] = {}
    for name, recs in sorted(merged.items()):
        last_ts = max((r["last_ts"] or 0) for r in recs)
        newest = last_ts // bucket_ms
        ok = fail = 0
        window_hists = []
        for r in recs:
            for b, (b_ok, b_fail, hist) in r["win"].items():
                if newest - window_buckets < int(b) <= newest:
                    ok, fail = ok + b_ok, fail + b_fail
                    window_hists.append(hist)
        errors: dict[str, int] = {}
        for r in recs:
            _sum_into(errors, r["errors"])
        breaker = max(recs, key=lambda r: r["breaker_ts"] or -1)
        win_hist = histogram.merge(window_hists)
        all_hist = histogram.merge(r["lat"] for r in recs)
        out[name] = {
            "ok": sum(r["ok"] for r in recs),
            "fail": sum(r["fail"] for r in recs),
            "client_errors": sum(r["client_errors"] for r in recs),
            "skipped_open": sum(r.get("skipped_open", 0) for r in recs),
            "skipped_rate": sum(r.get("skipped_rate", 0) for r in recs),
            "skipped_other": sum(r.get("skipped_other", 0) for r in recs),
            "errors": dict(sorted(errors.items())),
            "window": {
                "ok": ok,
                "fail": fail,
                "success_rate": round(ok / (ok + fail), 4) if ok + fail else None,
                "seconds": window_buckets * bucket_ms // 1000,
            },
            "latency_ms": {f"p{q}": histogram.percentile(win_hist, q / 100) for q in (50, 95, 99)},
            "latency_ms_all": {
                f"p{q}": histogram.percentile(all_hist, q / 100) for q in (50, 95, 99)
            },
            "breaker": breaker["breaker"],
            "breaker_ts": breaker["breaker_ts"],
            "breaker_opened": sum(r["opened"] for r in recs),
            "last_ts": last_ts or None,
        }
    return out


async def gather(store: ShardStore, partitions: int, now_ms: int, day: str) -> dict[str, Any]:
    """The whole ``aiis stats`` report."""
    shards: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for name in ("queue_length", "cost", "provider_health"):
        for p in range(partitions):
            entries, _ = await store.snapshot(p, name)
            shards.setdefault(name, []).append((p, entries))
    redis = store.redis
    with translate_errors():
        dlq = sum([int(await redis.xlen(dlq_key(store.namespace, p))) for p in range(partitions)])
        tasks = sum(
            [
                int(await redis.hlen(ShardKeys(store.namespace, p, "task_state").view))
                for p in range(partitions)
            ]
        )
    cfg = store.config
    return {
        "queues": {**queues(shards["queue_length"]), "dlq_depth": dlq},
        "throughput": throughput((e for _, e in shards["queue_length"]), now_ms),
        "cost_today": costs((e for _, e in shards["cost"]), day),
        "providers": health(
            (e for _, e in shards["provider_health"]),
            cfg.health_bucket_ms,
            min(5, cfg.health_buckets),
        ),
        "tasks_tracked": tasks,
        "projections": await lag_report(redis, store.namespace, partitions, list(PROJECTIONS)),
    }
