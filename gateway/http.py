"""The HTTP side: task API, health, readiness and Prometheus metrics.

Every error is a 4xx/5xx with ``{"error": {"code": …, "message": …}}`` (plus ``field`` on
``invalid_task``).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, cast

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from engine.core.task import TRACEPARENT
from engine.errors import EngineError, InvalidTask, TaskNotFound
from engine.operations.audit import Action
from gateway.auth import Principal, hash_token, is_loopback, token_from
from gateway.context import Context
from gateway.errors import ProtocolError
from gateway.metrics import render_metrics
from gateway.session import audit, authorize_task, not_found, precheck_body, submit_task

JSON = "application/json"


def ctx_of(conn: HTTPConnection) -> Context:
    return cast(Context, conn.app.state.ctx)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=JSON)


def error_response(exc: ProtocolError) -> Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="aiis"'
    if exc.status == 429 and exc.code != "budget_exceeded":
        headers["Retry-After"] = "1"
    body = {"error": {"code": exc.code, "message": exc.message, **exc.extra}}
    return json_response(body, exc.status, headers)


def principal(conn: HTTPConnection) -> Principal:
    """The caller's principal, or ``ProtocolError`` 401."""
    token = token_from(conn.headers.get("authorization"), conn.query_params.get("token"))
    who = ctx_of(conn).auth.authenticate(token)
    if who is None:
        raise ProtocolError("unauthorized", "send Authorization: Bearer <token>", status=401)
    return who


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == JSON


async def _body(request: Request, limit: int, timeout_s: float) -> Any:
    # application/json only: a cross-site page can send text/plain and form bodies without
    # a CORS preflight, never JSON
    if not _is_json(request.headers.get("content-type")):
        raise ProtocolError("unsupported_media_type", f"send Content-Type: {JSON}", status=415)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError("too_large", f"body over {limit} bytes", status=413)
    data = bytearray()
    try:
        async with asyncio.timeout(timeout_s):  # a slow body holds a socket like slow headers
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    raise ProtocolError("too_large", f"body over {limit} bytes", status=413)
    except TimeoutError:
        raise ProtocolError("body_timeout", f"body not sent within {timeout_s} s", 408) from None
    try:
        precheck_body(data)
    except InvalidTask as exc:
        raise ProtocolError("invalid_task", str(exc), field=exc.field) from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None


async def json_body(request: Request) -> Any:
    """The request's JSON body, under the gateway's size and time limits."""
    ctx = ctx_of(request)
    return await _body(request, ctx.gw.max_body_bytes, ctx.gw.body_timeout_s)


async def create_task(request: Request) -> Response:
    """POST /v1/tasks → 202 {"task_id"}."""
    ctx = ctx_of(request)
    who = principal(request)
    body = await _body(request, ctx.gw.max_body_bytes, ctx.gw.body_timeout_s)
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", "the body is a task object")
    traceparent = request.headers.get("traceparent")
    if "traceparent" not in body and traceparent and TRACEPARENT.fullmatch(traceparent):
        # W3C Trace Context: the task joins the caller's trace; an invalid header is ignored
        # (a new trace starts), as the recommendation says, unlike an invalid body field
        body["traceparent"] = traceparent
    task_id = await submit_task(ctx, who, body, "http")
    location = f"/v1/tasks/{task_id}"
    return json_response(
        {"task_id": task_id, "status_url": location, "events_url": f"{location}/events"},
        202,
        {"Location": location},
    )


async def get_task(request: Request) -> Response:
    ctx = ctx_of(request)
    who = principal(request)
    task_id = request.path_params["task_id"]
    try:
        view = await ctx.client.get(task_id)
    except (TaskNotFound, InvalidTask):
        raise not_found(task_id) from None
    if not who.may_read(view.tenant):
        raise not_found(task_id)
    return json_response(view.as_dict())


async def cancel_task(request: Request) -> Response:
    ctx = ctx_of(request)
    who = principal(request)
    task_id = request.path_params["task_id"]
    await authorize_task(ctx, who, task_id)
    try:
        # the tenant is checked again inside the cancel script, atomically
        status = await ctx.client.cancel(task_id, tenant="" if who.operator else who.tenant)
    except (TaskNotFound, InvalidTask):
        raise not_found(task_id) from None
    await audit(ctx, who, Action.CANCEL, who.tenant, task_id, status=status.value)
    return json_response({"task_id": task_id, "status": status.value})


async def healthz(request: Request) -> Response:
    ctx = ctx_of(request)
    if not ctx.hub.running:
        return json_response({"status": "failing", "reason": "event reader stopped"}, 503)
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    ctx = ctx_of(request)
    try:
        async with asyncio.timeout(2):
            await ctx.client.ping()
    except (TimeoutError, EngineError):
        return json_response({"status": "unready", "redis": "unreachable"}, 503)
    if ctx.shutting_down:
        return json_response({"status": "unready", "reason": "shutting down"}, 503)
    return json_response({"status": "ready", "redis": "ok"})


def _may_scrape(conn: HTTPConnection) -> bool:
    """/metrics names every tenant and its spend: the metrics token or an operator token; in
    open mode without a metrics token, anyone (open mode is loopback-only, Host-checked)."""
    ctx = ctx_of(conn)
    token = token_from(conn.headers.get("authorization"), conn.query_params.get("token"))
    wanted = ctx.gw.metrics_token
    if wanted:
        digest = wanted.lower() if wanted.lower().startswith("sha256:") else hash_token(wanted)
        if token and hmac.compare_digest(hash_token(token), digest):
            return True
    elif ctx.auth.open:  # bound to loopback only; the peer is checked all the same
        return conn.client is not None and is_loopback(conn.client.host)
    try:
        who = ctx.auth.authenticate(token)
    except ProtocolError:
        return False
    return who is not None and who.operator and not ctx.auth.open


async def metrics(request: Request) -> Response:
    ctx = ctx_of(request)
    if not _may_scrape(request):
        raise ProtocolError(
            "unauthorized", "send Authorization: Bearer <AIIS_METRICS_TOKEN>", status=401
        )
    registry = await render_metrics(ctx)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def on_protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    ctx_of(request).counters.errors[exc.code] += 1
    return error_response(exc)


async def on_engine_error(request: Request, exc: Exception) -> Response:
    return error_response(ProtocolError("unavailable", "the engine is unavailable", status=503))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(ProtocolError(code, str(exc.detail), status=exc.status_code))
