"""Task events: immutable, strict, past tense. The envelope is DESIGN.md §4's
``{"id", "type", "task_id", "tenant", "ts", "v", "data"}``; ``data`` is typed per event.

Most events are written by Lua scripts on the hot path (see ``engine/core/lua``); a contract test
decodes every script-written event through these models, so the two cannot drift
(tests/engine/test_lua_events.py: a script's entry and the Python mapper's entry of the same model
decode to equal models). ``StateCode`` is the one spelling of the state-word letters.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.DEAD_LETTERED, Status.CANCELLED})
TERMINAL_EVENTS = frozenset({"TaskSucceeded", "TaskFailed", "TaskDeadLettered", "TaskCancelled"})


class StateCode(StrEnum):
    """The one-letter status of a task's state word (``keys.state``), as the Lua scripts write it
    (``code|attempt|tenant|priority|ref|requested_id``); named after its ``Status``."""

    QUEUED = "Q"
    RUNNING = "R"
    RETRY_SCHEDULED = "D"
    SUCCEEDED = "S"
    FAILED = "F"
    DEAD_LETTERED = "X"
    CANCELLED = "C"

    @property
    def status(self) -> Status:
        return Status[self.name]


TERMINAL_CODES = frozenset(
    {StateCode.SUCCEEDED, StateCode.FAILED, StateCode.DEAD_LETTERED, StateCode.CANCELLED}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatMessageIn(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ErrorInfo(_Strict):
    error_class: str
    message: str
    provider: str | None = None  # the provider that failed, when a provider call failed


class UsageInfo(_Strict):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class ImageInfo(_Strict):
    url: str
    width: int | None = None
    height: int | None = None
    author: str | None = None
    source_url: str | None = None
    description: str | None = None


class ResultRefInfo(_Strict):
    """Where a large result text lives (``engine.core.blobs.Offloader``); ``text`` is then None."""

    key: str
    size: int
    sha256: str


class ResultInfo(_Strict):
    text: str | None = None
    images: list[ImageInfo] = Field(default_factory=list)
    ref: ResultRefInfo | None = None  # the text was stored out of line (over the offload size)
    truncated: bool = False  # the text was cut at AIIS_MAX_RESULT_BYTES


# --- data of each event type -------------------------------------------------------------


# TaskRequestedData fields written only when set (tracing), so untraced events keep their bytes
TRACING_FIELDS = ("traceparent", "submit_us")
# the same for a task admitted from the intake stream (engine/runtime/intake.py)
INTAKE_FIELDS = ("correlation_id", "intake_id")
OMITTED_WHEN_NONE = (*TRACING_FIELDS, *INTAKE_FIELDS)


class TaskRequestedData(_Strict):
    kind: Literal["text", "chat", "image"]
    input: str | list[ChatMessageIn]
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"]
    idempotency_key: str | None = None
    deadline_ms: int
    retry_of: str | None = None  # set by `aiis dlq retry`: the dead-lettered task it repeats
    traceparent: str | None = None  # W3C trace context the task's spans join
    # with tracing on: when the submit began (epoch µs), so the admission span has a start
    submit_us: int | None = None
    # admitted from the intake stream: the producer's correlation id and the entry's id
    correlation_id: str | None = None
    intake_id: str | None = None


class TaskStartedData(_Strict):
    attempt: int
    worker: str
    reclaimed: bool = False


class TaskProgressData(_Strict):
    attempt: int
    delta: str = ""
    notice: str | None = None  # e.g. "fallback", "partial_discarded"
    detail: dict[str, Any] | None = None


class TaskRetryScheduledData(_Strict):
    attempt: int
    delay_ms: int
    due_ms: int
    error: ErrorInfo


class TaskRequeuedData(_Strict):
    attempt: int
    reason: Literal["retry_due", "released"]


class TaskSucceededData(_Strict):
    attempt: int
    provider: str
    model: str
    usage: UsageInfo
    cost_usd: float | None
    finish_reason: str | None = None
    result: ResultInfo
    latency_ms: int
    cached: bool = False


class TaskFailedData(_Strict):
    attempt: int
    error: ErrorInfo


class TaskDeadLetteredData(_Strict):
    attempt: int
    reason: Literal["retries_exhausted", "max_deliveries", "malformed", "deadline"]
    error: ErrorInfo | None = None


class TaskCancelledData(_Strict):
    attempt: int
    stage: Literal["queued", "retry_scheduled", "running"]


# --- operational events: written to the ops stream ``<ns>:ops`` by ``aiis ops`` and the
# workers, never to a task's partition log (so a task's terminal event stays its last one) ---


class AlertRaisedData(_Strict):
    alert_id: str  # "<rule>:<subject>", the same on the AlertResolved that ends it
    rule: str
    subject: str
    severity: Literal["warning", "critical"]
    message: str
    value: float
    threshold: float


class AlertResolvedData(_Strict):
    alert_id: str
    rule: str
    subject: str
    value: float


class WebhookAttemptedData(_Strict):
    delivery_id: str
    url: str  # without query and fragment
    attempt: int
    outcome: Literal["delivered", "retrying", "failed", "rejected"]
    status: int | None = None
    error: str | None = None
    duration_ms: int
    next_delay_s: float | None = None
    event_type: str  # the terminal event delivered
    event_id: str


# --- envelopes ---------------------------------------------------------------------------


class _Envelope(_Strict):
    id: str | None = None
    task_id: str
    tenant: str
    ts: int
    v: int = 1


class TaskRequested(_Envelope):
    type: Literal["TaskRequested"] = "TaskRequested"
    data: TaskRequestedData


class TaskStarted(_Envelope):
    type: Literal["TaskStarted"] = "TaskStarted"
    data: TaskStartedData


class TaskProgress(_Envelope):
    type: Literal["TaskProgress"] = "TaskProgress"
    data: TaskProgressData


class TaskRetryScheduled(_Envelope):
    type: Literal["TaskRetryScheduled"] = "TaskRetryScheduled"
    data: TaskRetryScheduledData


class TaskRequeued(_Envelope):
    type: Literal["TaskRequeued"] = "TaskRequeued"
    data: TaskRequeuedData


class TaskSucceeded(_Envelope):
    type: Literal["TaskSucceeded"] = "TaskSucceeded"
    data: TaskSucceededData


class TaskFailed(_Envelope):
    type: Literal["TaskFailed"] = "TaskFailed"
    data: TaskFailedData


class TaskDeadLettered(_Envelope):
    type: Literal["TaskDeadLettered"] = "TaskDeadLettered"
    data: TaskDeadLetteredData


class TaskCancelled(_Envelope):
    type: Literal["TaskCancelled"] = "TaskCancelled"
    data: TaskCancelledData


class AlertRaised(_Envelope):
    type: Literal["AlertRaised"] = "AlertRaised"
    data: AlertRaisedData


class AlertResolved(_Envelope):
    type: Literal["AlertResolved"] = "AlertResolved"
    data: AlertResolvedData


class WebhookAttempted(_Envelope):
    type: Literal["WebhookAttempted"] = "WebhookAttempted"
    data: WebhookAttemptedData


OPS_EVENTS = frozenset({"AlertRaised", "AlertResolved", "WebhookAttempted"})

Event = Annotated[
    TaskRequested
    | TaskStarted
    | TaskProgress
    | TaskRetryScheduled
    | TaskRequeued
    | TaskSucceeded
    | TaskFailed
    | TaskDeadLettered
    | TaskCancelled,
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[_Envelope]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        TaskRequested,
        TaskStarted,
        TaskProgress,
        TaskRetryScheduled,
        TaskRequeued,
        TaskSucceeded,
        TaskFailed,
        TaskDeadLettered,
        TaskCancelled,
        AlertRaised,
        AlertResolved,
        WebhookAttempted,
    )
}
