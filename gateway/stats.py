"""Dashboard statistics, pushed as ``{"op":"stats",…}`` frames to ``stats`` subscribers.

Live from Redis: queue lengths (XLEN of every work stream, ZCARD of delayed retries, XLEN of
the dead letters). From the projections' views (``projections.stats.gather``, when the
projections run): throughput, cost today, provider health and breaker states. From the events
this gateway fans out: events/s and completions/s of the last 10 s and the recent tasks. The
charts (``gateway.charts``): the series of the window each subscriber chose, from the
``charts`` view.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import OrderedDict, deque
from itertools import islice
from typing import Any

import orjson

from engine.core import tolerant
from engine.core.events import EVENT_TYPES
from engine.core.keys import PRIORITIES
from engine.core.store import Store, translate_errors
from engine.errors import EventDecodeError, UnknownEventType
from gateway.auth import Principal
from gateway.charts import Charts
from gateway.metrics import TaskMetrics
from gateway.outbox import Item, Outbox
from gateway.settings import GatewaySettings
from projections import dashboard
from projections.settings import ProjectionSettings
from projections.stats import gather
from projections.storage import ShardStore
from projections.view import ViewConfig

log = logging.getLogger("aiis.gateway")

STATUS_OF = {
    "TaskRequested": "queued",
    "TaskStarted": "running",
    "TaskProgress": "running",
    "TaskRetryScheduled": "retry_scheduled",
    "TaskRequeued": "queued",
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskDeadLettered": "dead_lettered",
    "TaskCancelled": "cancelled",
}
WINDOW_S = 10
# what a malformed entry's fields raise here (ts not a number, bytes not UTF-8, data not JSON)
_BAD_FIELDS = (ValueError, TypeError, AttributeError, KeyError, orjson.JSONDecodeError)


def _ts(item: Item) -> int:
    """The entry's event time; ``EventDecodeError`` when it is not a number."""
    try:
        return int(item.fields.get(b"ts", b"0") or 0)
    except ValueError as exc:
        raise EventDecodeError(item.id, "malformed entry (ts is not a number)") from exc


class Stats:
    """Collects what the dashboard shows and pushes it to its subscribers every interval."""

    def __init__(self, store: Store, gw: GatewaySettings, proj: ProjectionSettings) -> None:
        self.store = store
        self.gw = gw
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.seconds: deque[list[int]] = deque(maxlen=WINDOW_S + 1)  # [second, events, done]
        self.subscribers: dict[Outbox, Principal] = {}
        self._projection_failed = False
        config = ViewConfig.from_settings(
            store.settings.partitions, store.settings.task_retention_s, proj
        )
        self._views = ShardStore(store.redis, store.settings.namespace, config)
        self.tasks = TaskMetrics()
        self.windows: dict[Outbox, str] = {}  # each subscriber's charts window ("": default)
        self.charts = Charts(self._views, store.settings.partitions)

    # --- what the hub shows us ---------------------------------------------------------------

    def observe(self, item: Item) -> None:
        """Hub listener: count the event and track its task's status (an entry it cannot read
        is counted as skipped by ``stats`` and changes nothing)."""
        try:
            self._check(item)
        except EventDecodeError as exc:
            tolerant.skipped("stats", item.id, exc)
            return
        now = int(time.time())
        if not self.seconds or self.seconds[-1][0] != now:
            self.seconds.append([now, 0, 0])
        bucket = self.seconds[-1]
        bucket[1] += 1
        if item.terminal:
            bucket[2] += 1
        self._track(item)

    @staticmethod
    def _check(item: Item) -> None:
        """Raise ``EventDecodeError`` unless the fields ``_track`` reads are well-formed."""
        _ts(item)
        try:
            item.task_id.decode()
            item.tenant.decode()
            event_type = item.type
        except UnicodeDecodeError as exc:
            raise EventDecodeError(item.id, "malformed entry (not UTF-8)") from exc
        if event_type not in EVENT_TYPES:  # a tolerant reader ignores what it does not know
            raise UnknownEventType(item.id, f"unknown event type {event_type!r}")

    def _track(self, item: Item) -> None:
        event_type = item.type
        task_id = item.task_id.decode()
        row = self.recent.get(task_id)
        if row is None:
            row = {"task_id": task_id, "tenant": item.tenant.decode(), "status": "queued"}
            self.recent[task_id] = row
            if len(self.recent) > self.gw.recent_tracked:
                self.recent.popitem(last=False)
        else:
            self.recent.move_to_end(task_id)
        row["status"] = STATUS_OF.get(event_type, row["status"])
        row["event"] = event_type
        row["updated_ms"] = _ts(item)
        if item.terminal:
            with contextlib.suppress(*_BAD_FIELDS):
                data = orjson.loads(item.fields.get(b"data", b"{}"))
                self.tasks.finished(str(row.get("kind") or "unknown"), event_type, data)
        if event_type in ("TaskRequested", "TaskSucceeded", "TaskFailed"):
            with contextlib.suppress(*_BAD_FIELDS):
                data = orjson.loads(item.fields.get(b"data", b"{}"))
                if event_type == "TaskRequested":
                    prompt = data.get("input")
                    if isinstance(prompt, list):
                        prompt = " / ".join(str(m.get("content", "")) for m in prompt)
                    row["kind"] = data.get("kind")
                    row["priority"] = data.get("priority")
                    row["prompt"] = str(prompt or "")[:80]
                elif event_type == "TaskSucceeded":
                    row["provider"] = f"{data.get('provider')}/{data.get('model')}"
                    row["cost_usd"] = data.get("cost_usd")
                else:
                    row["error"] = str((data.get("error") or {}).get("message", ""))[:120]

    async def seed(self) -> None:
        """Fill the recent-task list from the newest entries of each log (skipping, and
        counting, what it cannot read: a bad entry must not keep the gateway from starting)."""
        entries: list[tuple[int, Item]] = []
        per_log = max(1, self.gw.recent_tracked * 4 // len(self.store.partitions))
        for p, keys in enumerate(self.store.partitions):
            found = await self.store.entries(keys.log, count=per_log, reverse=True)
            for eid, fields in found:
                item = Item(p, eid, fields)
                try:
                    self._check(item)
                except EventDecodeError as exc:
                    tolerant.skipped("stats", item.id, exc)
                    continue
                entries.append((_ts(item), item))
        for _, item in sorted(entries, key=lambda pair: pair[0]):
            self._track(item)

    # --- the snapshot ------------------------------------------------------------------------

    async def _queues(self) -> dict[str, Any]:
        redis = self.store.redis
        depth = {p.value: 0 for p in PRIORITIES}
        delayed = dlq = log_len = 0
        with translate_errors():
            async with redis.pipeline(transaction=False) as pipe:
                for keys in self.store.partitions:
                    for p in PRIORITIES:
                        pipe.xlen(keys.queue(p))
                    pipe.zcard(keys.delayed)
                    pipe.xlen(keys.dlq)
                    pipe.xlen(keys.log)
                replies = await pipe.execute()
        step = len(PRIORITIES) + 3
        for i in range(0, len(replies), step):
            for j, p in enumerate(PRIORITIES):
                depth[p.value] += int(replies[i + j])
            delayed += int(replies[i + len(PRIORITIES)])
            dlq += int(replies[i + len(PRIORITIES) + 1])
            log_len += int(replies[i + len(PRIORITIES) + 2])
        return {"depth": depth, "delayed": delayed, "dead_letters": dlq, "log_entries": log_len}

    async def projections_report(self) -> dict[str, Any] | None:
        """``projections.stats.gather`` now, or None when the views cannot be read."""
        return await self._projections()

    async def _projections(self, *, whole: bool = True) -> dict[str, Any] | None:
        """The whole ``aiis stats`` report, or (``whole=False``) only what the push shows of it,
        read in one round trip (``projections.dashboard``)."""
        now = dt.datetime.now(dt.UTC)
        try:
            return await (gather if whole else dashboard.read)(
                self._views,
                self.store.settings.partitions,
                int(now.timestamp() * 1000),
                now.date().isoformat(),
            )
        except Exception as exc:  # the dashboard must survive a broken or missing view
            if not self._projection_failed:
                log.warning("projection stats unavailable: %s", exc)
            self._projection_failed = True
            return None

    def _rates(self) -> dict[str, float]:
        now = int(time.time())
        window = [b for b in self.seconds if now - WINDOW_S <= b[0] < now]
        return {
            "events_per_s": round(sum(b[1] for b in window) / WINDOW_S, 2),
            "completed_per_s": round(sum(b[2] for b in window) / WINDOW_S, 2),
        }

    async def snapshot(self) -> dict[str, Any]:
        """Everything, for every tenant; ``view`` cuts it down for one principal. ``ts`` is
        when it was begun (a client's receive time minus it is the push's latency)."""
        began = int(time.time() * 1000)
        # the views and the queue lengths: two pipelines, one round trip's wait
        report, queues = await asyncio.gather(self._projections(whole=False), self._queues())
        providers: dict[str, Any] = {}
        for name, h in ((report or {}).get("providers") or {}).items():
            providers[name] = {
                "breaker": h.get("breaker"),
                "success_rate": (h.get("window") or {}).get("success_rate"),
                "ok": h.get("ok"),
                "fail": h.get("fail"),
                "p95_ms": (h.get("latency_ms") or {}).get("p95"),
            }
        return {
            "ts": began,
            "queues": queues,
            "rates": self._rates(),
            "throughput": (report or {}).get("throughput"),
            "cost_today": (report or {}).get("cost_today"),
            "providers": providers,
            "projections": report is not None,
        }

    def view(self, snap: dict[str, Any], who: Principal) -> dict[str, Any]:
        """The snapshot as ``who`` may see it: only its own tenant's tasks and cost."""
        cost = snap.get("cost_today") or {}
        if who.operator:
            cost_out = {"usd": (cost.get("total") or {}).get("usd", 0.0), "scope": "all"}
        else:
            mine = (cost.get("by_tenant") or {}).get(who.tenant) or {}
            cost_out = {"usd": mine.get("usd", 0.0), "scope": who.tenant}
        rows = (r for r in reversed(self.recent.values()) if who.may_read(r["tenant"]))
        return {
            **{k: v for k, v in snap.items() if k != "cost_today"},
            "cost_today": cost_out,
            "recent": list(islice(rows, self.gw.recent_tasks)),
            "tenant": who.tenant,
        }

    async def push_forever(self) -> None:
        """Every interval, one snapshot for all ``stats`` subscribers (none: no work)."""
        while True:
            await asyncio.sleep(self.gw.stats_interval_s)
            if not self.subscribers:
                continue
            self.windows = {o: w for o, w in self.windows.items() if o in self.subscribers}
            wanted = [self.windows.get(o, "") for o in self.subscribers]
            try:  # the charts' reads overlap the snapshot's
                snap, charts = await asyncio.gather(self.snapshot(), self.charts.read(wanted))
            except Exception as exc:  # Redis away: try again next tick
                log.warning("stats snapshot failed: %s", exc)
                continue
            # a frame depends only on the tenant and the window: built and encoded once for all
            # the subscribers that share them, not once per subscriber
            frames: dict[tuple[str, str], str] = {}
            for outbox, who in list(self.subscribers.items()):
                window = self.windows.get(outbox, "")
                encoded = frames.get((who.tenant, window))
                if encoded is None:
                    frame = self.view(snap, who)
                    frame["charts"] = self.charts.view(charts, window, who)
                    encoded = orjson.dumps({"op": "stats", "stats": frame}).decode()
                    frames[who.tenant, window] = encoded
                outbox.put(encoded)
