"""A task's story: its events folded into a timeline an operator can read — every event with
its offset from the request, each engine attempt with the provider calls the router made in it
(provider, model, outcome, error class, latency), the fallbacks, the retries and their delays,
the tokens streamed, the cost and the outcome.

``build(events)`` is pure (the same events give the same story); ``load(client, task_id)`` reads
the events from the task's partition (its archived part included). The gateway's
``GET /v1/tasks/{id}/events`` (JSON), the dashboard's timeline panel and ``aiis get ID --events``
all show this one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.client import Client
from engine.core import mapper, tolerant
from engine.core.events import (
    TERMINAL_EVENTS,
    Event,
    TaskCancelled,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequested,
    TaskRequeued,
    TaskRetryScheduled,
    TaskStarted,
    TaskSucceeded,
)
from engine.core.keys import partition_of
from engine.core.store import id_before
from engine.errors import EventDecodeError, TaskNotFound

MAX_PAGES = 200  # history pages of 500 entries read for one story (a running task's log tail)
MAX_TIMELINE = 2000  # events listed; text deltas beyond it are only counted


@dataclass(slots=True)
class Call:
    """One provider call (or skip) the router reported in an attempt."""

    provider: str
    model: str | None
    outcome: str  # "ok" | "error" | "skipped"
    latency_ms: int | None = None
    error_class: str | None = None
    message: str | None = None
    reason: str | None = None  # a skip's reason: circuit_open, rate_limited, no_usable_key
    cost_usd: float | None = None


@dataclass(slots=True)
class Attempt:
    """One engine attempt: from its ``TaskStarted`` to the event that ended it."""

    attempt: int
    worker: str
    started_ms: int  # offset from the request
    reclaimed: bool = False
    calls: list[Call] = field(default_factory=list)
    deltas: int = 0
    chars: int = 0
    outcome: str | None = None  # succeeded, retry_scheduled, failed, dead_lettered, …
    ended_ms: int | None = None
    error_class: str | None = None
    error: str | None = None
    provider: str | None = None
    model: str | None = None
    latency_ms: int | None = None


@dataclass(slots=True)
class Line:
    """One event of the timeline."""

    id: str | None
    type: str
    offset_ms: int
    attempt: int | None
    summary: str


@dataclass(slots=True)
class Story:
    task_id: str
    tenant: str
    kind: str | None = None
    priority: str | None = None
    status: str = "queued"
    requested_ts: int | None = None
    retry_of: str | None = None
    events: list[Line] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)
    deltas: int = 0  # text deltas streamed, over every attempt
    chars: int = 0
    usage: dict[str, int] | None = None
    cost_usd: float | None = None  # the success's cost plus failed calls the provider billed
    provider: str | None = None
    model: str | None = None
    latency_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    dead_reason: str | None = None
    duration_ms: int | None = None  # request to terminal event
    truncated: bool = False  # more events than MAX_TIMELINE (deltas still counted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_STATUS = {
    "TaskSucceeded": "succeeded",
    "TaskFailed": "failed",
    "TaskDeadLettered": "dead_lettered",
    "TaskCancelled": "cancelled",
}


def build(events: Sequence[Event]) -> Story:
    """The story of one task's events, in log order."""
    if not events:
        raise ValueError("a story needs at least one event")
    first = events[0]
    story = Story(task_id=first.task_id, tenant=first.tenant)
    t0 = first.ts
    current: Attempt | None = None
    billed = 0.0
    for event in events:
        offset = event.ts - t0
        summary = ""
        attempt_no: int | None = getattr(event.data, "attempt", None)
        if isinstance(event, TaskRequested):
            d = event.data
            story.kind, story.priority, story.retry_of = d.kind, d.priority, d.retry_of
            story.requested_ts = event.ts
            summary = f"requested: {d.kind}, priority {d.priority}"
            if d.retry_of:
                summary += f", retry of dead letter {d.retry_of}"
        elif isinstance(event, TaskStarted):
            current = Attempt(
                attempt=event.data.attempt,
                worker=event.data.worker,
                started_ms=offset,
                reclaimed=event.data.reclaimed,
            )
            story.attempts.append(current)
            story.status = "running"
            summary = f"attempt {event.data.attempt} started on {event.data.worker}"
            if event.data.reclaimed:
                summary += " (reclaimed from a lost worker)"
        elif isinstance(event, TaskProgress):
            summary = _progress(story, current, event, offset)
            if event.data.notice == "attempt" and event.data.detail:
                cost = event.data.detail.get("cost_usd")
                if isinstance(cost, int | float) and event.data.detail.get("outcome") == "error":
                    billed += float(cost)
        elif isinstance(event, TaskRetryScheduled):
            rs = event.data
            story.status = "retry_scheduled"
            story.retries.append(
                {
                    "attempt": rs.attempt,
                    "delay_ms": rs.delay_ms,
                    "offset_ms": offset,
                    "error_class": rs.error.error_class,
                    "message": rs.error.message,
                }
            )
            _end(current, "retry_scheduled", offset, rs.error.error_class, rs.error.message)
            summary = f"retry in {rs.delay_ms} ms after {rs.error.error_class}: {rs.error.message}"
        elif isinstance(event, TaskRequeued):
            story.status = "queued"
            summary = f"requeued ({event.data.reason})"
        elif isinstance(event, TaskSucceeded):
            ok = event.data
            story.provider, story.model, story.latency_ms = ok.provider, ok.model, ok.latency_ms
            story.usage = ok.usage.model_dump()
            story.cost_usd = ok.cost_usd
            story.result = ok.result.model_dump(mode="json")
            if current is not None:
                current.provider, current.model, current.latency_ms = (
                    ok.provider,
                    ok.model,
                    ok.latency_ms,
                )
            _end(current, "succeeded", offset)
            summary = (
                f"succeeded on {ok.provider}/{ok.model} in {ok.latency_ms} ms, "
                f"{ok.usage.input_tokens}+{ok.usage.output_tokens} tokens"
                + (f", ${ok.cost_usd:.6f}" if ok.cost_usd is not None else "")
                + (" (cached)" if ok.cached else "")
            )
        elif isinstance(event, TaskFailed):
            e = event.data.error
            story.error = e.model_dump()
            _end(current, "failed", offset, e.error_class, e.message)
            summary = f"failed: {e.error_class}: {e.message}"
        elif isinstance(event, TaskDeadLettered):
            dl = event.data
            story.dead_reason = dl.reason
            if dl.error is not None:
                story.error = dl.error.model_dump()
            _end(
                current,
                "dead_lettered",
                offset,
                dl.error.error_class if dl.error else None,
                dl.error.message if dl.error else None,
            )
            summary = f"dead-lettered ({dl.reason})" + (
                f": {dl.error.error_class}: {dl.error.message}" if dl.error else ""
            )
        elif isinstance(event, TaskCancelled):
            _end(current, "cancelled", offset)
            summary = f"cancelled while {event.data.stage}"
        if event.type in TERMINAL_EVENTS:
            story.status = _STATUS[event.type]
            story.duration_ms = offset
            current = None
        if summary:
            if len(story.events) < MAX_TIMELINE:
                story.events.append(Line(event.id, event.type, offset, attempt_no, summary))
            else:
                story.truncated = True
    if billed:
        story.cost_usd = (story.cost_usd or 0.0) + billed
    return story


def _end(
    current: Attempt | None,
    outcome: str,
    offset: int,
    error_class: str | None = None,
    error: str | None = None,
) -> None:
    if current is None:
        return
    current.outcome, current.ended_ms = outcome, offset
    current.error_class, current.error = error_class, error


def _progress(story: Story, current: Attempt | None, event: TaskProgress, offset: int) -> str:
    """Count a delta, or turn a router notice into a call, a fallback or a timeline line."""
    d = event.data
    if d.delta:
        story.deltas += 1
        story.chars += len(d.delta)
        if current is not None:
            current.deltas += 1
            current.chars += len(d.delta)
    notice, detail = d.notice, d.detail or {}
    if notice is None:
        return ""  # a text delta: counted, not listed
    if notice == "attempt":
        call = Call(
            provider=str(detail.get("provider", "?")),
            model=_str(detail.get("model")),
            outcome=str(detail.get("outcome", "?")),
            latency_ms=_int(detail.get("latency_ms")),
            error_class=_str(detail.get("error_class")),
            message=_str(detail.get("message")),
            cost_usd=_float(detail.get("cost_usd")),
        )
        if current is not None:
            current.calls.append(call)
        if call.outcome == "ok":
            return f"{call.provider}/{call.model} answered in {call.latency_ms} ms"
        return (
            f"{call.provider}/{call.model} failed after {call.latency_ms} ms: "
            f"{call.error_class}: {call.message}"
        )
    if notice == "skipped":
        call = Call(
            provider=str(detail.get("provider", "?")),
            model=_str(detail.get("model")),
            outcome="skipped",
            reason=_str(detail.get("reason")),
        )
        if current is not None:
            current.calls.append(call)
        return f"{call.provider} skipped ({call.reason})"
    if notice == "fallback":
        item = {
            "attempt": d.attempt,
            "offset_ms": offset,
            "from": _str(detail.get("from")),
            "to": _str(detail.get("to")),
            "error_class": _str(detail.get("error_class")),
            "message": _str(detail.get("message")),
        }
        story.fallbacks.append(item)
        return f"fallback {item['from']} → {item['to']} after {item['error_class']}"
    if notice.startswith("circuit_"):
        return f"{detail.get('provider', '?')} circuit {notice.removeprefix('circuit_')}"
    return notice


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def events_of(client: Client, task_id: str) -> list[Event]:
    """The task's events so far, in log order (never blocks; ``TaskNotFound`` if none)."""
    word = await client.state_word(task_id)
    if word is None:
        raise TaskNotFound(task_id)
    partition = partition_of(task_id, client.settings.partitions)
    cursor = id_before(word.requested_id)
    wanted = task_id.encode()
    out: list[Event] = []
    for _ in range(MAX_PAGES):
        entries = await client.store.history(partition, task_id, cursor)
        if not entries:
            break
        for eid, fields in entries:
            cursor = eid.decode()
            if fields.get(b"task") != wanted:
                continue
            try:
                event = mapper.decode(eid, fields)
            except EventDecodeError as exc:  # anyone can XADD: skip it
                tolerant.skipped("story", cursor, exc)
                continue
            out.append(event)
            if event.type in TERMINAL_EVENTS:
                return out
    return out


async def load(client: Client, task_id: str, *, restore: bool = True) -> Story:
    """The task's story. ``restore``: the result as its caller sees it (out-of-line text
    loaded, PII placeholders restored) — only for a principal allowed to read the task."""
    events = await events_of(client, task_id)
    if not events:
        raise TaskNotFound(task_id)
    if restore and isinstance(events[-1], TaskSucceeded):
        events[-1] = await client.for_caller(events[-1])
    return build(events)


def render(console: Console, story: Story) -> None:
    """The story in a terminal: a header, the timeline, each attempt's provider calls."""
    head = f"[bold]{story.task_id}[/]  {story.status}  tenant {story.tenant}"
    if story.kind:
        head += f"  {story.kind}/{story.priority}"
    console.print(head)
    if story.retry_of:
        console.print(f"retry of dead letter {story.retry_of}")
    timeline = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    timeline.add_column("+ms", justify="right")
    timeline.add_column("attempt", justify="right")
    timeline.add_column("event")
    timeline.add_column("what happened", overflow="fold")
    for line in story.events:
        attempt = "" if line.attempt is None else str(line.attempt)
        timeline.add_row(str(line.offset_ms), attempt, line.type, escape(line.summary))
    console.print(timeline)
    if story.truncated:
        console.print(f"(timeline cut at {MAX_TIMELINE} events)")
    for a in story.attempts:
        ended = "running" if a.outcome is None else a.outcome
        console.print(
            f"attempt {a.attempt} on {a.worker}: {ended}"
            + (f" ({a.error_class})" if a.error_class else "")
            + (f", {a.deltas} deltas / {a.chars} chars streamed" if a.deltas else "")
        )
        for c in a.calls:
            what = f"{c.latency_ms} ms" if c.latency_ms is not None else c.reason or ""
            err = f" {c.error_class}" if c.error_class else ""
            console.print(f"  {c.provider}/{c.model or '-'}  {c.outcome}{err}  {what}")
    for f in story.fallbacks:
        console.print(
            f"fallback {f['from']} → {f['to']} ({f['error_class']}) at +{f['offset_ms']} ms"
        )
    for r in story.retries:
        console.print(
            f"retry after attempt {r['attempt']}: delay {r['delay_ms']} ms ({r['error_class']})"
        )
    tail = []
    if story.usage is not None:
        tail.append(f"tokens {story.usage['input_tokens']} in / {story.usage['output_tokens']} out")
    if story.cost_usd is not None:
        tail.append(f"cost ${story.cost_usd:.6f}")
    if story.duration_ms is not None:
        tail.append(f"took {story.duration_ms} ms")
    if tail:
        console.print(", ".join(tail))
    if story.result is not None and story.result.get("text") is not None:
        console.print("[bold]result[/]")
        console.print(escape(str(story.result["text"])))
    elif story.error is not None:
        console.print(
            f"[red]error[/] {story.error['error_class']}: {escape(story.error['message'])}"
        )
