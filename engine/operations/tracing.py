"""OpenTelemetry traces of tasks: one trace per task, joined to the producer's ``traceparent``.

Off unless ``AIIS_TRACING=1`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` form) is
set; then ``configure`` installs the SDK with the OTLP/HTTP exporter, which reads the standard
``OTEL_*`` variables (endpoint, headers, service name, resource attributes, sampler).

The spans are built by ``aiis ops`` from the event log (``TaskTracer``): the events carry
their times, the router's ``attempt`` notices each provider call's outcome, model and latency,
and ``TaskRequested`` the caller's ``traceparent`` and when the submit began (``submit_us``,
stamped by ``engine.Client`` when tracing is on). So neither the submitting process nor the
worker makes a span or loads the SDK for it — tracing costs the hot path one clock read and
two fields — and the sampler (``OTEL_TRACES_SAMPLER``, parent-based: a caller's unsampled
trace stays unsampled) decides once per task, at its first event. When the terminal event
arrives the task's spans are emitted with their real start and end times:

  ``aiis.task`` (submit → terminal event), a child of the caller's span
  ├─ ``aiis.admission`` (submit → TaskRequested in the log: validation, sanitising, PII,
  │  templates, budgets, the write)
  ├─ ``aiis.queued`` (requested / due again → TaskStarted), one per attempt
  ├─ ``aiis.attempt`` (TaskStarted → the event that ended it), one per attempt
  │  ├─ ``chat <model>`` / ``generate_content <model>``: each provider call (GenAI
  │  │  semantic conventions: ``gen_ai.system``, ``gen_ai.request.model``,
  │  │  ``gen_ai.usage.input_tokens`` …; ``error.type`` when it failed)
  │  └─ ``aiis.commit`` (the last provider call's end → the outcome event in the log)
  └─ ``aiis.retry`` (TaskRetryScheduled → due): the backoff

Only identifiers, classes, models, counts and times go into spans: never an input, a result,
an error message (providers echo prompts in them) or a key.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.core.events import TERMINAL_EVENTS
from engine.settings import Settings

log = logging.getLogger("aiis.tracing")

INSTRUMENTATION = "aiis"
MAX_OPEN_TASKS = 20_000  # tasks whose spans wait for their terminal event (oldest dropped)
_PROPAGATOR = TraceContextTextMapPropagator()
# gen_ai.system values of the GenAI semantic conventions for our providers' names
GEN_AI_SYSTEM = {"gemini": "gcp.gemini", "openai": "openai", "claude": "anthropic"}


def enabled(settings: Settings) -> bool:
    return settings.tracing_on


def configure(settings: Settings, service: str) -> Any:
    """Install the SDK's tracer provider for this process (``service`` is the default
    ``service.name``; ``OTEL_SERVICE_NAME`` wins); ``None`` when tracing is off. The provider
    flushes at exit."""
    if not enabled(settings):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> Tracer:
    return trace.get_tracer(INSTRUMENTATION)


def parent_context(traceparent: str | None) -> Any:
    """The context a span joins: the given W3C trace, or a new trace (``None``)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def _ns(ms: float) -> int:
    return int(ms * 1_000_000)


@dataclass
class _Call:
    provider: str
    model: str
    end_ms: int
    latency_ms: int
    error_class: str | None
    usage: Mapping[str, Any] | None = None


@dataclass
class _Attempt:
    number: int
    start_ms: int
    worker: str
    calls: list[_Call] = field(default_factory=list)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (ts, provider, reason)


class TaskTracer:
    """Folds each task's events (in log order) and emits its spans at its terminal event."""

    def __init__(self, tracer: Tracer, max_open: int = MAX_OPEN_TASKS) -> None:
        self.tracer = tracer
        self.max_open = max_open
        # task id -> its root span (started at its first event) and its events so far; a task
        # the sampler dropped keeps no events (``None``): it costs one lookup per event
        self._open: OrderedDict[str, tuple[Span, list[Mapping[str, Any]] | None]] = OrderedDict()
        self.stats = {"traces": 0, "dropped": 0, "unsampled": 0}

    def observe(self, env: Mapping[str, Any]) -> None:
        task_id = env["task_id"]
        entry = self._open.get(task_id)
        if entry is None:
            if len(self._open) >= self.max_open:
                self._open.popitem(last=False)  # its root is never ended: never exported
                self.stats["dropped"] += 1
            entry = self._open[task_id] = self._start(env)
        root, events = entry
        if events is not None:
            events.append(env)
        if env["type"] not in TERMINAL_EVENTS:
            return
        del self._open[task_id]
        if events is None:
            self.stats["unsampled"] += 1
            return
        try:
            self._emit(root, events)
        except Exception:  # a trace is never worth stopping the ops reader for
            log.exception("tracing: task %s: could not build its spans", task_id)

    def _start(self, first: Mapping[str, Any]) -> tuple[Span, list[Mapping[str, Any]] | None]:
        """The task's root span, under the trace its TaskRequested carries; the sampler (the
        SDK's, honouring that trace's sampled flag) decides here whether it is recorded."""
        data = first["data"] if first["type"] == "TaskRequested" else {}
        began = data.get("submit_us")
        root = self.tracer.start_span(
            "aiis.task",
            context=parent_context(data.get("traceparent")),
            kind=SpanKind.CONSUMER,
            start_time=int(began) * 1000 if isinstance(began, int) else _ns(first["ts"]),
            attributes={
                "aiis.task.id": first["task_id"],
                "aiis.tenant": first.get("tenant", ""),
                "aiis.task.kind": str(data.get("kind", "text")),
                "aiis.task.priority": str(data.get("priority", "")),
            },
        )
        return root, [] if root.is_recording() else None

    def _emit(self, root: Span, events: list[Mapping[str, Any]]) -> None:
        first, last = events[0], events[-1]
        data = first["data"] if first["type"] == "TaskRequested" else {}
        kind = str(data.get("kind", "text"))
        root.set_attribute("aiis.task.outcome", last["type"])
        under = trace.set_span_in_context(root)
        began = data.get("submit_us")
        if isinstance(began, int) and first["type"] == "TaskRequested":
            admission = self.tracer.start_span(
                "aiis.admission", context=under, start_time=began * 1000
            )
            admission.end(end_time=max(began * 1000, _ns(first["ts"])))
        waiting_since = first["ts"]
        attempt: _Attempt | None = None
        for env in events[1:]:
            etype, d, ts = env["type"], env["data"], env["ts"]
            if etype == "TaskStarted":
                self._span("aiis.queued", under, waiting_since, ts, {"aiis.attempt": d["attempt"]})
                attempt = _Attempt(int(d["attempt"]), ts, str(d.get("worker", "")))
            elif etype == "TaskProgress" and attempt is not None:
                _notice(attempt, ts, d)
            elif etype == "TaskRetryScheduled":
                self._attempt(under, attempt, ts, kind, etype, d)
                attempt = None
                due = int(d.get("due_ms", ts))
                self._span(
                    "aiis.retry", under, ts, due, {"aiis.retry.delay_ms": d.get("delay_ms", 0)}
                )
                waiting_since = due
            elif etype == "TaskRequeued":
                self._attempt(under, attempt, ts, kind, etype, d)
                attempt, waiting_since = None, ts
            elif etype in TERMINAL_EVENTS:
                self._attempt(under, attempt, ts, kind, etype, d)
                attempt = None
        if last["type"] in ("TaskFailed", "TaskDeadLettered"):
            error = (last["data"].get("error") or {}).get("error_class", "error")
            root.set_attribute("error.type", str(error))
            root.set_status(Status(StatusCode.ERROR))
        root.end(end_time=_ns(last["ts"]))
        self.stats["traces"] += 1

    def _span(
        self, name: str, under: Any, start_ms: float, end_ms: float, attrs: Mapping[str, Any]
    ) -> Span:
        span = self.tracer.start_span(
            name, context=under, start_time=_ns(start_ms), attributes=dict(attrs)
        )
        span.end(end_time=_ns(max(start_ms, end_ms)))
        return span

    def _attempt(
        self,
        under: Any,
        attempt: _Attempt | None,
        end_ms: int,
        kind: str,
        etype: str,
        data: Mapping[str, Any],
    ) -> None:
        """The attempt's span, its provider calls and its commit, now that it ended."""
        if attempt is None:
            return
        if etype == "TaskSucceeded" and not data.get("cached"):
            ok = next((c for c in attempt.calls if c.error_class is None), None)
            if ok is None:  # a provider that writes no notices (echo, scripted)
                ok = _Call(
                    str(data.get("provider", "")),
                    str(data.get("model", "")),
                    end_ms,
                    int(data.get("latency_ms", 0)),
                    None,
                )
                attempt.calls.append(ok)
            ok.usage = data.get("usage") or {}
        span = self.tracer.start_span(
            "aiis.attempt",
            context=under,
            start_time=_ns(attempt.start_ms),
            attributes={
                "aiis.attempt": attempt.number,
                "aiis.worker": attempt.worker,
                "aiis.attempt.outcome": etype,
            },
        )
        for ts, provider, reason in attempt.skipped:
            span.add_event(
                "provider skipped",
                {"gen_ai.system": GEN_AI_SYSTEM.get(provider, provider), "reason": reason},
                timestamp=_ns(ts),
            )
        inside = trace.set_span_in_context(span)
        for call in attempt.calls:
            self._call(inside, call, kind, attempt.start_ms)
        error = (data.get("error") or {}).get("error_class")
        if error:
            span.set_attribute("error.type", str(error))
            span.set_status(Status(StatusCode.ERROR))
        if etype in ("TaskSucceeded", "TaskFailed", "TaskDeadLettered", "TaskRetryScheduled"):
            last_call = max((c.end_ms for c in attempt.calls), default=attempt.start_ms)
            self._span("aiis.commit", inside, last_call, end_ms, {})
        span.end(end_time=_ns(max(attempt.start_ms, end_ms)))

    def _call(self, under: Any, call: _Call, kind: str, not_before: int) -> None:
        operation = "generate_content" if kind == "image" else "chat"
        system = GEN_AI_SYSTEM.get(call.provider, call.provider)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.system": system,
            "gen_ai.provider.name": system,
            "gen_ai.request.model": call.model,
        }
        if call.usage is not None:
            attrs["gen_ai.response.model"] = call.model
            attrs["gen_ai.usage.input_tokens"] = int(call.usage.get("input_tokens", 0))
            attrs["gen_ai.usage.output_tokens"] = int(call.usage.get("output_tokens", 0))
        if call.error_class is not None:
            attrs["error.type"] = call.error_class
        start = max(not_before, call.end_ms - call.latency_ms)
        span = self.tracer.start_span(
            f"{operation} {call.model}".strip(),
            context=under,
            kind=SpanKind.CLIENT,
            start_time=_ns(start),
            attributes=attrs,
        )
        if call.error_class is not None:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=_ns(max(start, call.end_ms)))


def _notice(attempt: _Attempt, ts: int, data: Mapping[str, Any]) -> None:
    notice, detail = data.get("notice"), data.get("detail") or {}
    provider = detail.get("provider")
    if not isinstance(provider, str):
        return
    if notice == "attempt" and detail.get("outcome") in ("ok", "error"):
        attempt.calls.append(
            _Call(
                provider,
                str(detail.get("model", "")),
                ts,
                int(detail.get("latency_ms") or 0),
                None if detail.get("outcome") == "ok" else str(detail.get("error_class", "error")),
                detail.get("usage") if detail.get("outcome") == "error" else None,
            )
        )
    elif notice == "skipped":
        attempt.skipped.append((ts, provider, str(detail.get("reason", ""))))
