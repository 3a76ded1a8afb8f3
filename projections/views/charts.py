"""``charts``: the dashboard's time series — per time bucket of event time, at three
resolutions (10 s for the last 15 min, 1 min for the last hour, 10 min for the last day):
tasks completed by outcome, queue depth per priority, provider calls (ok / failed) with a
latency histogram, breaker open/close marks, and USD by provider and by tenant.

Counted with the rules of the other views, so a window's totals equal theirs: outcomes as
``queue_length``'s throughput, calls and latencies as ``provider_health`` (a router ``attempt``
notice counts the call, else the event that ended the attempt; ``InvalidRequest`` is the
caller's fault, not a failure; only successful calls have a latency), USD as ``cost``
(``TaskSucceeded`` with a price, and failed calls the provider billed), queue depth as
``queue_length``'s ``waiting``.

An event is counted once, in its 10 s bucket; when a newer 10 s bucket opens, the previous one
is added into its 1 min and 10 min buckets (``rollup``) — a third of the work of counting every
event three times, which replay speed needs. So the coarse buckets lack the newest 10 s bucket
(``~hot``), which readers add themselves (``projections.series``); an event older than
``~hot`` goes to every resolution at once (its 10 s bucket was rolled up already).

Entries:
    <res>:<bucket>  {"d0": {priority: waiting when the bucket opened}, "done": {outcome: n},
                     "calls": {provider: [ok, fail]}, "lat": {provider: histogram},
                     "usd_p": {provider: nanos}, "usd_t": {tenant: nanos},
                     "marks": [[ts, provider, "opened" | "closed"]]} (parts absent until
                    used); ``<res>`` is ``10s``, ``1m`` or ``10m``, ``<bucket>`` the event
                    time // its width; a resolution keeps its ``keep`` newest buckets. Every
                    change of depth opens its bucket, so a bucket's depth at its end is the
                    next bucket's ``d0`` (or ``~depth`` for the newest).
    ~hot            the newest 10 s bucket (not yet in the coarse ones)
    ~depth          {priority: waiting}, now
    ~p:<task>       [priority, "w" waiting | "o" otherwise], for each task not yet terminal
    ~att:<task>     [[attempt, provider], …] the router's notices reported, until the attempt ends
"""

from __future__ import annotations

from typing import Any

from projections import histogram
from projections.view import Envelope, Projection, Record, Shard, ViewConfig
from projections.views.cost import to_nanos
from projections.views.queue_length import UNKNOWN_PRIORITY

# name, bucket width (ms), buckets kept: one more than the window, for the bucket in progress;
# each width a multiple of the first
RESOLUTIONS: tuple[tuple[str, int, int], ...] = (
    ("10s", 10_000, 91),
    ("1m", 60_000, 61),
    ("10m", 600_000, 145),
)
MAX_MARKS = 32  # breaker marks kept per bucket (a flapping breaker must not grow a record)
CLIENT_ERRORS = frozenset({"InvalidRequest"})
FINE, FINEST_MS = RESOLUTIONS[0][0], RESOLUTIONS[0][1]
_MOVES = {"TaskStarted": "o", "TaskRetryScheduled": "o", "TaskRequeued": "w"}
_DONE = {
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskDeadLettered": "dead_lettered",
    "TaskCancelled": "cancelled",
}
Rec = dict[str, Any]


class ChartShard(Shard):
    """The entries, plus per resolution the bucket numbers held, and the newest 10 s bucket."""

    __slots__ = ("buckets", "hot", "hot_key", "hot_recs")

    def __init__(self, config: ViewConfig, entries: dict[str, Record] | None = None) -> None:
        super().__init__(config, entries)
        self.buckets: list[set[int]] = [set() for _ in RESOLUTIONS]
        for i, (name, _, _) in enumerate(RESOLUTIONS):
            prefix = name + ":"
            for key in self.entries:
                if key.startswith(prefix):
                    self.buckets[i].add(int(key[len(prefix) :]))
        self.hot: int | None = self.entries.get("~hot")
        self.hot_key = f"{FINE}:{self.hot}"
        rec = self.entries.get(self.hot_key)
        self.hot_recs: list[Rec] = [] if rec is None else [rec]


def load(config: ViewConfig, entries: dict[str, Record]) -> ChartShard:
    return ChartShard(config, entries)


def merge(target: Rec, source: Rec) -> None:
    """Add the counts of ``source`` into ``target`` (its ``d0`` stays)."""
    for part in ("done", "usd_p", "usd_t"):
        src = source.get(part)
        if src:
            dst = target.setdefault(part, {})
            for k, n in src.items():
                dst[k] = dst.get(k, 0) + n
    calls = source.get("calls")
    if calls:
        dst = target.setdefault("calls", {})
        for k, (ok, fail) in calls.items():
            pair = dst.setdefault(k, [0, 0])
            pair[0] += ok
            pair[1] += fail
    lat = source.get("lat")
    if lat:
        dst = target.setdefault("lat", {})
        for k, hist in lat.items():
            dst[k] = histogram.merge((dst.get(k, {}), hist))
    marks = source.get("marks")
    if marks:
        dst_marks = target.setdefault("marks", [])
        dst_marks += marks[: MAX_MARKS - len(dst_marks)]


def _bucket(view: ChartShard, i: int, bucket: int, d0: dict[str, int]) -> Rec | None:
    """Resolution ``i``'s record of ``bucket``, marked changed (opened with depth ``d0``);
    None when older than the resolution keeps."""
    name, _, keep = RESOLUTIONS[i]
    key = f"{name}:{bucket}"
    rec = view.entries.get(key)
    if rec is None:
        held = view.buckets[i]
        newest = max(held) if held else bucket
        if bucket <= newest - keep:
            return None
        rec = view.entries[key] = {"d0": dict(d0)}
        held.add(bucket)
        if bucket > newest:
            for old in [b for b in held if b <= bucket - keep]:
                held.discard(old)
                view.drop(f"{name}:{old}")
    view.changed.add(key)
    return rec


def _records(view: ChartShard, ts: int) -> list[Rec]:
    """The records an event at ``ts`` is counted in (marked changed)."""
    fine = ts // FINEST_MS
    if fine == view.hot:
        view.changed.add(view.hot_key)
        return view.hot_recs
    depth = view.entries.get("~depth") or {}
    if view.hot is None or fine > view.hot:  # a newer 10 s bucket: roll the previous one up
        if view.hot is not None and view.hot_recs:
            rollup(view, view.hot, view.hot_recs[0])
        rec = _bucket(view, 0, fine, depth)
        assert rec is not None  # the newest bucket is kept
        view.hot, view.hot_key, view.hot_recs = fine, f"{FINE}:{fine}", [rec]
        view.put("~hot", fine)
        return view.hot_recs
    out = []  # older than the newest: its 10 s bucket was rolled up already (or never opened)
    for i, (_, width, _) in enumerate(RESOLUTIONS):
        rec = _bucket(view, i, fine * FINEST_MS // width, depth)
        if rec is not None:
            out.append(rec)
    return out


def rollup(view: ChartShard, fine: int, rec: Rec) -> None:
    """Add the 10 s bucket ``fine`` into its coarse buckets."""
    for i, (_, width, _) in enumerate(RESOLUTIONS[1:], start=1):
        target = _bucket(view, i, fine * FINEST_MS // width, rec["d0"])
        if target is not None:
            merge(target, rec)


def _depth(view: ChartShard, priority: str, delta: int) -> None:
    """Call after ``_records`` (a bucket it opened starts at the depth before the change)."""
    depth = view.entries.get("~depth")
    if depth is None:
        depth = view.entries["~depth"] = {}
    depth[priority] = depth.get(priority, 0) + delta
    view.changed.add("~depth")


def _add(recs: list[Rec], part: str, name: str, n: int) -> None:
    for rec in recs:
        sub = rec.get(part)
        if sub is None:
            rec[part] = {name: n}
        else:
            sub[name] = sub.get(name, 0) + n


def _call(recs: list[Rec], provider: str, error_class: str | None, lat: Any) -> None:
    """One provider call (``error_class`` None: it succeeded)."""
    if error_class in CLIENT_ERRORS:
        return  # the caller's fault: not a failure of the provider
    failed = error_class is not None
    key = None if failed or not isinstance(lat, int) else histogram.bin_of(lat)
    for rec in recs:
        calls = rec.get("calls")
        if calls is None:
            calls = rec["calls"] = {}
        pair = calls.get(provider)
        if pair is None:
            pair = calls[provider] = [0, 0]
        pair[1 if failed else 0] += 1
        if key is not None:
            lats = rec.get("lat")
            if lats is None:
                lats = rec["lat"] = {}
            hist = lats.get(provider)
            if hist is None:
                lats[provider] = {key: 1}
            else:
                hist[key] = hist.get(key, 0) + 1


def _usd(recs: list[Rec], tenant: str, provider: str, cost: Any) -> None:
    if not isinstance(cost, int | float) or isinstance(cost, bool):
        return  # unknown price: never $0 (the cost view counts it apart)
    nanos = to_nanos(float(cost))
    _add(recs, "usd_p", provider, nanos)
    _add(recs, "usd_t", tenant, nanos)


def _notice(view: ChartShard, event: Envelope, data: dict[str, Any]) -> None:
    notice = data["notice"]
    detail = data.get("detail") or {}
    provider = detail.get("provider")
    if not isinstance(provider, str):
        return
    if notice == "attempt":
        cls = detail.get("error_class")
        if cls is not None and not isinstance(cls, str):
            cls = "unknown"
        latency = detail.get("latency_ms")
        outcome = detail.get("outcome")
        if outcome is None and cls is None and latency is None:
            return  # written before the call: not a call
        recs = _records(view, event["ts"])
        if outcome == "error":
            cls = cls or "unknown"
            if isinstance(detail.get("usage"), dict) and isinstance(detail.get("model"), str):
                _usd(recs, event["tenant"], provider, detail.get("cost_usd"))  # billed anyway
        _call(recs, provider, cls or None, latency)
        _reported(view, event, data, provider)
    elif notice == "skipped":
        _reported(view, event, data, provider)
    elif notice in {"circuit_opened", "circuit_closed"}:
        state = "opened" if notice == "circuit_opened" else "closed"
        for rec in _records(view, event["ts"]):
            marks = rec.get("marks")
            if marks is None:
                marks = rec["marks"] = []
            if len(marks) < MAX_MARKS:
                marks.append([event["ts"], provider, state])


def _reported(view: ChartShard, event: Envelope, data: dict[str, Any], provider: str) -> None:
    """Remember that a notice reported this attempt's call to ``provider`` (or its skip)."""
    key = "~att:" + event["task_id"]
    seen = list(view.entries.get(key, []))
    seen.append([data["attempt"], provider])
    view.put(key, seen)


def _ended(
    view: ChartShard, recs: list[dict[str, Any]], event: Envelope, data: dict[str, Any]
) -> None:
    """The attempt ended: count its provider call, unless a notice reported it."""
    key = "~att:" + event["task_id"]
    seen = view.entries.get(key)
    if seen is not None:
        view.drop(key)
    if event["type"] == "TaskSucceeded":
        if data.get("cached"):
            return  # served from cache: no provider call happened
        provider, cls, latency = data["provider"], None, data["latency_ms"]
    else:
        error = data.get("error")
        if error is None or not error.get("provider"):
            return  # not a provider's failure (deadline, max deliveries, internal)
        provider, cls, latency = error["provider"], error.get("error_class") or "unknown", None
    if seen is not None and any(s[0] == data["attempt"] and s[1] == provider for s in seen):
        return
    _call(recs, provider, cls, latency)


def evolve(view: ChartShard, event: Envelope) -> ChartShard:
    etype = event["type"]
    if etype == "TaskProgress":
        data = event["data"]
        if data.get("notice"):
            _notice(view, event, data)
        return view
    entries = view.entries
    key = "~p:" + event["task_id"]
    if etype == "TaskRequested":
        prev = entries.get(key)
        priority = event["data"]["priority"]
        _records(view, event["ts"])
        if prev is not None and prev[1] == "w":  # a second TaskRequested: a restart
            _depth(view, prev[0], -1)
        view.put(key, [priority, "w"])
        _depth(view, priority, 1)
        return view
    now = _MOVES.get(etype)
    if now is not None:
        # as queue_length: a task whose TaskRequested the log no longer holds is "unknown"
        live = entries.get(key)
        priority, was = (live[0], live[1]) if live is not None else (UNKNOWN_PRIORITY, None)
        if now != was:
            view.put(key, [priority, now])
        if etype == "TaskRetryScheduled":
            _ended(view, _records(view, event["ts"]), event, event["data"])
        if now != was and (was == "w" or now == "w"):
            _records(view, event["ts"])
            _depth(view, priority, 1 if now == "w" else -1)
        return view
    outcome = _DONE.get(etype)
    if outcome is None:
        return view  # ops events (alerts, webhook attempts): no task transition
    recs = _records(view, event["ts"])
    live = entries.get(key)
    if live is not None:
        view.drop(key)
        if live[1] == "w":
            _depth(view, live[0], -1)
    _add(recs, "done", outcome, 1)
    if etype == "TaskCancelled":
        view.drop("~att:" + event["task_id"])
        return view
    data = event["data"]
    _ended(view, recs, event, data)
    if etype == "TaskSucceeded":
        _usd(recs, event["tenant"], data["provider"], data["cost_usd"])
    return view


PROJECTION = Projection(
    name="charts",
    description="time series for the dashboard: completions by outcome, queue depth, provider "
    "calls and latency, breaker marks, USD by provider and tenant (10 s / 1 min / 10 min)",
    load=load,
    evolve=evolve,
)
