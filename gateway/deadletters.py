"""Dead letters over HTTP, for operator tokens only (the dashboard's dead-letter panel): list
them with their reason and last error, retry one or a selection, purge. Each action goes to the
audit log as the CLI's ``aiis dlq retry|purge`` does, with the same functions
(``engine.operations.dlq``); a tenant token gets 403 and no detail.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine.errors import InvalidTask, TaskNotFound
from engine.operations import dlq
from engine.operations.audit import Action
from gateway.auth import Principal
from gateway.errors import ProtocolError
from gateway.http import ctx_of, json_body, json_response, principal
from gateway.session import audit

MAX_LIST = 500
MAX_RETRY = 100  # task ids in one retry request


def operator(request: Request) -> Principal:
    who = principal(request)
    if not who.operator:
        raise ProtocolError("forbidden", "dead letters need an operator token", status=403)
    return who


async def list_dead(request: Request) -> Response:
    """``GET /v1/dlq?limit=N`` → ``{"dead_letters": [...]}``, newest first."""
    ctx = ctx_of(request)
    operator(request)
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise ProtocolError("bad_query", f"limit: an integer from 1 to {MAX_LIST}", field="limit")
    rows = await dlq.list_dead(ctx.client, int(raw))
    return json_response({"dead_letters": [d.as_dict() for d in rows]})


def _task_ids(body: Any) -> list[str]:
    ids = body.get("task_ids") if isinstance(body, dict) else None
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_RETRY
        or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids)
    ):
        raise ProtocolError(
            "bad_message", f'send {{"task_ids": [1 to {MAX_RETRY} task ids]}}', field="task_ids"
        )
    return list(dict.fromkeys(ids))


async def retry(request: Request) -> Response:
    """``POST /v1/dlq/retry {"task_ids": [...]}`` → each retried as a new task, or its error."""
    ctx = ctx_of(request)
    who = operator(request)
    ids = _task_ids(await json_body(request))
    retried: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    for task_id in ids:
        try:
            new_id = await dlq.retry(ctx.client, task_id)
        except TaskNotFound:
            errors.append({"task_id": task_id, "code": "not_found", "message": "no such task"})
            continue
        except InvalidTask as exc:
            errors.append({"task_id": task_id, "code": "not_dead_lettered", "message": str(exc)})
            continue
        await audit(ctx, who, Action.DLQ_RETRY, "*", task_id, new_task=new_id, transport="http")
        retried.append({"task_id": task_id, "new_task_id": new_id})
    return json_response({"retried": retried, "errors": errors})


async def purge(request: Request) -> Response:
    """``POST /v1/dlq/purge`` → ``{"purged": n}``: every dead-letter entry deleted."""
    ctx = ctx_of(request)
    who = operator(request)
    purged = await dlq.purge(ctx.client)
    await audit(ctx, who, Action.DLQ_PURGE, "*", None, purged=purged, transport="http")
    return json_response({"purged": purged})
