"""``GET /metrics``: the gateway's counters and gauges plus queue lengths read from Redis
(XLEN of every work stream) at scrape time, in the Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import ResponseError

from engine.keys import GROUP, PRIORITIES, autoscale_pattern
from engine.store import translate_errors

if TYPE_CHECKING:
    from gateway.context import Context


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
            pool = key.decode().rsplit(":", 1)[-1]
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


async def render_metrics(ctx: Context) -> CollectorRegistry:
    """A registry holding this instant's values (queue lengths included)."""
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
    for partition, queue, n in await _in_flight(ctx):
        in_flight.add_metric([partition, queue], n)
    fam.append(in_flight)
    fam.extend(await _pool_metrics(ctx))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(fam))
    return registry
