"""The AsyncAPI document of every event the service publishes, generated from the event models
(``engine.core.events``) with FastStream: ``python -m projections.asyncapi > docs/asyncapi.json``.

Each event type is one operation on the partition's event log stream. On the stream an event is
an entry with the fields ``type``, ``task``, ``tenant``, ``ts``, ``v`` and ``data`` (JSON); the
schemas describe the envelope (DESIGN.md §4) that ``engine.core.mapper.envelope`` builds from it and
the gateway sends to WebSocket subscribers.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
from faststream.redis import RedisBroker, StreamSub
from faststream.specification import AsyncAPI
from pydantic import BaseModel, ConfigDict, Field

from engine.core.events import EVENT_TYPES, OPS_EVENTS
from engine.core.keys import (
    INTAKE_GROUP,
    PartitionKeys,
    intake_key,
    intake_rejected_key,
    log_key_template,
    ops_key,
)
from engine.core.mapper import CURRENT_VERSION
from engine.core.task import TaskSpec
from engine.settings import Settings

TITLE = "ai-integration-service events"
VERSION = "1"
# the channels are named as engine.core.keys names them, in the default namespace
NAMESPACE = str(Settings.model_fields["namespace"].default)
LOG = PartitionKeys(NAMESPACE, 0).log
OPS = ops_key(NAMESPACE)
INTAKE = intake_key(NAMESPACE)


class PlainIntakeEntry(BaseModel):
    """A plain intake entry (redis-cli, ioredis, go-redis): stream fields, not JSON."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="The task object of POST /v1/tasks, as JSON (TaskSpec)")
    correlation_id: str | None = Field(None, max_length=128, description="Shown on TaskRequested")


class IntakeRejected(BaseModel):
    """An intake entry refused (stream fields); nothing of it reached the log."""

    intake_id: str = Field(description="The refused entry's id in the intake stream")
    correlation_id: str = Field(description="The entry's correlation id, or empty")
    code: str = Field(
        description="The HTTP API's code: bad_message, bad_json, too_large, invalid_task, "
        "pii_blocked, template_error, bad_callback_url, budget_exceeded, queue_full, "
        "idempotency_conflict, tenant_not_allowed"
    )
    field: str
    message: str


_DOCS = {
    "TaskRequested": "A producer submitted a task; it is queued at its priority.",
    "TaskStarted": "A worker claimed the task; ``attempt`` is the fencing token "
    "(``reclaimed``: taken over from a crashed or stalled worker).",
    "TaskProgress": "Streamed text ``delta``, or a router ``notice`` (attempt — one per "
    "provider call, after it ended, with its outcome and latency —, skipped, fallback, "
    "partial_discarded, circuit_opened, circuit_closed) with ``detail``.",
    "TaskRetryScheduled": "The attempt failed with a retryable error; the task waits until "
    "``due_ms``.",
    "TaskRequeued": "The task is back in its queue (a retry is due, or a worker released it).",
    "TaskSucceeded": "Terminal: the result, provider, model, token usage and cost "
    "(``cost_usd`` null when the price is unknown).",
    "TaskFailed": "Terminal: a non-retryable error.",
    "TaskDeadLettered": "Terminal: retries or deliveries exhausted, malformed, or past its "
    "deadline; a copy is in the dead-letter stream.",
    "TaskCancelled": "Terminal: cancelled at ``stage``.",
    "AlertRaised": "Ops stream (<namespace>:ops, not a task log): an alert rule fired "
    "(queue_backlog, provider_error_rate, cost_over_budget, circuit_open, "
    "provider_keys_exhausted, secrets_reload_failed).",
    "AlertResolved": "Ops stream: the alert ``alert_id`` cleared.",
    "WebhookAttempted": "Ops stream: one delivery attempt of a task's terminal event to its "
    "callback URL (``task_id`` names the task).",
}


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document as a plain dict (stable order)."""
    broker = RedisBroker(
        "redis://localhost:6379",
        description="The Redis of the deployment (AIIS_REDIS_URL). One event log stream per "
        f"partition: {log_key_template('<namespace>')}, e.g. {LOG} … "
        f"{PartitionKeys(NAMESPACE, 15).log}.",
    )
    for name, model in EVENT_TYPES.items():
        broker.publisher(
            stream=OPS if name in OPS_EVENTS else LOG,
            title=name,
            description=f"{_DOCS.get(name, name)} Schema version v{CURRENT_VERSION[name]}.",
            schema=model,
        )
    intake = StreamSub(INTAKE, group=INTAKE_GROUP, consumer="<host>-<pid>-<n>", batch=True)

    @broker.subscriber(
        stream=intake,
        title="IntakePlain",
        description=f"Producers XADD a task to {INTAKE} (AIIS_INTAKE_STREAM): the plain format, "
        "fields `task` (JSON) and optional `correlation_id`. `aiis intake` admits each entry "
        "once, through Client.submit's admission (docs/intake.md).",
    )
    async def plain(body: PlainIntakeEntry) -> None: ...

    @broker.subscriber(
        stream=StreamSub(INTAKE, group=INTAKE_GROUP, consumer="<host>-<pid>-<n>"),
        title="IntakeFastStream",
        description=f"The same stream, FastStream's own format: "
        f"`RedisBroker.publish(task, stream={INTAKE!r}, correlation_id=...)`; the body is the "
        "task object, the message's correlation id is the correlation id.",
    )
    async def faststream(body: TaskSpec) -> None: ...

    broker.publisher(
        stream=intake_rejected_key(INTAKE),
        title="IntakeRejected",
        description="Intake entries refused (capped at AIIS_INTAKE_REJECTED_MAX_LEN).",
        schema=IntakeRejected,
    )
    spec = AsyncAPI(
        broker,
        title=TITLE,
        version=VERSION,
        description=__doc__,
        schema_version="3.0.0",
    ).to_specification()
    document: dict[str, Any] = orjson.loads(spec.to_json())
    return document


def render() -> bytes:
    return orjson.dumps(build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> int:
    sys.stdout.buffer.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
