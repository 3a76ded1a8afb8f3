"""``aiis ops``: the operations reader — budgets' spend, alerts and task webhooks.

A catch-up reader over every partition's log with its own checkpoint (``<ns>:ops:checkpoint``;
like the projections, not a consumer group). Per event:

- terminal events: ``Budgets.settle`` (the reservation released and the cost counted once per
  task, so a re-read after a crash never charges twice) and a ``Spend`` observation;
- provider calls: ``ProviderCall`` observations, one per call the router reported in an
  ``attempt`` notice (written after the call, with its outcome; a failed call that reported
  usage is also spend), else from the event that ended the attempt (providers that write no
  notices); a ``skipped`` provider (circuit open) is not a call; ``InvalidRequest`` is the
  caller's error, not the provider's — as in the ``provider_health`` view; circuit notices:
  ``BreakerChanged``;
- a terminal event of a task with a callback URL (``<tag>:cb``, written by submit.lua): a
  signed delivery in the background (``engine.operations.deliveries``).

Every ``AIIS_OPS_TICK_S`` it observes queue depths (XLEN) and ticks the rules. Alert
transitions become ``AlertRaised``/``AlertResolved`` events, log lines and, with
``AIIS_ALERT_WEBHOOK_URL``, POSTs. Ops events go to the ops stream ``<ns>:ops`` (capped), never
to a task's log. Alert state lives in memory: after a restart a condition that still holds is
raised again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from engine.admission.budget import Budgets
from engine.admission.callbacks import Resolver, system_resolver
from engine.client import Client
from engine.core import mapper, tolerant
from engine.core.events import TERMINAL_EVENTS
from engine.core.keys import PRIORITIES, ops_checkpoint_key
from engine.core.logreader import LogReader
from engine.core.store import translate_errors
from engine.errors import EventDecodeError, RedisUnavailable
from engine.operations.alerts import (
    AlertEngine,
    AlertNotifier,
    AlertRecord,
    AlertResolved,
    BacklogRule,
    BreakerChanged,
    BreakerRule,
    BudgetRule,
    ErrorRateRule,
    Observation,
    ProviderCall,
    QueueDepth,
    Spend,
    Tick,
)
from engine.operations.deliveries import Deliveries, append_ops
from engine.operations.tracing import TaskTracer
from engine.settings import Settings

log = logging.getLogger("aiis.ops")
READ_COUNT = 500
MAX_REPORTED = 100_000  # (task, attempt) pairs whose outcome event is still to come
CLIENT_ERRORS = frozenset({"InvalidRequest"})  # the caller's error: not a provider failure


def alert_data(record: AlertRecord) -> dict[str, Any]:
    """An alert record as the data of its event (``ts`` is the envelope's)."""
    return record.model_dump(exclude={"type", "ts"})


def rules(settings: Settings, budgets: Mapping[str, float], default_usd: float | None) -> list[Any]:
    return [
        BacklogRule(threshold=settings.alert_backlog, for_s=settings.alert_backlog_s),
        ErrorRateRule(
            raise_pct=settings.alert_error_rate_pct,
            clear_pct=min(settings.alert_error_clear_pct, settings.alert_error_rate_pct),
            window_s=settings.alert_error_window_s,
            min_calls=settings.alert_error_min_calls,
        ),
        BudgetRule(default_usd=default_usd, tenants=dict(budgets)),
        BreakerRule(),
    ]


class Ops:
    """The reader; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        client: Client,
        *,
        http: httpx.AsyncClient | None = None,
        resolve: Resolver = system_resolver,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracer: TaskTracer | None = None,
    ) -> None:
        """``tracer``: each event also goes to it (OpenTelemetry traces, ``tracing.py``)."""
        s = self.settings = client.settings
        self.tracer = tracer
        self.client = client
        self.redis = client.store.redis
        self.live = client.admission.live
        self.budgets = Budgets(self.redis, s.namespace)
        self._budget_doc = self.live.budgets
        self.alerts = AlertEngine(rules(s, self._budget_doc.tenants, self._budget_doc.default_usd))
        self.http = http or httpx.AsyncClient(follow_redirects=False)
        self._own_http = http is None
        self.notifier = (
            AlertNotifier(self.http, s.alert_webhook_url, sleep=sleep)
            if s.alert_webhook_url
            else None
        )
        self._background: set[asyncio.Task[Any]] = set()  # alert webhook sends
        self.deliveries = (
            Deliveries(client, self.http, resolve=resolve, sleep=sleep)
            if s.webhook_secret is not None
            else None
        )
        self._totals: dict[tuple[str, str], float] = {}
        self.cursors: dict[int, str] = {}
        # (task, attempt) -> providers whose calls the router's notices reported
        self._reported: dict[tuple[str, Any], set[str]] = {}
        self.reader = LogReader(self.redis, s.namespace, s.partitions)
        self.stats = {"events": 0, "alerts": 0, "spend_events": 0}

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.load()
        if self.deliveries is not None:
            await self.deliveries.recover(self.cursors)
        last_tick = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - last_tick >= self.settings.ops_tick_s:
                    last_tick = time.monotonic()
                    await self.tick()
                block_ms = max(1, int(self.settings.ops_tick_s * 1000))
                if not await self.step(block_ms):
                    continue
            except RedisUnavailable as exc:
                log.warning("ops: %s; retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def aclose(self) -> None:
        """Wait for deliveries in flight (they are bounded by their attempts)."""
        await self.reader.aclose()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.deliveries is not None:
            await self.deliveries.aclose()
        if self._own_http:
            await self.http.aclose()

    async def load(self) -> None:
        with translate_errors():
            raw = await self.redis.hgetall(ops_checkpoint_key(self.settings.namespace))
        saved = {int(k): v.decode() if isinstance(v, bytes) else v for k, v in raw.items()}
        self.cursors = {p: saved.get(p, "0-0") for p in range(self.settings.partitions)}

    # --- reading the logs ------------------------------------------------------------------

    async def step(self, block_ms: int | None = None) -> int:
        """Handle the next events of every partition; returns how many."""
        batch = await self.reader.read(self.cursors, READ_COUNT, block_ms)
        n = 0
        for partition, entries in batch:
            await self._handle(partition, entries)
            self.cursors[partition] = entries[-1][0].decode()
            n += len(entries)
        if n:
            with translate_errors():
                await self.redis.hset(
                    ops_checkpoint_key(self.settings.namespace),
                    mapping={str(p): c for p, c in self.cursors.items()},
                )
        return n

    async def _handle(self, partition: int, entries: list[Any]) -> None:
        terminal: list[dict[str, Any]] = []
        observations: list[Observation] = []
        for eid, fields in entries:
            try:
                env = mapper.envelope(eid, fields)
                _check_shape(env)
            except (EventDecodeError, *_BAD_DATA) as exc:
                tolerant.skipped("ops", _id(eid), exc)
                continue
            self.stats["events"] += 1
            if self.tracer is not None:
                self.tracer.observe(env)
            etype, data, ts = env["type"], env["data"], env["ts"]
            if etype == "TaskProgress":
                notice, detail = data.get("notice"), data.get("detail") or {}
                if notice in ("circuit_opened", "circuit_closed") and detail.get("provider"):
                    opened = notice == "circuit_opened"
                    observations.append(
                        BreakerChanged(ts, detail["provider"], "opened" if opened else "closed")
                    )
                elif notice in ("attempt", "skipped") and isinstance(detail.get("provider"), str):
                    await self._reported_call(env, notice, detail, observations)
                continue
            provider = (
                data.get("provider")
                if etype == "TaskSucceeded"
                else (data.get("error") or {}).get("provider")
            )
            seen = self._reported.pop((env["task_id"], data.get("attempt")), None)
            counted = not isinstance(provider, str) or (seen is not None and provider in seen)
            if etype == "TaskSucceeded":
                if not data.get("cached") and not counted:
                    observations.append(ProviderCall(ts, str(provider), True))
            elif etype in ("TaskFailed", "TaskRetryScheduled", "TaskDeadLettered"):
                cls = (data.get("error") or {}).get("error_class")
                if not counted and cls not in CLIENT_ERRORS:
                    observations.append(ProviderCall(ts, str(provider), False))
            if etype in TERMINAL_EVENTS:
                terminal.append(env)
                spend = await self._settle(env)
                if spend is not None:
                    observations.append(spend)
        await self._emit(self.alerts.observe_all(observations))
        if terminal and self.deliveries is not None:
            await self.deliveries.callbacks(partition, terminal)

    async def _reported_call(
        self,
        env: Mapping[str, Any],
        notice: str,
        detail: Mapping[str, Any],
        observations: list[Observation],
    ) -> None:
        """A call (or skip) the router reported: observed once; its outcome event then is not."""
        provider, ts = str(detail["provider"]), int(env["ts"])
        key = (str(env["task_id"]), env["data"].get("attempt"))
        self._reported.setdefault(key, set()).add(provider)
        if len(self._reported) > MAX_REPORTED:  # bounded: tasks whose outcome was never read
            self._reported = dict(list(self._reported.items())[MAX_REPORTED // 2 :])
        cls = detail.get("error_class")
        if cls is not None and not isinstance(cls, str):
            cls = "unknown"  # a notice is data: whatever it holds, it cannot stop the reader
        if notice == "skipped" or cls in CLIENT_ERRORS:
            return
        if detail.get("outcome") is None and cls is None and detail.get("latency_ms") is None:
            self._reported[key].discard(provider)  # an older router's pre-call notice
            return
        observations.append(ProviderCall(ts, provider, cls is None))
        cost = detail.get("cost_usd")
        # a failed call the provider billed (a notice is data: anything else is ignored)
        if cls is not None and isinstance(cost, int | float) and cost > 0:
            spend = await self._spend(str(env["tenant"]), float(cost), ts, str(env["id"]))
            if spend is not None:
                observations.append(spend)

    async def _spend(self, tenant: str, usd: float, ts: int, event_id: str) -> Spend | None:
        day = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y%m%d")
        total = await self.budgets.add_spend(tenant, usd, day, event_id)
        return self._spent(tenant, day, total, ts)

    async def _settle(self, env: dict[str, Any]) -> Spend | None:
        """Settle the task's budget at its terminal event: release its reservation, add its
        cost (a success of unknown cost is charged its reservation), once per task."""
        tenant, data = env["tenant"], env["data"]
        usd: float | None = 0.0
        if env["type"] == "TaskSucceeded" and not data.get("cached"):
            cost = data.get("cost_usd")
            usd = None if cost is None else float(cost)
        if not usd and self.live.budgets.budget(tenant) is None:
            return None  # nothing to charge, nothing reserved: no round trip
        day = datetime.fromtimestamp(env["ts"] / 1000, UTC).strftime("%Y%m%d")
        total = await self.budgets.settle(tenant, env["task_id"], usd, day)
        return self._spent(tenant, day, total, int(env["ts"]))

    def _spent(self, tenant: str, day: str, total: float, ts: int) -> Spend | None:
        """Track the day's total; a ``Spend`` observation when it grew."""
        before = self._totals.get((tenant, day), 0.0)
        self._totals[(tenant, day)] = total
        if len(self._totals) > 100_000:  # bounded: forget the oldest days' tenants
            self._totals = dict(list(self._totals.items())[-50_000:])
        self.stats["spend_events"] += 1
        return Spend(ts, tenant, total - before) if total > before else None

    # --- ticks: queue depth, time-based rules, live budgets ---------------------------------

    async def tick(self) -> None:
        if self.live.budgets is not self._budget_doc:
            self._budget_doc = self.live.budgets
            self.alerts.rules = [
                BudgetRule(
                    default_usd=self._budget_doc.default_usd, tenants=dict(self._budget_doc.tenants)
                )
                if isinstance(r, BudgetRule)
                else r
                for r in self.alerts.rules
            ]
        self.live.maybe_refresh()
        store = self.client.store
        names: list[str] = []
        with translate_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in store.partitions:
                    for prio in PRIORITIES:
                        pipe.xlen(keys.queue(prio))
                        names.append(f"p{keys.partition}:{prio.value}")
                depths = await pipe.execute()
        now = int(time.time() * 1000)
        observations: list[Observation] = [
            QueueDepth(now, name, int(d)) for name, d in zip(names, depths, strict=True)
        ]
        observations.append(Tick(now))
        await self._emit(self.alerts.observe_all(observations))

    async def _emit(self, records: list[AlertRecord]) -> None:
        for record in records:
            self.stats["alerts"] += 1
            if isinstance(record, AlertResolved):
                log.info("alert resolved: %s (value %s)", record.alert_id, record.value)
            else:
                log.warning("alert raised: %s: %s", record.alert_id, record.message)
            await append_ops(self.redis, self.settings, record.type, alert_data(record))
            if self.notifier is not None:
                self._spawn(self.notifier.send(record))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _id(eid: bytes | str) -> str:
    return eid.decode() if isinstance(eid, bytes) else eid


# what reading a field of an event's data of the wrong shape raises
_BAD_DATA = (KeyError, TypeError, ValueError, AttributeError)


def _check_shape(env: Mapping[str, Any]) -> None:
    """Raise one of ``_BAD_DATA`` unless the fields ``_handle`` reads have their types' shapes
    (a decoded entry may still carry data its type does not allow: anyone can XADD). Provider
    names must be strings: they become keys of the alert rules' state."""
    etype, data = env["type"], env["data"]
    if etype == "TaskProgress":
        detail = _object(data.get("detail") or {})
        _name(detail.get("provider"))
        _name(detail.get("from"))
    elif etype == "TaskSucceeded":
        if not data.get("cached"):
            _name(data["provider"], required=True)
        float(data.get("cost_usd") or 0)
    elif etype in ("TaskFailed", "TaskRetryScheduled", "TaskDeadLettered"):
        _name(_object(data.get("error") or {}).get("provider"))


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, not {type(value).__name__}")
    return value


def _name(value: Any, *, required: bool = False) -> None:
    if not isinstance(value, str) and (required or value is not None):
        raise TypeError(f"expected a provider name, not {type(value).__name__}")
