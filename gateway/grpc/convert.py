"""Between protobuf messages and the engine's types: pure functions, no I/O.

Enums travel as proto enums (``TASK_KIND_UNSPECIFIED`` means text, ``PRIORITY_UNSPECIFIED``
normal); event ``data`` and task ``params`` travel as ``google.protobuf.Struct``, i.e. JSON.
A Struct holds every number as a double, so a number without a fractional part is handed to
the engine as an ``int`` (``max_tokens: 100``, not ``100.0``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from engine.admission.sanitize import Limits
from engine.client import TaskView
from engine.core.events import Event, Status
from engine.errors import InvalidTask
from gateway.grpc.gen import tasks_pb2 as pb

KIND_NAMES: dict[int, str] = {
    pb.TASK_KIND_UNSPECIFIED: "text",
    pb.TASK_KIND_TEXT: "text",
    pb.TASK_KIND_CHAT: "chat",
    pb.TASK_KIND_IMAGE: "image",
}
KIND_ENUMS: dict[str, pb.TaskKind] = {
    "text": pb.TASK_KIND_TEXT,
    "chat": pb.TASK_KIND_CHAT,
    "image": pb.TASK_KIND_IMAGE,
}
PRIORITY_NAMES: dict[int, str] = {
    pb.PRIORITY_UNSPECIFIED: "normal",
    pb.PRIORITY_HIGH: "high",
    pb.PRIORITY_NORMAL: "normal",
    pb.PRIORITY_LOW: "low",
}
PRIORITY_ENUMS: dict[str, pb.Priority] = {
    "high": pb.PRIORITY_HIGH,
    "normal": pb.PRIORITY_NORMAL,
    "low": pb.PRIORITY_LOW,
}
STATUS_ENUMS: dict[Status, pb.TaskStatus] = {
    Status.QUEUED: pb.TASK_STATUS_QUEUED,
    Status.RUNNING: pb.TASK_STATUS_RUNNING,
    Status.RETRY_SCHEDULED: pb.TASK_STATUS_RETRY_SCHEDULED,
    Status.SUCCEEDED: pb.TASK_STATUS_SUCCEEDED,
    Status.FAILED: pb.TASK_STATUS_FAILED,
    Status.DEAD_LETTERED: pb.TASK_STATUS_DEAD_LETTERED,
    Status.CANCELLED: pb.TASK_STATUS_CANCELLED,
}


def plain(value: Any) -> Any:
    """A Struct's JSON value with integral doubles turned back into ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


MAX_CHAT_MESSAGES = Limits().chat_messages  # checked before the messages are copied


def submit_args(request: pb.SubmitTaskRequest) -> dict[str, Any]:
    """Keyword arguments of ``Client.submit`` (all but ``tenant``) from a request.

    Only the enums are checked here; the engine validates the rest and names the bad field.
    """
    if request.kind not in KIND_NAMES:
        raise InvalidTask("kind", f"unknown kind {request.kind}")
    if request.priority not in PRIORITY_NAMES:
        raise InvalidTask("priority", f"unknown priority {request.priority}")
    task_input: str | list[dict[str, str]]
    if request.WhichOneof("input") == "chat":
        if len(request.chat.messages) > MAX_CHAT_MESSAGES:
            count = len(request.chat.messages)
            raise InvalidTask("input", f"{count} chat messages; the limit is {MAX_CHAT_MESSAGES}")
        task_input = [{"role": m.role, "content": m.content} for m in request.chat.messages]
    else:
        task_input = request.prompt  # "" when neither is set: the engine says "prompt is empty"
    args: dict[str, Any] = {
        "input": task_input,
        "kind": KIND_NAMES[request.kind],
        "priority": PRIORITY_NAMES[request.priority],
        "idempotency_key": request.idempotency_key or None,
    }
    if request.HasField("params"):
        args["params"] = plain(json_format.MessageToDict(request.params))
    if request.HasField("deadline_s"):
        args["deadline_s"] = request.deadline_s
    return args


def struct(data: dict[str, Any]) -> Struct:
    message = Struct()
    message.update(data)
    return message


def event_message(event: Event) -> pb.Event:
    """The protobuf form of an event: the JSON envelope, field for field."""
    return pb.Event(
        id=event.id or "",
        type=event.type,
        task_id=event.task_id,
        tenant=event.tenant,
        ts=event.ts,
        v=event.v,
        data=struct(event.data.model_dump(mode="json")),
    )


def task_message(view: TaskView) -> pb.Task:
    """The protobuf form of the engine's view of a task."""
    return pb.Task(
        task_id=view.task_id,
        status=STATUS_ENUMS[view.status],
        tenant=view.tenant,
        kind=KIND_ENUMS.get(view.kind, pb.TASK_KIND_UNSPECIFIED),
        priority=PRIORITY_ENUMS.get(view.priority, pb.PRIORITY_UNSPECIFIED),
        attempts=view.attempts,
        created_ms=view.created_ms,
        deadline_ms=view.deadline_ms,
        terminal=event_message(view.terminal) if view.terminal is not None else None,
        source=pb.TASK_SOURCE_LOG,
    )


def task_from_record(task_id: str, record: dict[str, Any], view: TaskView | None) -> pb.Task:
    """A task answered from its ``task_state`` record; ``view`` (the engine's, ``None`` once
    the engine has forgotten the task) adds the terminal event and the deadline."""
    terminal = view.terminal if view is not None else None
    return pb.Task(
        task_id=task_id,
        status=STATUS_ENUMS[Status(record["status"])],
        tenant=record["tenant"],
        kind=KIND_ENUMS.get(record["kind"] or "", pb.TASK_KIND_UNSPECIFIED),
        priority=PRIORITY_ENUMS.get(record["priority"] or "", pb.PRIORITY_UNSPECIFIED),
        attempts=record["attempts"],
        created_ms=record["requested_ts"] or 0,
        deadline_ms=view.deadline_ms if view is not None else 0,
        terminal=event_message(terminal) if terminal is not None else None,
        source=pb.TASK_SOURCE_PROJECTION,
        record=struct(record),
    )
