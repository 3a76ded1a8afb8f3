"""``GET /metrics``: the gateway's counters and gauges, queue lengths and in-flight counts read
from Redis (XLEN, XPENDING, XINFO CONSUMERS) at scrape time, the projections' views (provider
health, cost today, projection lag), and task counters the gateway's log reader keeps
(``TaskMetrics``: processing time, tokens, cost since the gateway started), in the Prometheus
text format. Every name is listed in docs/metrics.md."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError

from engine.core import tolerant
from engine.core.keys import GROUP, PRIORITIES, autoscale_pattern, autoscale_pool_of
from engine.core.store import translate_errors

if TYPE_CHECKING:
    from gateway.context import Context


DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_SERIES = 1000  # label sets per family: kinds x providers x outcomes stay far below
OVERHEAD_BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """A labelled histogram this process fills (``aiis_overhead_seconds``)."""

    def __init__(self, name: str, doc: str, label: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.label, self.buckets = name, doc, label, buckets
        self.counts: dict[str, list[float]] = {}
        self.sums: defaultdict[str, float] = defaultdict(float)

    def observe(self, value: float, label: str) -> None:
        counts = self.counts.get(label)
        if counts is None:
            if len(self.counts) >= MAX_SERIES:
                return
            counts = self.counts[label] = [0.0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[label] += value

    def family(self) -> HistogramMetricFamily:
        hist = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, counts in sorted(self.counts.items()):
            cumulative, running = [], 0.0
            for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
                running += n
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            hist.add_metric([label], cumulative, self.sums[label])
        return hist


def overhead_histogram() -> Histogram:
    return Histogram(
        "aiis_overhead_seconds",
        "OpenAI-compatible requests: duration minus the time spent waiting on provider calls",
        "stream",
        OVERHEAD_BUCKETS_S,
    )


class TaskMetrics:
    """Counters fed by the gateway's log reader (every event passes through it once)."""

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str], list[float]] = {}  # (kind, provider) -> buckets
        self.duration_sum: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.tasks: Counter[tuple[str, str]] = Counter()  # (kind, outcome)
        self.tokens: Counter[tuple[str, str]] = Counter()  # (provider, direction)
        self.cost: defaultdict[str, float] = defaultdict(float)  # provider -> USD
        self.cached: Counter[str] = Counter()  # provider -> cache hits

    def finished(self, kind: str, event_type: str, data: Mapping[str, Any]) -> None:
        outcome = {
            "TaskSucceeded": "succeeded",
            "TaskFailed": "failed",
            "TaskDeadLettered": "dead_lettered",
            "TaskCancelled": "cancelled",
        }[event_type]
        if len(self.tasks) < MAX_SERIES:
            self.tasks[(kind, outcome)] += 1
        if outcome != "succeeded":
            return
        provider = str(data.get("provider", "unknown"))
        if data.get("cached"):
            self.cached[provider] += 1
            return
        key = (kind, provider)
        if key not in self.durations and len(self.durations) >= MAX_SERIES:
            return
        buckets = self.durations.setdefault(key, [0.0] * (len(DURATION_BUCKETS_S) + 1))
        seconds = float(data.get("latency_ms") or 0) / 1000
        buckets[bisect.bisect_left(DURATION_BUCKETS_S, seconds)] += 1
        self.duration_sum[key] += seconds
        usage = data.get("usage") or {}
        for direction in ("input", "output", "cached", "reasoning"):
            self.tokens[(provider, direction)] += int(usage.get(f"{direction}_tokens") or 0)
        self.cost[provider] += float(data.get("cost_usd") or 0.0)

    def families(self) -> list[Any]:
        hist = HistogramMetricFamily(
            "aiis_task_duration_seconds",
            "Provider call time of succeeded tasks (latency_ms), by kind and provider",
            labels=["kind", "provider"],
        )
        for (kind, provider), counts in sorted(self.durations.items()):
            cumulative, running = [], 0.0
            for bound, n in zip((*DURATION_BUCKETS_S, float("inf")), counts, strict=True):
                running += n
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            hist.add_metric([kind, provider], cumulative, self.duration_sum[(kind, provider)])
        tasks = CounterMetricFamily(
            "aiis_tasks_finished", "Terminal events by kind and outcome", labels=["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(self.tasks.items()):
            tasks.add_metric([kind, outcome], n)
        tokens = CounterMetricFamily(
            "aiis_tokens", "Tokens used by provider and direction", labels=["provider", "direction"]
        )
        for (provider, direction), n in sorted(self.tokens.items()):
            tokens.add_metric([provider, direction], n)
        cost = CounterMetricFamily("aiis_cost_usd", "Cost in USD by provider", labels=["provider"])
        for provider, usd in sorted(self.cost.items()):
            cost.add_metric([provider], usd)
        cached = CounterMetricFamily(
            "aiis_cache_hits", "Tasks answered from the result cache", labels=["provider"]
        )
        for provider, n in sorted(self.cached.items()):
            cached.add_metric([provider], n)
        return [hist, tasks, tokens, cost, cached]


def _report_families(report: Mapping[str, Any] | None) -> list[Any]:
    """Provider health, cost today and projection lag from the projections' views."""
    if not report:
        return []
    rate = GaugeMetricFamily(
        "aiis_provider_success_rate",
        "Share of a provider's calls that succeeded in the health window",
        labels=["provider"],
    )
    latency = GaugeMetricFamily(
        "aiis_provider_latency_ms",
        "Provider call latency percentiles in the health window",
        labels=["provider", "quantile"],
    )
    calls = CounterMetricFamily(
        "aiis_provider_calls", "Provider calls by outcome", labels=["provider", "outcome"]
    )
    skipped = CounterMetricFamily(
        "aiis_provider_skipped",
        "Provider calls not made: its circuit open, or no rate-limit slot (not calls)",
        labels=["provider", "reason"],
    )
    breaker = GaugeMetricFamily(
        "aiis_provider_breaker_open", "1 while the provider's circuit is open", labels=["provider"]
    )
    opened = CounterMetricFamily(
        "aiis_provider_breaker_opened", "Times the provider's circuit opened", labels=["provider"]
    )
    for name, h in sorted((report.get("providers") or {}).items()):
        window = h.get("window") or {}
        if window.get("success_rate") is not None:
            rate.add_metric([name], float(window["success_rate"]))
        for q, v in (h.get("latency_ms") or {}).items():
            if v is not None:
                latency.add_metric([name, q], float(v))
        calls.add_metric([name, "ok"], float(h.get("ok") or 0))
        calls.add_metric([name, "failed"], float(h.get("fail") or 0))
        calls.add_metric([name, "client_error"], float(h.get("client_errors") or 0))
        for reason in ("open", "rate", "other"):
            skipped.add_metric([name, reason], float(h.get(f"skipped_{reason}") or 0))
        breaker.add_metric([name], 1.0 if h.get("breaker") == "opened" else 0.0)
        opened.add_metric([name], float(h.get("breaker_opened") or 0))
    cost_today = GaugeMetricFamily(
        "aiis_cost_usd_today", "Cost of the UTC day so far, by tenant", labels=["tenant"]
    )
    for tenant, rec in sorted(((report.get("cost_today") or {}).get("by_tenant") or {}).items()):
        cost_today.add_metric([tenant], float(rec.get("usd") or 0.0))
    lag = GaugeMetricFamily(
        "aiis_projection_lag_ms", "How far each projection is behind the log", labels=["projection"]
    )
    behind = GaugeMetricFamily(
        "aiis_projection_behind_events",
        "Log entries a projection has yet to apply",
        labels=["projection"],
    )
    for name, st in sorted((report.get("projections") or {}).items()):
        lag.add_metric([name], float(st.get("lag_ms") or 0))
        behind.add_metric([name], float(st.get("behind") or 0))
    return [rate, latency, calls, skipped, breaker, opened, cost_today, lag, behind]


async def _workers(ctx: Context, in_flight: int) -> list[GaugeMetricFamily]:
    """Live worker consumers (seen within the visibility timeout) and their utilisation,
    in flight / (workers x AIIS_CONCURRENCY of this deployment)."""
    store = ctx.client.store
    settings = ctx.client.settings
    live: set[str] = set()
    with translate_errors():
        for keys in store.partitions:
            for prio in PRIORITIES:
                try:
                    consumers: Any = await store.redis.xinfo_consumers(keys.queue(prio), GROUP)
                except ResponseError:
                    continue
                for c in consumers:
                    if int(c.get("idle", 0)) <= settings.visibility_timeout_s * 1000:
                        name = c.get("name")
                        live.add(name.decode() if isinstance(name, bytes) else str(name))
    capacity = len(live) * settings.concurrency
    return [
        GaugeMetricFamily("aiis_workers", "Worker processes seen recently", value=len(live)),
        GaugeMetricFamily(
            "aiis_worker_utilisation",
            "Calls in flight over the workers' capacity (assumes one AIIS_CONCURRENCY)",
            value=in_flight / capacity if capacity else 0.0,
        ),
    ]


class _Snapshot(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


async def _queue_lengths(ctx: Context) -> list[tuple[str, str, int]]:
    store = ctx.client.store
    labels: list[tuple[str, str]] = []
    with translate_errors():
        async with store.redis.pipeline(transaction=False) as pipe:
            for p, keys in enumerate(store.partitions):
                for prio in PRIORITIES:
                    pipe.xlen(keys.queue(prio))
                    labels.append((str(p), prio.value))
                pipe.zcard(keys.delayed)
                labels.append((str(p), "delayed"))
                pipe.xlen(keys.dlq)
                labels.append((str(p), "dead_letter"))
            values = await pipe.execute()
    return [(p, q, int(v)) for (p, q), v in zip(labels, values, strict=True)]


async def _pool_metrics(ctx: Context) -> list[GaugeMetricFamily]:
    """Autoscaled worker pools, as published by ``aiis worker --autoscale`` (engine/autoscale)."""
    redis = ctx.client.store.redis
    names = {
        "current": ("aiis_worker_pool_processes", "Worker processes running in the pool"),
        "target": ("aiis_worker_pool_target", "Worker processes the autoscaler wants"),
        "max": ("aiis_worker_pool_max", "Upper bound of the pool (--autoscale MIN:MAX)"),
    }
    families = {f: GaugeMetricFamily(n, doc, labels=["pool"]) for f, (n, doc) in names.items()}
    with translate_errors():
        pattern = autoscale_pattern(ctx.client.settings.namespace)
        keys = [k async for k in redis.scan_iter(match=pattern, count=100)]
        for key in keys[:1000]:
            fields = await redis.hgetall(key)
            pool = autoscale_pool_of(ctx.client.settings.namespace, key)
            for field, family in families.items():
                value = fields.get(field.encode())
                if value is not None:
                    family.add_metric([pool], float(value))
    return list(families.values())


async def _in_flight(ctx: Context) -> list[tuple[str, str, int]]:
    """Entries handed to a worker and not finished (the group's pending count), per queue."""
    store = ctx.client.store
    out: list[tuple[str, str, int]] = []
    with translate_errors():
        for p, keys in enumerate(store.partitions):
            for prio in PRIORITIES:
                try:
                    summary: Any = await store.redis.xpending(keys.queue(prio), GROUP)
                except ResponseError:  # no stream or group yet
                    continue
                out.append((str(p), prio.value, int(summary["pending"])))
    return out


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def local_families(ctx: Context) -> list[Any]:
    """The families this process alone knows (its connections, submits, errors, fan-out and
    the task counters its log reader keeps); the rest are read from Redis at scrape time."""
    hub, c = ctx.hub, ctx.counters
    fam: list[Any] = [
        GaugeMetricFamily(
            "aiis_gateway_open_connections", "Open WebSocket connections", value=ctx.connections
        ),
        GaugeMetricFamily(
            "aiis_gateway_open_sse_streams", "Open SSE streams", value=ctx.sse_streams
        ),
        _counter("aiis_gateway_connections", "WebSocket connections accepted", c.connections_total),
        _counter("aiis_gateway_events_read", "Log entries read by the fan-out", hub.events_read),
        _counter("aiis_gateway_events_fanned_out", "Events put into outboxes", hub.deliveries),
        _counter(
            "aiis_gateway_slow_subscribers_closed",
            "Subscribers closed (1013) because their send buffer overflowed",
            c.slow_closed,
        ),
        _counter("aiis_gateway_undecodable_events", "Log entries skipped", hub.decode_errors),
        GaugeMetricFamily(
            "aiis_gateway_redis_connected", "1 while the fan-out reads the log", hub.connected
        ),
    ]
    if ctx.limits is not None:
        fam += [
            GaugeMetricFamily(
                "aiis_gateway_open_sockets", "Open TCP connections", value=ctx.limits.open
            ),
            _counter(
                "aiis_gateway_header_timeouts",
                "Connections closed because request headers came too slowly",
                ctx.limits.header_timeouts,
            ),
        ]
        c.rejected["socket_limit"] = ctx.limits.refused
    subs = GaugeMetricFamily("aiis_gateway_subscriptions", "Subscriptions by kind", labels=["kind"])
    for kind, n in hub.count().items():
        subs.add_metric([kind], n)
    subs.add_metric(["stats"], len(ctx.stats.subscribers))
    fam.append(subs)
    submits = CounterMetricFamily(
        "aiis_gateway_submits", "Task submissions", labels=["transport", "outcome"]
    )
    for (transport, outcome), n in sorted(c.submits.items()):
        submits.add_metric([transport, outcome], n)
    fam.append(submits)
    errors = CounterMetricFamily("aiis_gateway_errors", "Errors answered, by code", labels=["code"])
    for code, n in sorted(c.errors.items()):
        errors.add_metric([code], n)
    fam.append(errors)
    rejected = CounterMetricFamily(
        "aiis_gateway_rejected_connections", "Refused connections", labels=["reason"]
    )
    for reason, n in sorted(c.rejected.items()):
        rejected.add_metric([reason], n)
    fam.append(rejected)
    fam.extend(ctx.stats.tasks.families())
    fam.append(c.overhead.family())
    skipped = CounterMetricFamily(
        "aiis_undecodable_events",
        "Log entries this process's readers skipped (engine.core.tolerant), by reader and reason",
        labels=["reader", "reason"],
    )
    for (reader, reason), n in sorted(tolerant.SKIPPED.items()):
        skipped.add_metric([reader, reason], n)
    fam.append(skipped)
    return fam


async def render_metrics(ctx: Context) -> CollectorRegistry:
    """A registry holding this instant's values (queue lengths included); with several gateway
    processes, every process's own families, labelled ``process``."""
    fam = local_families(ctx)
    if ctx.shared_metrics is not None:
        fam = ctx.shared_metrics.merge(fam)
    queues = GaugeMetricFamily(
        "aiis_queue_length",
        "Entries in each work queue (XLEN), delayed retries and dead letters",
        labels=["partition", "queue"],
    )
    for partition, queue, n in await _queue_lengths(ctx):
        queues.add_metric([partition, queue], n)
    fam.append(queues)
    in_flight = GaugeMetricFamily(
        "aiis_queue_in_flight",
        "Entries of each work queue handed to a worker and not yet finished (XPENDING)",
        labels=["partition", "queue"],
    )
    flights = await _in_flight(ctx)
    for partition, queue, n in flights:
        in_flight.add_metric([partition, queue], n)
    fam.append(in_flight)
    fam.extend(await _workers(ctx, sum(n for _, _, n in flights)))
    fam.extend(await _pool_metrics(ctx))
    fam.extend(_report_families(await ctx.stats.projections_report()))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(fam))
    return registry
