"""``provider_health``: per provider — successes, failures by error class, a sliding window of
outcomes and latencies by event time, a mergeable latency histogram, and the breaker state.

Each provider call is counted once, with its outcome: from the router's ``attempt`` notice,
which it writes after the call ended (detail: provider, ``outcome`` ok/error, ``latency_ms``,
``error_class``). A notice that carries no outcome (the pre-call notice older routers wrote) is
not a call. When no notice reported that provider's call in that attempt (the in-process
providers, older logs), the event that ended the attempt counts instead (``TaskSucceeded``, with its
``latency_ms``; ``TaskRetryScheduled``, ``TaskFailed``, ``TaskDeadLettered`` with an
``error.provider``). A provider the router skipped (``skipped`` notice: its circuit open, no
rate-limit slot, no usable key) was not called: counted in ``skipped_open`` / ``skipped_rate``
/ ``skipped_other``, never as a call.
``circuit_opened`` / ``circuit_closed`` notices set the breaker; other notices are ignored.
``InvalidRequest`` is the caller's fault: counted by class, not as a failure of the provider.
Latency percentiles are of successful calls.

Entry ``<provider>``: {"ok", "fail", "client_errors", "errors": {class: n}, "lat": histogram,
"win": {bucket: [ok, fail, histogram]}, "breaker", "breaker_ts", "opened", "last_ts",
"last_error", "skipped_open", "skipped_rate", "skipped_other"} (the last three absent until
the first skip).
``win`` keeps the last ``AIIS_PROJ_HEALTH_BUCKETS`` buckets of ``AIIS_PROJ_HEALTH_BUCKET_S``
(by event time; readers sum them). ``~att:<task>`` lists the ``[attempt, provider,
error_class]`` the notices reported, until the attempt ends.
"""

from __future__ import annotations

from typing import Any

from projections import histogram
from projections.view import Envelope, Projection, Record, Shard, ViewConfig

CLIENT_ERRORS = frozenset({"InvalidRequest"})
_SKIPPED = {"circuit_open": "skipped_open", "rate_limited": "skipped_rate"}
_OUTCOME_EVENTS = {"TaskSucceeded", "TaskRetryScheduled", "TaskFailed", "TaskDeadLettered"}


def new_record() -> dict[str, Any]:
    return {
        "ok": 0,
        "fail": 0,
        "client_errors": 0,
        "errors": {},
        "lat": {},
        "win": {},
        "breaker": "closed",
        "breaker_ts": None,
        "opened": 0,
        "last_ts": None,
        "last_error": None,
    }


def load(config: ViewConfig, entries: dict[str, Record]) -> Shard:
    return Shard(config, entries)


def _provider(view: Shard, name: str) -> dict[str, Any]:
    rec = view.entries.get(name)
    if rec is None:
        rec = view.entries[name] = new_record()
    view.changed.add(name)
    return rec


def _count(
    view: Shard, provider: str, ts: int, error: dict[str, Any] | None, latency_ms: int | None
) -> None:
    rec = _provider(view, provider)
    cfg = view.config
    bucket = ts // cfg.health_bucket_ms
    win = rec["win"]
    slot = win.get(str(bucket))
    if slot is None:
        slot = win[str(bucket)] = [0, 0, {}]
        oldest = bucket - cfg.health_buckets + 1
        for old in [b for b in win if int(b) < oldest]:
            del win[old]
    if rec["last_ts"] is None or ts > rec["last_ts"]:
        rec["last_ts"] = ts
    if error is None:
        rec["ok"] += 1
        slot[0] += 1
        if latency_ms is not None:
            key = histogram.bin_of(latency_ms)
            lat, hist = rec["lat"], slot[2]
            lat[key] = lat.get(key, 0) + 1
            hist[key] = hist.get(key, 0) + 1
        return
    cls = error.get("error_class") or "unknown"
    rec["errors"][cls] = rec["errors"].get(cls, 0) + 1
    rec["last_error"] = {"error_class": cls, "message": error.get("message", ""), "ts": ts}
    if cls in CLIENT_ERRORS:
        rec["client_errors"] += 1
    else:
        rec["fail"] += 1
        slot[1] += 1


def _notice(view: Shard, event: Envelope, data: dict[str, Any]) -> None:
    notice = data.get("notice")
    detail = data.get("detail") or {}
    provider = detail.get("provider")
    if not isinstance(provider, str):
        return
    if notice in {"circuit_opened", "circuit_closed"}:
        rec = _provider(view, provider)
        if rec["breaker_ts"] is None or event["ts"] >= rec["breaker_ts"]:
            rec["breaker"] = "opened" if notice == "circuit_opened" else "closed"
            rec["breaker_ts"] = event["ts"]
        rec["opened"] += 1 if notice == "circuit_opened" else 0
    elif notice == "attempt":
        cls = detail.get("error_class")
        if cls is not None and not isinstance(cls, str):
            cls = "unknown"
        latency = detail.get("latency_ms")
        if detail.get("outcome") is None and cls is None and latency is None:
            return  # written before the call: not a call, says nothing of its outcome
        if detail.get("outcome") == "error" and not cls:
            cls = "unknown"
        error = {"error_class": cls, "message": detail.get("message", "")} if cls else None
        _count(view, provider, event["ts"], error, latency if isinstance(latency, int) else None)
        _reported(view, event, data, provider, cls)
    elif notice == "skipped":
        rec = _provider(view, provider)
        field = _SKIPPED.get(str(detail.get("reason")), "skipped_other")
        rec[field] = rec.get(field, 0) + 1
        _reported(view, event, data, provider, "skipped")


def _reported(
    view: Shard, event: Envelope, data: dict[str, Any], provider: str, cls: str | None
) -> None:
    """Remember that a notice reported this attempt's calls (its outcome event then counts
    nothing)."""
    key = "~att:" + event["task_id"]
    seen = list(view.entries.get(key, []))
    seen.append([data["attempt"], provider, cls])
    view.put(key, seen)


def _outcome(view: Shard, event: Envelope, data: dict[str, Any]) -> None:
    key = "~att:" + event["task_id"]
    seen = view.entries.get(key)
    if seen is not None:
        view.drop(key)
    if event["type"] == "TaskSucceeded":
        provider, error, latency = data["provider"], None, data["latency_ms"]
        if data.get("cached"):
            return  # served from cache: no provider call happened
    else:
        error = data.get("error")
        if error is None or not error.get("provider"):
            return  # not a provider's failure (deadline, max deliveries, internal)
        provider, latency = error["provider"], None
    if seen is not None and any(s[0] == data["attempt"] and s[1] == provider for s in seen):
        return  # the router's notice already reported this provider's call (or skip)
    _count(view, provider, event["ts"], error, latency)


def evolve(view: Shard, event: Envelope) -> Shard:
    etype = event["type"]
    if etype == "TaskProgress":
        data = event["data"]
        if data.get("notice"):
            _notice(view, event, data)
    elif etype in _OUTCOME_EVENTS:
        _outcome(view, event, event["data"])
    elif etype == "TaskCancelled":
        view.drop("~att:" + event["task_id"])
    # other types (TaskRequested … and the ops events AlertRaised, AlertResolved,
    # WebhookAttempted, in OPS_EVENTS) carry no provider outcome: ignored on purpose
    return view


PROJECTION = Projection(
    name="provider_health",
    description="per provider: successes, failures by class, windowed success rate, "
    "latency percentiles, breaker state",
    load=load,
    evolve=evolve,
)
