"""Hypothesis strategies: random but valid event logs (each task follows the engine's
lifecycle; tasks interleave; event times wander, sometimes backwards, sometimes by a day)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .conftest import error, requested, succeeded

Event = tuple[str, str, dict[str, Any], int]
PROVIDERS = ["gemini", "openai", "claude"]
CLASSES = ["RateLimited", "ProviderTimeout", "InvalidRequest", "Overloaded"]


@st.composite
def lifecycle(draw: st.DrawFn, task: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [
        ("TaskRequested", requested(draw(st.sampled_from(["high", "normal", "low"]))))
    ]
    state, attempt = "queued", 0
    for _ in range(draw(st.integers(0, 8))):
        provider = draw(st.sampled_from(PROVIDERS))
        if state == "queued":
            step = draw(st.sampled_from(["start", "start", "cancel", "dead"]))
            if step == "start":
                attempt += 1
                out.append(("TaskStarted", {"attempt": attempt, "worker": "w"}))
                state = "running"
            elif step == "cancel":
                out.append(("TaskCancelled", {"attempt": attempt, "stage": "queued"}))
                return out
            else:
                out.append(("TaskDeadLettered", {"attempt": attempt, "reason": "max_deliveries"}))
                return out
        elif state == "delayed":
            if draw(st.booleans()):
                out.append(("TaskRequeued", {"attempt": attempt, "reason": "retry_due"}))
                state = "queued"
            else:
                out.append(("TaskCancelled", {"attempt": attempt, "stage": "retry_scheduled"}))
                return out
        else:
            step = draw(
                st.sampled_from(
                    [
                        "delta",
                        "notice",
                        "succeed",
                        "fail",
                        "retry",
                        "dead",
                        "release",
                        "reclaim",
                        "cancel",
                        "circuit",
                    ]
                )
            )
            cls = draw(st.sampled_from(CLASSES))
            if step == "delta":
                out.append(("TaskProgress", {"attempt": attempt, "delta": "x"}))
            elif step == "notice":
                detail: dict[str, Any] = {"provider": provider}
                if draw(st.booleans()):
                    detail["error_class"] = cls
                else:
                    detail["latency_ms"] = draw(st.integers(1, 5000))
                if draw(st.booleans()):  # the current router's shape: outcome and latency
                    detail["outcome"] = "error" if "error_class" in detail else "ok"
                    detail.setdefault("latency_ms", draw(st.integers(1, 5000)))
                kind = draw(
                    st.sampled_from(["attempt", "skipped", "fallback", "partial_discarded"])
                )
                if kind == "skipped":
                    detail["reason"] = draw(st.sampled_from(["circuit_open", "rate_limited"]))
                out.append(("TaskProgress", {"attempt": attempt, "notice": kind, "detail": detail}))
            elif step == "circuit":
                kind = draw(st.sampled_from(["circuit_opened", "circuit_closed"]))
                out.append(
                    (
                        "TaskProgress",
                        {"attempt": attempt, "notice": kind, "detail": {"provider": provider}},
                    )
                )
            elif step == "succeed":
                cost = draw(st.one_of(st.none(), st.floats(0, 2, allow_nan=False)))
                data = succeeded(
                    attempt=attempt,
                    provider=provider,
                    cost=cost,
                    latency=draw(st.integers(1, 60_000)),
                )
                data["cached"] = draw(st.booleans())
                out.append(("TaskSucceeded", data))
                return out
            elif step == "fail":
                out.append(("TaskFailed", {"attempt": attempt, "error": error(cls, provider)}))
                return out
            elif step == "retry":
                out.append(
                    (
                        "TaskRetryScheduled",
                        {
                            "attempt": attempt,
                            "delay_ms": 10,
                            "due_ms": 10,
                            "error": error(cls, provider),
                        },
                    )
                )
                state = "delayed"
            elif step == "dead":
                err = draw(st.one_of(st.none(), st.just(error(cls, provider))))
                out.append(
                    (
                        "TaskDeadLettered",
                        {"attempt": attempt, "reason": "retries_exhausted", "error": err},
                    )
                )
                return out
            elif step == "release":
                out.append(("TaskRequeued", {"attempt": attempt, "reason": "released"}))
                state = "queued"
            elif step == "reclaim":
                attempt += 1
                out.append(("TaskStarted", {"attempt": attempt, "worker": "w2", "reclaimed": True}))
            else:
                out.append(("TaskCancelled", {"attempt": attempt, "stage": "running"}))
                return out
    return out


@st.composite
def event_logs(draw: st.DrawFn, max_tasks: int = 10) -> list[Event]:
    n = draw(st.integers(0, max_tasks))
    pending = [draw(lifecycle(f"task{i}")) for i in range(n)]
    cursors = [0] * n
    ts = 1_700_000_000_000 + draw(st.integers(0, 86_400_000))
    out: list[Event] = []
    while any(c < len(p) for c, p in zip(cursors, pending, strict=True)):
        open_tasks = [i for i in range(n) if cursors[i] < len(pending[i])]
        i = draw(st.sampled_from(open_tasks))
        etype, data = pending[i][cursors[i]]
        cursors[i] += 1
        ts += draw(st.one_of(st.integers(-2_000, 90_000), st.just(86_400_000)))
        out.append((etype, f"task{i}", data, ts))
        if draw(st.integers(0, 9)) == 0:  # ops events: every view must ignore them
            out.append(draw(ops_event(f"task{i}", ts)))
    return out


@st.composite
def ops_event(draw: st.DrawFn, task: str, ts: int) -> Event:
    """An AlertRaised / AlertResolved / WebhookAttempted (the ops stream's events)."""
    kind = draw(st.sampled_from(["AlertRaised", "AlertResolved", "WebhookAttempted"]))
    if kind == "AlertRaised":
        data: dict[str, Any] = {
            "alert_id": "circuit_open:gemini",
            "rule": "circuit_open",
            "subject": "gemini",
            "severity": "critical",
            "message": "circuit of gemini opened",
            "value": 1.0,
            "threshold": 1.0,
        }
        return (kind, "", data, ts)
    if kind == "AlertResolved":
        data = {"alert_id": "a:b", "rule": "a", "subject": "b", "value": 0.0}
        return (kind, "", data, ts)
    data = {
        "delivery_id": "d1",
        "url": "https://example.com/hook",
        "attempt": 1,
        "outcome": draw(st.sampled_from(["delivered", "retrying", "failed"])),
        "status": 200,
        "duration_ms": 3,
        "event_type": "TaskSucceeded",
        "event_id": "1-0",
    }
    return (kind, task, data, ts)
