"""``task_state``: one record per task — status, attempts, provider and model, timestamps,
tokens and cost, last error, cancellation.

Retention (bounded, by event time so replay gives the same result): a terminal task is dropped
once an event of its partition is ``task_retention_s`` (AIIS_TASK_RETENTION_S, the engine's own
retention) newer than its finish, and the oldest terminal tasks are dropped first when a shard
holds more than ``AIIS_PROJ_TASK_MAX / partitions`` records. Tasks still running are never
dropped (the engine's queue depth bounds them).
"""

from __future__ import annotations

import heapq
from typing import Any

from engine.core.events import OPS_EVENTS
from projections.view import Envelope, Projection, Record, Shard, ViewConfig

TERMINAL = {"succeeded", "failed", "dead_lettered", "cancelled"}
_TERMINAL_STATUS = {
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskDeadLettered": "dead_lettered",
    "TaskCancelled": "cancelled",
}


class TaskStateShard(Shard):
    __slots__ = ("finished", "limit", "retention_ms")

    def __init__(self, config: ViewConfig, entries: dict[str, Record] | None = None) -> None:
        super().__init__(config, entries)
        self.retention_ms = config.task_retention_ms
        self.limit = config.task_max_per_shard
        # (finished_ts, task_id) of terminal tasks: the eviction order
        self.finished: list[tuple[int, str]] = [
            (r["finished_ts"], k) for k, r in self.entries.items() if r["status"] in TERMINAL
        ]
        heapq.heapify(self.finished)


def load(config: ViewConfig, entries: dict[str, Record]) -> TaskStateShard:
    return TaskStateShard(config, entries)


_NEW_RECORD: dict[str, Any] = {
    "status": "queued",
    "tenant": None,
    "kind": None,
    "priority": None,
    "requested_ts": None,
    "started_ts": None,
    "finished_ts": None,
    "updated_ts": None,
    "attempts": 0,
    "provider": None,
    "model": None,
    "fallbacks": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cost_usd": None,
    "latency_ms": None,
    "cached": False,
    "retry_due_ms": None,
    "error": None,
    "dead_reason": None,
    "cancelled_stage": None,
    "retry_of": None,
    "last_event": None,
}  # copied per task (faster than building it); every value immutable


def evolve(view: TaskStateShard, event: Envelope) -> TaskStateShard:
    etype = event["type"]
    data = event["data"]
    if etype == "TaskProgress":
        if data.get("notice") != "fallback":
            return view  # text deltas and other notices do not change the task's record
    elif etype in OPS_EVENTS:
        return view  # alerts and webhook attempts live in the ops stream, not a task's record
    tid = event["task_id"]
    entries = view.entries
    rec = entries.get(tid)
    if rec is None:
        rec = entries[tid] = _NEW_RECORD.copy()
        rec["tenant"] = event["tenant"]
    elif rec["status"] in TERMINAL:
        return view  # exactly one terminal event per task: nothing may follow it
    view.changed.add(tid)
    ts = event["ts"]
    rec["updated_ts"] = ts
    rec["last_event"] = event["id"]
    if etype == "TaskRequested":
        rec["status"] = "queued"
        rec["kind"] = data["kind"]
        rec["priority"] = data["priority"]
        rec["requested_ts"] = ts
        rec["retry_of"] = data.get("retry_of")
    elif etype == "TaskStarted":
        rec["status"] = "running"
        rec["attempts"] = data["attempt"]
        if rec["started_ts"] is None:
            rec["started_ts"] = ts
    elif etype == "TaskProgress":  # a fallback notice
        rec["fallbacks"] += 1
    elif etype == "TaskRetryScheduled":
        rec["status"] = "retry_scheduled"
        rec["retry_due_ms"] = data["due_ms"]
        rec["error"] = data["error"]
    elif etype == "TaskRequeued":
        rec["status"] = "queued"
        rec["retry_due_ms"] = None
    elif etype in _TERMINAL_STATUS:
        _finish(view, rec, event)
    finished = view.finished
    if finished and (finished[0][0] < ts - view.retention_ms or len(entries) > view.limit):
        _evict(view, ts)
    return view


def _finish(view: TaskStateShard, rec: dict[str, Any], event: Envelope) -> None:
    tid, etype, data, ts = event["task_id"], event["type"], event["data"], event["ts"]
    rec["status"] = _TERMINAL_STATUS[etype]
    rec["finished_ts"] = ts
    rec["retry_due_ms"] = None
    rec["attempts"] = max(rec["attempts"], data["attempt"])
    if etype == "TaskSucceeded":
        usage = data["usage"]
        rec["provider"] = data["provider"]
        rec["model"] = data["model"]
        rec["input_tokens"] = usage.get("input_tokens", 0)
        rec["output_tokens"] = usage.get("output_tokens", 0)
        rec["cost_usd"] = data["cost_usd"]
        rec["latency_ms"] = data["latency_ms"]
        rec["cached"] = bool(data.get("cached", False))
        rec["error"] = None
    elif etype == "TaskFailed":
        rec["error"] = data["error"]
    elif etype == "TaskDeadLettered":
        rec["dead_reason"] = data["reason"]
        if data.get("error") is not None:
            rec["error"] = data["error"]
    else:
        rec["cancelled_stage"] = data["stage"]
    heapq.heappush(view.finished, (ts, tid))


def _evict(view: TaskStateShard, now_ts: int) -> None:
    cutoff = now_ts - view.retention_ms
    limit = view.limit
    finished = view.finished
    while finished and (finished[0][0] < cutoff or len(view.entries) > limit):
        _, tid = heapq.heappop(finished)
        view.drop(tid)


PROJECTION = Projection(
    name="task_state",
    description="per task: status, attempts, provider/model, timestamps, cost, last error",
    load=load,
    evolve=evolve,
)
