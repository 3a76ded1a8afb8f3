"""Every refusal and failure in OpenAI's error shape, ``{"error": {message, type, param,
code}}``, with the status code the SDKs act on (they retry 408/409/429/5xx, never other 4xx):

| status | when |
|---|---|
| 400 | the request is invalid (``param`` names the field), or the provider refused it |
| 401 | no token, or a token we do not know |
| 403 | another tenant (``x-aiis-tenant``), or the tenant's PII policy blocks the input |
| 404 | a model we do not route (``model_not_found``) |
| 413 | the body or the prompt is over the deployment's limit |
| 422 | the ``Idempotency-Key`` already names a request with other messages or parameters |
| 429 | queue full, budget spent (``Retry-After`` = until the reset), every provider
|     | rate-limited (``Retry-After``) |
| 500 | our own failure, or the task was cancelled by someone else |
| 503 | Redis unreachable, or every provider down (unavailable, overloaded, out of credits,
|     | keys rejected) |
| 504 | the task's deadline passed before any provider answered |
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response

from engine.core.events import Event, TaskCancelled, TaskDeadLettered, TaskFailed
from gateway.errors import ProtocolError

# our code -> (status, OpenAI error type, OpenAI code)
KNOWN: dict[str, tuple[int, str, str | None]] = {
    "invalid_request": (400, "invalid_request_error", None),
    "invalid_task": (400, "invalid_request_error", None),
    "template_error": (400, "invalid_request_error", None),
    "bad_callback_url": (400, "invalid_request_error", None),
    "bad_json": (400, "invalid_request_error", "invalid_json"),
    "bad_message": (400, "invalid_request_error", None),
    "provider_invalid_request": (400, "invalid_request_error", "provider_invalid_request"),
    "unauthorized": (401, "invalid_request_error", "invalid_api_key"),
    "forbidden": (403, "permission_error", "forbidden"),
    "pii_blocked": (403, "permission_error", "pii_blocked"),
    "model_not_found": (404, "invalid_request_error", "model_not_found"),
    "body_timeout": (408, "invalid_request_error", "body_timeout"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "unsupported_media_type": (415, "invalid_request_error", "unsupported_media_type"),
    "idempotency_conflict": (422, "invalid_request_error", "idempotency_conflict"),
    "queue_full": (429, "rate_limit_error", "queue_full"),
    "budget_exceeded": (429, "insufficient_quota", "budget_exceeded"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "internal": (500, "server_error", "internal_error"),
    "task_cancelled": (500, "server_error", "task_cancelled"),
    "unavailable": (503, "server_error", "service_unavailable"),
    "providers_unavailable": (503, "server_error", "providers_unavailable"),
    "timeout": (504, "server_error", "timeout"),
}

# the error class of a failed task -> our code
_BY_CLASS = {
    "InvalidRequest": "provider_invalid_request",
    "RateLimited": "rate_limited",
    "Overloaded": "providers_unavailable",
    "NetworkError": "providers_unavailable",
    "ProviderTimeout": "providers_unavailable",
    "InsufficientCredits": "providers_unavailable",
    "AuthFailed": "providers_unavailable",
    "NoUsableKey": "providers_unavailable",
    "KeyRejected": "providers_unavailable",
    "DeadlineExceeded": "timeout",
}
RETRY_AFTER_S = 1


def openai_error(exc: ProtocolError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of ``exc`` in OpenAI's shape."""
    status, kind, code = KNOWN.get(exc.code, (exc.status, "invalid_request_error", exc.code))
    if exc.code not in KNOWN and exc.status >= 500:
        kind = "server_error"
    param = exc.extra.get("param")
    body = {"error": {"message": exc.message, "type": kind, "param": param, "code": code}}
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="aiis"'
    if exc.code == "budget_exceeded":
        headers["Retry-After"] = str(_until(exc.extra.get("resets_at")))
    elif status in (429, 503):
        headers["Retry-After"] = str(int(exc.extra.get("retry_after_s") or RETRY_AFTER_S))
    if exc.code == "task_cancelled":
        headers["x-should-retry"] = "false"  # someone cancelled it on purpose
    return status, body, headers


def _until(resets_at: Any) -> int:
    try:
        when = datetime.fromisoformat(str(resets_at))
    except ValueError:
        return 3600
    return max(1, math.ceil((when - datetime.now(UTC)).total_seconds()))


def error_response(exc: ProtocolError, headers: dict[str, str] | None = None) -> Response:
    status, body, extra = openai_error(exc)
    return Response(
        orjson.dumps(body),
        status,
        headers={**extra, **(headers or {})},
        media_type="application/json",
    )


def task_failure(event: Event) -> ProtocolError:
    """The answer to a task that ended without a result."""
    if isinstance(event, TaskCancelled):
        return ProtocolError("task_cancelled", "the task was cancelled", status=500)
    if isinstance(event, TaskFailed | TaskDeadLettered) and event.data.error is not None:
        error = event.data.error
        code = _BY_CLASS.get(error.error_class, "internal")
        if code == "internal":
            message = f"the task failed ({error.error_class})"
        else:
            message = f"{error.error_class}: {error.message}"
        return ProtocolError(code, message, status=KNOWN[code][0])
    reason = getattr(event.data, "reason", "failed")
    return ProtocolError("internal", f"the task failed ({reason})", status=500)
