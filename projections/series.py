"""The dashboard's charts: the ``charts`` view's buckets of one window, read from every
partition's shard and merged into per-bucket series (the I/O edge: ``now`` is the caller's).

A window is the last ``n`` buckets of one resolution up to the bucket holding ``now``:
``15m`` = 90 × 10 s, ``1h`` = 60 × 1 min, ``24h`` = 144 × 10 min. Each series has one value per
bucket, oldest first; ``totals`` sums the window (what ``aiis stats`` counts over the same span).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from engine.core.keys import PRIORITIES
from engine.core.store import translate_errors
from projections import histogram
from projections.keys import ShardKeys
from projections.storage import ShardStore
from projections.views.charts import FINE, FINEST_MS, PROJECTION, RESOLUTIONS, merge

# window -> (resolution, buckets shown)
WINDOWS: dict[str, tuple[str, int]] = {"15m": ("10s", 90), "1h": ("1m", 60), "24h": ("10m", 144)}
DEFAULT_WINDOW = "15m"
_WIDTH = {name: width for name, width, _ in RESOLUTIONS}
OUTCOMES = ("succeeded", "failed", "dead_lettered", "cancelled")


def buckets(window: str, now_ms: int) -> tuple[str, int, list[int]]:
    """The window's resolution, bucket width (ms) and bucket numbers, oldest first."""
    res, n = WINDOWS[window]
    width = _WIDTH[res]
    newest = now_ms // width
    return res, width, list(range(newest - n + 1, newest + 1))


async def read(
    store: ShardStore, partitions: int, window: str, now_ms: int
) -> list[dict[str, Any]]:
    """Each partition's records of the window's buckets, its depth now and its newest 10 s
    bucket (``~hot``, which a coarse window adds itself), by entry key: HMGETs of one hash per
    partition, so each read touches one cluster slot."""
    res, _, numbers = buckets(window, now_ms)
    fields = [f"{res}:{b}" for b in numbers] + ["~depth", "~hot"]
    views = [ShardKeys(store.namespace, p, PROJECTION.name).view for p in range(partitions)]
    with translate_errors():
        async with store.redis.pipeline(transaction=False) as pipe:
            for view in views:
                pipe.hmget(view, fields)
            replies = await pipe.execute()
        shards = [
            {f: orjson.loads(v) for f, v in zip(fields, values, strict=True) if v is not None}
            for values in replies
        ]
        if res != FINE:
            hot = [f"{FINE}:{s['~hot']}" if "~hot" in s else None for s in shards]
            async with store.redis.pipeline(transaction=False) as pipe:
                for view, key in zip(views, hot, strict=True):
                    if key is not None:
                        pipe.hget(view, key)
                recs = iter(await pipe.execute())
            for shard, key in zip(shards, hot, strict=True):
                raw = next(recs) if key is not None else None
                if key is not None and raw is not None:
                    shard[key] = orjson.loads(raw)
    return shards


def with_hot(entries: dict[str, Any], res: str) -> dict[str, Any]:
    """``entries`` of a coarse resolution with the newest 10 s bucket added in, as the view's
    rollup will add it (a copy; the 10 s resolution is returned as is)."""
    hot = entries.get("~hot")
    fine = entries.get(f"{FINE}:{hot}") if hot is not None else None
    if res == FINE or fine is None or hot is None:
        return entries
    key = f"{res}:{hot * FINEST_MS // _WIDTH[res]}"
    out = dict(entries)
    target = orjson.loads(orjson.dumps(entries[key])) if key in entries else {"d0": fine["d0"]}
    merge(target, fine)
    out[key] = target
    return out


def _ordered(names: Iterable[str], first: Sequence[str] = ()) -> list[str]:
    names = set(names)
    return [n for n in first if n in names] + sorted(names - set(first))


def series(shards: Sequence[dict[str, Any]], window: str, now_ms: int) -> dict[str, Any]:
    """The window's series, merged over ``shards`` (one entries dict per partition)."""
    res, width, numbers = buckets(window, now_ms)
    n = len(numbers)
    keys = [f"{res}:{b}" for b in numbers]
    done: dict[str, list[int]] = {o: [0] * n for o in OUTCOMES}
    calls: dict[str, dict[str, list[int]]] = {}
    hists: dict[str, list[dict[str, int]]] = {}
    usd_p: dict[str, list[int]] = {}
    usd_t: dict[str, list[int]] = {}
    depth: dict[str, list[int]] = {}
    marks: list[list[Any]] = []
    for raw in shards:
        entries = with_hot(raw, res)
        recs = [entries.get(k) for k in keys]
        _depth_into(depth, recs, entries.get("~depth") or {}, n)
        for i, rec in enumerate(recs):
            if rec is None:
                continue
            for outcome, c in rec.get("done", {}).items():
                done.setdefault(outcome, [0] * n)[i] += c
            for provider, (ok, fail) in rec.get("calls", {}).items():
                pc = calls.setdefault(provider, {"ok": [0] * n, "fail": [0] * n})
                pc["ok"][i] += ok
                pc["fail"][i] += fail
            for provider, hist in rec.get("lat", {}).items():
                slots = hists.setdefault(provider, [{} for _ in range(n)])
                slots[i] = histogram.merge((slots[i], hist))
            for part, target in (("usd_p", usd_p), ("usd_t", usd_t)):
                for name, nanos in rec.get(part, {}).items():
                    target.setdefault(name, [0] * n)[i] += nanos
            marks += rec.get("marks", [])
    latency = {
        provider: {
            f"p{q}": [histogram.percentile(h, q / 100) for h in hists[provider]] for q in (50, 95)
        }
        for provider in sorted(hists)
    }
    errors: dict[str, dict[str, list[Any]]] = {
        provider: {
            **c,
            "rate": [
                round(f / (o + f), 4) if o + f else None
                for o, f in zip(c["ok"], c["fail"], strict=True)
            ],
        }
        for provider, c in sorted(calls.items())
    }
    return {
        "window": window,
        "step_ms": width,
        "start_ms": numbers[0] * width,
        "n": n,
        "completed": done,
        "depth": {p: depth[p] for p in _ordered(depth, [p.value for p in PRIORITIES])},
        "latency": latency,
        "calls": errors,
        "marks": sorted(marks),
        "usd_provider": {k: [v / 1e9 for v in usd_p[k]] for k in sorted(usd_p)},
        "usd_tenant": {k: [v / 1e9 for v in usd_t[k]] for k in sorted(usd_t)},
        "totals": {
            "completed": {o: sum(v) for o, v in done.items()},
            "calls": {p: {"ok": sum(c["ok"]), "fail": sum(c["fail"])} for p, c in calls.items()},
            "usd_nanos_provider": {k: sum(v) for k, v in sorted(usd_p.items())},
            "usd_nanos_tenant": {k: sum(v) for k, v in sorted(usd_t.items())},
        },
    }


def _depth_into(
    depth: dict[str, list[int]], recs: list[dict[str, Any] | None], now: dict[str, int], n: int
) -> None:
    """Add one partition's waiting tasks per priority, bucket by bucket, at each bucket's end.
    Every change opens its bucket, so a bucket's end is the next bucket's start (``d0``), or
    the depth now after the last one; a bucket without a record keeps the value before it."""
    opened = [(i, r) for i, r in enumerate(recs) if r is not None]
    carry: dict[str, int] = opened[0][1]["d0"] if opened else now
    ends: dict[int, dict[str, int]] = {}
    for j, (i, _) in enumerate(opened):
        ends[i] = opened[j + 1][1]["d0"] if j + 1 < len(opened) else now
    for i in range(n):
        carry = ends.get(i, carry)
        for priority, value in carry.items():
            depth.setdefault(priority, [0] * n)[i] += value
