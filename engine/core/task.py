"""What a caller may submit, validated strictly at the door: unknown fields, wrong types, bad
kinds and priorities and oversized inputs are rejected with an error naming the field, before
anything is written.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from engine.core.events import ChatMessageIn
from engine.core.params import validate_params
from engine.errors import InvalidTask
from engine.settings import Settings

TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# W3C Trace Context `traceparent`, version 00 (all-zero trace and span ids are invalid)
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def _traceparent(value: str | None) -> str | None:
    if value is not None and not TRACEPARENT.fullmatch(value):
        raise ValueError("not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<flags>)")
    return value


class SizeLimits(Protocol):
    """The size limits a task is checked against: the deployment's (``engine.admission.policy``)."""

    @property
    def max_prompt_chars(self) -> int: ...
    @property
    def max_params_bytes(self) -> int: ...


class TaskSpec(BaseModel):
    """A task as submitted by a producer."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: Literal["text", "chat", "image"] = "text"
    input: str | list[ChatMessageIn] = ""  # may stay empty when params.template renders it
    priority: Literal["high", "normal", "low"] = "normal"
    tenant: str = Field("default", pattern=TENANT_PATTERN)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    deadline_s: float | None = Field(None, gt=0, le=7 * 86400)
    # the producer's trace: the task's spans join it (engine/operations/tracing.py)
    traceparent: Annotated[str | None, AfterValidator(_traceparent)] = None


@dataclass(frozen=True, slots=True)
class IntakeRef:
    """Where a task admitted from the intake stream came from (engine/runtime/intake.py): the
    stream, the entry's id and the producer's correlation id. Without an idempotency key the
    entry names the task (``keys.intake_task_id``), so a redelivered entry is the same task."""

    stream: str
    intake_id: str
    correlation_id: str | None = None


def _field_of(err: Any) -> str:
    loc = [str(part) for part in err["loc"] if not str(part).startswith(("str", "list["))]
    return ".".join(loc) or "task"


def validate_task(raw: dict[str, Any], settings: Settings | SizeLimits) -> TaskSpec:
    """A valid ``TaskSpec`` from ``raw``, or ``InvalidTask`` naming the first bad field; sizes
    are checked against ``settings`` (pass the deployment's limits, see ``check_sizes``)."""
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as exc:
        # for a union (text prompt | chat messages) the deepest error is the informative one
        worst = max(exc.errors(), key=lambda e: len(e["loc"]))
        raise InvalidTask(_field_of(worst), worst["msg"]) from None
    if spec.kind == "chat":
        if not isinstance(spec.input, list) or not spec.input:
            raise InvalidTask("input", "chat input must be a non-empty list of messages")
        if not any(m.role == "user" for m in spec.input):
            raise InvalidTask("input", "chat input needs at least one user message")
    else:
        if not isinstance(spec.input, str):
            raise InvalidTask("input", f"{spec.kind} input must be a prompt string")
        if not spec.input.strip() and "template" not in spec.params:
            raise InvalidTask("input", "prompt is empty")
    check_sizes(spec, settings)
    params = validate_params(spec.params)
    if params is not spec.params:
        spec = spec.model_copy(update={"params": params})
    return spec


def check_sizes(spec: TaskSpec, limits: Settings | SizeLimits) -> None:
    """``InvalidTask`` when the prompt or the params are larger than ``limits`` allow."""
    if isinstance(spec.input, str):
        size = len(spec.input)
    else:
        size = sum(len(m.content) for m in spec.input)
    if size > limits.max_prompt_chars:
        raise InvalidTask(
            "input", f"prompt has {size} characters; the limit is {limits.max_prompt_chars}"
        )
    try:
        params_size = len(orjson.dumps(spec.params))
    except TypeError as exc:
        raise InvalidTask("params", f"not JSON-serialisable: {exc}") from None
    if params_size > limits.max_params_bytes:
        raise InvalidTask(
            "params", f"{params_size} bytes of params; the limit is {limits.max_params_bytes}"
        )


def input_json(spec: TaskSpec) -> str | list[dict[str, str]]:
    if isinstance(spec.input, str):
        return spec.input
    return [m.model_dump() for m in spec.input]


def fingerprint(spec: TaskSpec) -> str:
    """What an idempotency key's request is compared by (submit.lua): a digest of the task's
    kind, input and params as the caller sent them (before admission redacts or renders them),
    salted with the tenant and the key, so no text is stored and a short prompt cannot be
    looked up from it. Priority, deadline and traceparent are not part of the request."""
    body = orjson.dumps(
        {"kind": spec.kind, "input": input_json(spec), "params": spec.params},
        option=orjson.OPT_SORT_KEYS,
    )
    salt = f"{spec.tenant}\x1f{spec.idempotency_key or ''}\x1f".encode()
    return hashlib.sha256(salt + body).hexdigest()
