"""Intake entries (docs/intake.md), read without I/O: what a producer ``XADD``s to the intake
stream becomes either an ``IntakeEntry`` (a task object for ``Client.submit_task``) or a
``Rejection`` with the HTTP API's error codes.

Two formats:

- **plain** — a field ``task`` holding the JSON object ``POST /v1/tasks`` takes, and optionally
  ``correlation_id`` (at most 128 characters): what redis-cli, ioredis or go-redis write;
- **FastStream** — one field ``__data__`` as ``RedisBroker.publish(..., stream=...)`` writes it
  (faststream 0.7: ``BinaryMessageFormatV1``, magic ``\\x89BIN\\r\\n\\x1a\\n``, or the older JSON
  envelope ``{"data", "headers"}``); the body is the task object and the message's own
  ``correlation_id`` header is the correlation id.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from engine.errors import (
    BadCallbackUrl,
    BudgetExceeded,
    EngineError,
    IdempotencyConflict,
    InvalidTask,
    PiiBlocked,
    QueueFull,
    TemplateError,
)

TASK = b"task"
CORRELATION_ID = b"correlation_id"
FASTSTREAM_DATA = b"__data__"  # faststream.redis.message.DATA_KEY
FASTSTREAM_MAGIC = b"\x89BIN\r\n\x1a\n"  # BinaryMessageFormatV1.IDENTITY_HEADER
MAX_CORRELATION_CHARS = 128

# the wire codes of admission refusals, most specific first: the rejected stream here and the
# HTTP/WebSocket API (gateway/session.py) both answer with them
ERROR_CODES: tuple[tuple[type[EngineError], str], ...] = (
    (PiiBlocked, "pii_blocked"),
    (BadCallbackUrl, "bad_callback_url"),
    (TemplateError, "template_error"),
    (InvalidTask, "invalid_task"),
    (BudgetExceeded, "budget_exceeded"),
    (QueueFull, "queue_full"),
    (IdempotencyConflict, "idempotency_conflict"),
)


@dataclass(frozen=True, slots=True)
class IntakeEntry:
    """An entry that holds a task object (not yet validated: ``Client.submit_task`` does)."""

    intake_id: str
    task: dict[str, Any]
    correlation_id: str | None
    format: Literal["plain", "faststream"]

    @property
    def produced_ms(self) -> int:
        """When the producer added it: the entry id's time part."""
        return entry_ms(self.intake_id)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry refused: what goes to ``<intake stream>:rejected``."""

    intake_id: str
    correlation_id: str | None
    code: str
    field: str
    message: str

    def fields(self) -> dict[str, str]:
        return {
            "intake_id": self.intake_id,
            "correlation_id": self.correlation_id or "",
            "code": self.code,
            "field": self.field,
            "message": self.message[:2000],
        }


def entry_ms(intake_id: str) -> int:
    head = intake_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


def error_code(exc: EngineError) -> str:
    """The wire code of an admission refusal (``ERROR_CODES``; ``invalid_task`` otherwise)."""
    return next((c for kind, c in ERROR_CODES if isinstance(exc, kind)), "invalid_task")


def rejection_for(entry: IntakeEntry, exc: EngineError) -> Rejection:
    """The rejection of ``entry`` refused by admission with ``exc`` (a code of ``ERROR_CODES``)."""
    code = error_code(exc)
    field = exc.field if isinstance(exc, InvalidTask | IdempotencyConflict) else "task"
    return Rejection(entry.intake_id, entry.correlation_id, code, field, str(exc))


def parse_entry(
    intake_id: str, fields: Mapping[bytes, bytes], max_bytes: int
) -> IntakeEntry | Rejection:
    """The task object of one stream entry, or why it cannot be admitted."""
    size = sum(len(k) + len(v) for k, v in fields.items())
    correlation = _text(fields.get(CORRELATION_ID))

    def refuse(code: str, field: str, message: str) -> Rejection:
        return Rejection(intake_id, correlation, code, field, message)

    if size > max_bytes:
        return refuse("too_large", "task", f"entry of {size} bytes; the limit is {max_bytes}")
    if FASTSTREAM_DATA in fields:
        if len(fields) != 1:
            extra = sorted(_text(k) or "?" for k in fields if k != FASTSTREAM_DATA)
            return refuse("bad_message", extra[0], "a FastStream entry has only __data__")
        try:
            body, headers = parse_faststream(fields[FASTSTREAM_DATA])
        except ValueError as exc:
            return refuse("bad_message", "__data__", f"not a FastStream message: {exc}")
        correlation = headers.get("correlation_id") or None
        fmt: Literal["plain", "faststream"] = "faststream"
    else:
        unknown = sorted(_text(k) or "?" for k in fields if k not in (TASK, CORRELATION_ID))
        if unknown:
            return refuse(
                "bad_message", unknown[0], "unknown field; an entry has task and correlation_id"
            )
        if TASK not in fields:
            return refuse("bad_message", "task", "no task field (the task object, JSON)")
        body, fmt = fields[TASK], "plain"
    if correlation is not None and not 0 < len(correlation) <= MAX_CORRELATION_CHARS:
        return refuse("bad_message", "correlation_id", f"1 to {MAX_CORRELATION_CHARS} characters")
    try:
        task = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return refuse("bad_json", "task", f"not JSON: {exc}")
    if not isinstance(task, dict):
        return refuse("bad_message", "task", "the task is a JSON object")
    return IntakeEntry(intake_id, task, correlation, fmt)


def parse_faststream(data: bytes) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a FastStream Redis message; ``ValueError`` when it is none."""
    if data.startswith(FASTSTREAM_MAGIC):
        try:
            (version,) = struct.unpack_from(">H", data, 8)
            headers_start, data_start = struct.unpack_from(">II", data, 10)
            if version != 1 or not headers_start <= data_start <= len(data):
                raise ValueError(f"version {version}, offsets out of range")
            (count,) = struct.unpack_from(">H", data, headers_start)
            pos, headers = headers_start + 2, {}
            for _ in range(count):
                key, pos = _string(data, pos)
                value, pos = _string(data, pos)
                headers[key] = value
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError(str(exc)) from None
        return data[data_start:], headers
    try:  # faststream's JSON envelope (JSONMessageFormat)
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError:
        envelope = None
    if isinstance(envelope, dict) and isinstance(envelope.get("data"), str):
        headers = envelope.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError("headers is not an object")
        return envelope["data"].encode(), {str(k): str(v) for k, v in headers.items()}
    return data, {}  # a raw body, as faststream itself reads one


def _string(data: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">H", data, pos)
    end = pos + 2 + n
    if end > len(data):
        raise ValueError("header runs past the end")
    return data[pos + 2 : end].decode(), end


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace")
