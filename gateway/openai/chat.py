"""``POST /v1/chat/completions``: one task per request, answered in OpenAI's wire format.

The request is checked (``schema``), routed (``catalog``) and submitted like any task, so
admission, retries, fallback, breakers, budgets and audit all apply. The answer follows the
task's live events through the hub (``follow``): a ``chat.completion`` after the terminal
event, or ``chat.completion.chunk`` frames as the ``TaskProgress`` deltas arrive. A streamed
answer's status line waits for the first delta (or the end), so a task that fails before
any token gets its real status code; one that fails after the first token ends with an
``error`` frame. A client that goes away before the answer is complete cancels its task —
unless other requests with its ``Idempotency-Key`` still follow that task (``shared``): the
last of them to leave early cancels it. A key reused with other messages or parameters is
refused (422 ``idempotency_conflict``, by the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine.core.events import TERMINAL_CODES, Event, TaskSucceeded
from engine.core.mapper import decode
from engine.errors import EngineError, EventDecodeError
from engine.operations.audit import Action
from gateway.auth import Principal
from gateway.context import Context
from gateway.errors import ProtocolError
from gateway.http import _body, ctx_of, principal
from gateway.openai.catalog import Catalog
from gateway.openai.failures import error_response, openai_error, task_failure
from gateway.openai.follow import Follower
from gateway.openai.schema import ChatRequest, param_of, parse_request, task_input, task_params
from gateway.openai.shared import Shared
from gateway.outbox import Item
from gateway.session import audit, submit_outcome, task_tenant

PRIORITIES = ("high", "normal", "low")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"
# what ends a streamed answer that already sent tokens: the engine retries from scratch
_RESTARTS = frozenset({"TaskRetryScheduled", "TaskRequeued"})


def catalog_of(request: Request) -> Catalog:
    ctx = ctx_of(request)
    if ctx.catalog is None:
        ctx.catalog = Catalog.builtin()
    return ctx.catalog


def _task(request: Request, chat: ChatRequest, route: dict[str, str]) -> dict[str, Any]:
    headers = request.headers
    task: dict[str, Any] = {
        "kind": "chat",
        "input": task_input(chat),
        "params": task_params(chat, route),
    }
    priority = headers.get("x-aiis-priority")
    if priority is not None:
        if priority not in PRIORITIES:
            raise ProtocolError(
                "invalid_request", "x-aiis-priority is high, normal or low", param="x-aiis-priority"
            )
        task["priority"] = priority
    key = headers.get("idempotency-key")
    if key is not None:
        if not 1 <= len(key) <= 200:
            raise ProtocolError(
                "invalid_request", "Idempotency-Key: 1 to 200 characters", param="Idempotency-Key"
            )
        task["idempotency_key"] = key
    tenant = headers.get("x-aiis-tenant")
    if tenant is not None:
        task["tenant"] = tenant
    return task


async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    ctx = ctx_of(request)
    try:
        who = principal(request)
        body = await _body(request, ctx.gw.max_body_bytes, ctx.gw.body_timeout_s)
        chat = parse_request(body)
        route = catalog_of(request).route(chat.model)
        if route is None:
            raise ProtocolError(
                "model_not_found",
                f"The model `{chat.model}` does not exist or you do not have access to it.",
                status=404,
                param="model",
            )
        task = _task(request, chat, route)
        size = sum(len(m["content"]) for m in task["input"])
        await ctx.client.admission.ensure_loaded()
        limit = ctx.client.admission.limits.max_prompt_chars  # the deployment's (DESIGN §3.9)
        if size > limit:
            raise ProtocolError(
                "too_large",
                f"the messages hold {size} characters; the limit is {limit}",
                status=413,
                param="messages",
            )
        shared = await _join(ctx, who, task)
        noted = dict(ctx.hub.cursors)  # right before the submit: the follower's fast path
        try:
            submitted = await submit_outcome(ctx, who, task, "openai")
        except BaseException:
            if shared is not None:
                await shared.leave()
            raise
    except ProtocolError as exc:
        field = exc.extra.pop("field", None)
        if field is not None:
            exc.extra["param"] = param_of(str(field))
        ctx.counters.errors[exc.code] += 1
        return error_response(exc)
    except EngineError:
        ctx.counters.errors["unavailable"] += 1
        return error_response(ProtocolError("unavailable", "Redis is unavailable", status=503))
    task_id, created = submitted
    return Completion(ctx, who, chat, task_id, noted, not created, started, shared)


async def _join(ctx: Context, who: Principal, task: dict[str, Any]) -> Shared | None:
    """Count the request among its key's followers before it submits (None: no key)."""
    key = task.get("idempotency_key")
    if key is None:
        return None
    shared = Shared(ctx, task_tenant(who, task), key)
    await shared.join()
    return shared


class Completion(Response):
    """The ASGI answer of one accepted request: follows its task to the end."""

    def __init__(
        self,
        ctx: Any,
        who: Any,
        chat: ChatRequest,
        task_id: str,
        noted: dict[int, str],
        attached: bool,
        started: float,
        shared: Shared | None = None,
    ) -> None:
        self.ctx = ctx
        self.who = who
        self.chat = chat
        self.task_id = task_id
        self.noted = noted
        self.attached = attached  # Idempotency-Key: the task is older than this request
        self.shared = shared  # the key's followers, this request among them
        self.started = started
        self.follower = Follower(ctx, task_id)
        self.gone = False
        self.done = False  # the whole answer is queued for sending
        self.begun = False  # the status line went out
        self.provider_ms = 0  # time the task spent waiting on provider calls
        self.created = int(time.time())
        self.cid = f"chatcmpl-{task_id}"
        self.ids = [(b"x-aiis-task-id", task_id.encode()), (b"x-request-id", task_id.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch(receive))
        try:
            event = await self._subscribe()
            if self.chat.stream:
                await self._stream(send, event)
            else:
                await self._unary(send, event)
        except OSError:
            self.gone = True  # the client went away mid-send
        except EngineError:
            if self.done or self.begun:
                raise  # the status line went out: all that is left is to drop the connection
            await self._error(send, ProtocolError("unavailable", "Redis is unavailable", 503))
        finally:
            watcher.cancel()
            self.follower.close()
            last = self.shared is None or await self.shared.leave()
            if self.gone and not self.done and last:
                if self.shared is None:
                    await self._cancel()
                else:  # a retry with the key may still come and attach: give it the grace
                    later = asyncio.create_task(self._cancel_unless_joined(self.shared))
                    self.ctx.pending.add(later)
                    later.add_done_callback(self.ctx.pending.discard)

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.gone = True
                    self.follower.outbox.close()
                return

    async def _cancel_unless_joined(self, shared: Shared) -> None:
        await asyncio.sleep(self.ctx.gw.shared_cancel_grace_s)
        if await shared.followers() <= 0:
            await self._cancel()

    async def _cancel(self) -> None:
        ctx, who = self.ctx, self.who
        with contextlib.suppress(EngineError):
            status = await ctx.client.cancel(
                self.task_id, tenant="" if who.operator else who.tenant
            )
            await audit(
                ctx, who, Action.CANCEL, who.tenant, self.task_id, status=status.value, why="closed"
            )

    async def _subscribe(self) -> Event | None:
        """Start following; the terminal event when an attached task had already ended."""
        if not self.attached:
            await self.follower.start(self.noted)
            return None
        word = await self.ctx.client.state_word(self.task_id)
        if word is not None and word.code in TERMINAL_CODES:
            view = await self.ctx.client.get(self.task_id)
            terminal: Event | None = view.terminal
            return terminal
        await self.follower.start_from_first(word.requested_id if word else "0-0")
        return None

    async def _next(self) -> tuple[str, Any] | None:
        """("delta", text) | ("restart", None) | ("end", event); None once the client left."""
        outbox = self.follower.outbox
        while True:
            msg = await outbox.get()
            if msg is None:
                return None
            if not isinstance(msg, Item):
                continue
            kind = msg.type
            if kind == "TaskProgress":
                try:
                    data = msg.envelope_dict()["data"]
                except EventDecodeError:
                    continue
                if data.get("delta"):
                    return "delta", data["delta"]
                notice = data.get("notice")
                if notice == "attempt":
                    self.provider_ms += int((data.get("detail") or {}).get("latency_ms") or 0)
                elif notice == "partial_discarded":
                    return "restart", None
            elif kind in _RESTARTS:
                return "restart", None
            elif msg.terminal:
                return "end", decode(msg.id, msg.fields)

    async def _terminal(self) -> Event | None:
        while True:
            step = await self._next()
            if step is None:
                return None
            if step[0] == "end":
                return step[1]  # type: ignore[no-any-return]

    # --- unary -------------------------------------------------------------------------

    async def _unary(self, send: Send, event: Event | None) -> None:
        if event is None:
            event = await self._terminal()
            if event is None:
                return
        if not isinstance(event, TaskSucceeded):
            await self._error(send, task_failure(event))
            return
        done = await self.ctx.client.for_caller(event)
        d = done.data
        body = {
            "id": self.cid,
            "object": "chat.completion",
            "created": self.created,
            "model": d.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": d.result.text or "",
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason(d.finish_reason),
                }
            ],
            "usage": usage(done),
            "system_fingerprint": None,
            "provider": d.provider,
        }
        payload = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *self.ids,
        ]
        self.done = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self._observe()

    async def _error(self, send: Send, exc: ProtocolError) -> None:
        self.ctx.counters.errors[exc.code] += 1
        status, body, headers = openai_error(exc)
        payload = orjson.dumps(body)
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *self.ids,
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ]
        self.done = True
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    def _observe(self) -> None:
        elapsed = time.perf_counter() - self.started
        self.ctx.counters.overhead.observe(
            max(0.0, elapsed - self.provider_ms / 1000), "true" if self.chat.stream else "false"
        )

    # --- streamed ----------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: str | None, model: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model or self.chat.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._usage_wanted:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    @property
    def _usage_wanted(self) -> bool:
        options = self.chat.stream_options
        return bool(options is not None and options.include_usage)

    async def _begin(self, send: Send, first: bytes) -> None:
        self.begun = True
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *self.ids]}
        )
        role = self._chunk({"role": "assistant", "content": "", "refusal": None}, None)
        await send({"type": "http.response.body", "body": role + first, "more_body": True})

    async def _stream(self, send: Send, event: Event | None) -> None:
        begun = False
        sent = 0  # deltas sent
        while event is None:
            step = await self._next()
            if step is None:
                return
            what, value = step
            if what == "delta":
                frame = self._chunk({"content": value}, None)
                if not begun:
                    await self._begin(send, frame)
                    begun = True
                else:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                sent += 1
            elif what == "restart" and sent:
                # the provider failed mid-answer and the engine starts over: the tokens sent
                # cannot be taken back, so this answer ends here and its task is cancelled
                self.gone = True
                await self._end_with_error(
                    send,
                    ProtocolError(
                        "providers_unavailable",
                        "the provider failed mid-answer; retry the request",
                        status=503,
                    ),
                )
                return
            elif what == "end":
                event = value
        if not isinstance(event, TaskSucceeded):
            if begun:
                await self._end_with_error(send, task_failure(event))
            else:
                await self._error(send, task_failure(event))
            return
        done = await self.ctx.client.for_caller(event)
        d = done.data
        tail = b""
        if not sent and d.result.text:  # a cached answer, or a provider that did not stream
            tail += self._chunk({"content": d.result.text}, None)
        tail += self._chunk({}, finish_reason(d.finish_reason), d.model)
        if self._usage_wanted:
            chunk: dict[str, Any] = {
                "id": self.cid,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": d.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage(done),
                "provider": d.provider,
            }
            tail += b"data: " + orjson.dumps(chunk) + b"\n\n"
        tail += DONE
        self.done = True
        if not begun:
            await self._begin(send, tail)
        else:
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self._observe()

    async def _end_with_error(self, send: Send, exc: ProtocolError) -> None:
        self.ctx.counters.errors[exc.code] += 1
        _, body, _ = openai_error(exc)
        frame = b"data: " + orjson.dumps(body) + b"\n\n"
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


def finish_reason(reason: str | None) -> str:
    return _FINISH.get(reason or "stop", "stop")


def usage(event: TaskSucceeded) -> dict[str, Any]:
    u = event.data.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "cost": event.data.cost_usd,
    }
