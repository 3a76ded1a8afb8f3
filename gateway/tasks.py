"""Reading tasks over HTTP: a task's story (``GET /v1/tasks/{id}/events`` asked for as JSON)
and the task search (``GET /v1/tasks``). Both come from ``projections``: the story from the
task's events (``projections.story``), the search from the ``task_state`` view
(``projections.search``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from engine.errors import InvalidTask, TaskNotFound
from gateway.auth import Principal
from gateway.errors import ProtocolError
from gateway.http import ctx_of, json_response, principal
from gateway.session import authorize_task, not_found
from projections import search, story
from projections.errors import BadQuery


def wants_json(request: Request) -> bool:
    """``?format=json``, or an Accept that names JSON and not an event stream (EventSource
    sends ``text/event-stream``; a bare ``*/*`` keeps the SSE answer)."""
    fmt = request.query_params.get("format")
    if fmt is not None:
        return fmt.lower() == "json"
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "text/event-stream" not in accept


async def task_story(request: Request) -> Response:
    """The task's story as JSON: 404 for a task the caller may not read, like ``GET``."""
    ctx = ctx_of(request)
    who = principal(request)
    task_id = request.path_params["task_id"]
    await authorize_task(ctx, who, task_id)
    try:
        # authorized above: the caller may read the task, so it sees the result restored
        told = await story.load(ctx.client, task_id, restore=True)
    except (TaskNotFound, InvalidTask):
        raise not_found(task_id) from None
    return json_response(told.as_dict())


def search_scope(who: Principal, asked: str | None) -> str | None:
    """The tenant a search may see: a tenant token its own (naming another is 403); an operator
    token every tenant, or the one it names."""
    if who.operator:
        return asked or None
    if asked and asked != who.tenant:
        raise ProtocolError("forbidden", f"this token reads tenant {who.tenant!r} only", 403)
    return who.tenant


async def list_tasks(request: Request) -> Response:
    """``GET /v1/tasks?status=&kind=&provider=&since=&until=&limit=&cursor=[&tenant=]``."""
    ctx = ctx_of(request)
    who = principal(request)
    params = dict(request.query_params)
    try:
        query = search.parse_query(params, search_scope(who, params.get("tenant")))
        page = await search.search(
            ctx.client.store.redis, ctx.settings.namespace, ctx.settings.partitions, query
        )
    except BadQuery as exc:
        raise ProtocolError("bad_query", exc.message, field=exc.field) from None
    return json_response(page.as_dict())
