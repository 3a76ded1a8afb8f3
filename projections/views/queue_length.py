"""``queue_length``: per priority (the shard is the partition) how many tasks are waiting,
delayed for a retry, in flight, and how many were dead-lettered; plus per-minute throughput.

Entries:
    q:<priority>   {"waiting", "delayed", "in_flight", "dead_lettered", "requested", "done"}
                   (the last three are totals since the log began)
    tp:<minute>    {"requested", "succeeded", "failed", "dead_lettered", "cancelled", "retried"}
                   for the last ``AIIS_PROJ_THROUGHPUT_MINUTES`` minutes of event time
    ~live:<task>   [priority, "w" | "d" | "r"] for each task not yet terminal (bounded by the
                   engine's queue depth): where a terminal or retry event takes the task from
"""

from __future__ import annotations

from engine.core.events import OPS_EVENTS
from projections.view import Envelope, Projection, Record, Shard, ViewConfig

_COUNTER = {"w": "waiting", "d": "delayed", "r": "in_flight"}
_TP = {
    "TaskRequested": "requested",
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskDeadLettered": "dead_lettered",
    "TaskCancelled": "cancelled",
    "TaskRetryScheduled": "retried",
}
_TERMINAL = {"TaskSucceeded", "TaskFailed", "TaskDeadLettered", "TaskCancelled"}
_NEXT = {"TaskStarted": "r", "TaskRetryScheduled": "d", "TaskRequeued": "w"}
UNKNOWN_PRIORITY = "unknown"  # a task whose TaskRequested this log no longer holds


def new_counters() -> dict[str, int]:
    return {
        "waiting": 0,
        "delayed": 0,
        "in_flight": 0,
        "dead_lettered": 0,
        "requested": 0,
        "done": 0,
    }


def new_throughput() -> dict[str, int]:
    return dict.fromkeys(_TP.values(), 0)


class QueueShard(Shard):
    __slots__ = ("minutes",)

    def __init__(self, config: ViewConfig, entries: dict[str, Record] | None = None) -> None:
        super().__init__(config, entries)
        self.minutes: set[int] = {int(k[3:]) for k in self.entries if k.startswith("tp:")}


def load(config: ViewConfig, entries: dict[str, Record]) -> QueueShard:
    return QueueShard(config, entries)


def _counters(view: QueueShard, priority: str) -> dict[str, int]:
    key = "q:" + priority
    rec = view.entries.get(key)
    if rec is None:
        rec = view.entries[key] = new_counters()
    view.changed.add(key)
    return rec


def evolve(view: QueueShard, event: Envelope) -> QueueShard:
    etype = event["type"]
    if etype == "TaskProgress" or etype in OPS_EVENTS:
        return view  # ops events (alerts, webhook attempts) are no task transitions
    entries, changed = view.entries, view.changed
    live_key = "~live:" + event["task_id"]
    live = entries.get(live_key)
    if etype == "TaskRequested":
        priority = event["data"]["priority"]
        counters = _counters(view, priority)
        if live is not None:  # a second TaskRequested for one id: treat as a restart
            counters[_COUNTER[live[1]]] -= 1
        else:
            counters["requested"] += 1
        counters["waiting"] += 1
        entries[live_key] = [priority, "w"]
        changed.add(live_key)
    else:
        priority = live[0] if live is not None else UNKNOWN_PRIORITY
        counters = _counters(view, priority)
        if live is not None:
            counters[_COUNTER[live[1]]] -= 1
        if etype in _TERMINAL:
            counters["done"] += 1
            if etype == "TaskDeadLettered":
                counters["dead_lettered"] += 1
            view.drop(live_key)
        else:
            code = _NEXT.get(etype)
            if code is not None:
                counters[_COUNTER[code]] += 1
                entries[live_key] = [priority, code]
                changed.add(live_key)
    field = _TP.get(etype)
    if field is not None:
        minute = event["ts"] // 60_000
        key = f"tp:{minute}"
        rec = entries.get(key)
        if rec is None:
            rec = _new_minute(view, minute, key)
        rec[field] += 1
        changed.add(key)
    return view


def _new_minute(view: QueueShard, minute: int, key: str) -> dict[str, int]:
    rec = view.entries[key] = new_throughput()
    view.minutes.add(minute)
    oldest = minute - view.config.throughput_minutes + 1
    for old in [m for m in view.minutes if m < oldest]:
        view.minutes.discard(old)
        view.drop(f"tp:{old}")
    return rec


PROJECTION = Projection(
    name="queue_length",
    description="per partition and priority: waiting, delayed, in flight, dead-lettered",
    load=load,
    evolve=evolve,
)
