"""``aiis.v1.TaskService``: the RPCs over the engine's producer API.

Every call authenticates first (metadata ``authorization: Bearer <token>``, the WebSocket
gateway's tokens and ``Authenticator``). Engine errors become status codes in one place
(``status_for``; ``abort`` ends a call with it, ``SubmitTasks`` puts it in the item's reply);
nothing else escapes a handler as an exception of ours.

GetTask answers a finished task from the ``task_state`` projection's record (final: exactly one
terminal event per task) and anything else from the engine (``Client.get``, always current), so
a task the projection has not seen yet is never NOT_FOUND and its lag never shows; see
docs/grpc.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Never

import grpc

from engine.client import Client
from engine.core.events import TERMINAL_CODES, Event
from engine.core.keys import partition_of
from engine.core.store import id_before
from engine.core.task import TRACEPARENT
from engine.errors import (
    BudgetExceeded,
    ConfigError,
    EngineError,
    IdempotencyConflict,
    InvalidTask,
    QueueFull,
    RedisUnavailable,
    TaskNotFound,
)
from engine.operations.audit import Action, AuditLog
from gateway.auth import Authenticator, Principal, token_from
from gateway.errors import ProtocolError
from gateway.grpc import convert
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.stream import FIELD_KEY, StreamCounters, serve_batches
from gateway.protocol import parse_id
from gateway.since import check_retained
from gateway.tasks import search_scope
from projections import search
from projections.errors import BadQuery
from projections.lookup import TERMINAL, task_record

log = logging.getLogger("aiis.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskService"].full_name

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

# engine error -> status code; the first matching class wins
STATUS_OF: tuple[tuple[type[EngineError], grpc.StatusCode], ...] = (
    (InvalidTask, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TaskNotFound, grpc.StatusCode.NOT_FOUND),
    (RedisUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    # the key already names another request's task: retrying it cannot succeed
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
)


def status_for(exc: EngineError) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message, field) that ``exc`` stands for; field only for a bad task."""
    code = next((c for cls, c in STATUS_OF if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    if isinstance(exc, InvalidTask):
        return code, f"{exc.field}: {exc.message}", exc.field
    if isinstance(exc, IdempotencyConflict):
        return code, str(exc), exc.field
    if isinstance(exc, RedisUnavailable):
        log.warning("gRPC call failed: %s", exc)  # the address stays in the log, not the reply
        return code, "the engine is unavailable (Redis unreachable); retry", ""
    if code == grpc.StatusCode.INTERNAL:
        log.error("gRPC call failed: %s", exc)
        return code, "internal error", ""
    return code, str(exc), ""


async def abort(context: Context, exc: EngineError | ProtocolError) -> Never:
    """End the call with the status code (and message) ``exc`` stands for."""
    if isinstance(exc, ProtocolError):  # a bad `since`
        code = grpc.StatusCode.OUT_OF_RANGE
        if exc.code == "bad_since":
            code = grpc.StatusCode.INVALID_ARGUMENT
            context.set_trailing_metadata(((FIELD_KEY, "since"),))
        await context.abort(code, exc.message)
    code, message, field = status_for(exc)
    if field:
        context.set_trailing_metadata(((FIELD_KEY, field),))
    await context.abort(code, message)


def item_error(
    index: int, code: grpc.StatusCode, message: str, field: str = ""
) -> pb.SubmitTaskResult:
    """A SubmitTasks result carrying one item's failure."""
    error = pb.ItemError(code=code.value[0], message=message, field=field)
    return pb.SubmitTaskResult(index=index, error=error)


def submit_tenant(who: Principal, requested: str) -> str | None:
    """The tenant a submit acts for, or ``None`` when ``who`` may not name ``requested``."""
    if who.operator:
        return requested or "default"
    if requested and requested != who.tenant:
        return None
    return who.tenant


class Errors:
    """``async with Errors(context):`` around a handler's body: engine errors and a bad
    ``since`` become their status code; any other exception (a bug, a Redis script error)
    becomes INTERNAL "internal error" and is logged, so no internals reach the client."""

    __slots__ = ("context",)

    def __init__(self, context: Context) -> None:
        self.context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, EngineError | ProtocolError):
            await abort(self.context, exc)
        if isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError):
            log.error("gRPC call failed", exc_info=exc)
            await self.context.abort(grpc.StatusCode.INTERNAL, "internal error")


class TaskService:
    """The servicer; ``active_watches`` counts WatchTask streams in progress, ``streams`` the
    SubmitTasks streams and their items in flight."""

    def __init__(
        self,
        client: Client,
        watch_client: Client,
        auth: Authenticator,
        max_watches: int,
        block_ms: int = 1000,
        stream_window: int = 256,
        stream_max_batch: int = 1000,
        max_watches_per_tenant: int | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.client = client
        self.watch_client = watch_client
        self.auth = auth
        self.max_watches = max_watches
        self.max_watches_per_tenant = max_watches_per_tenant or max_watches
        self.audit = audit
        self.block_ms = block_ms
        self.stream_window = stream_window
        self.stream_max_batch = stream_max_batch
        self.active_watches = 0
        self.watches_of: Counter[str] = Counter()  # open WatchTask streams per tenant
        self.streams = StreamCounters()

    async def record(
        self,
        who: Principal,
        action: Action,
        tenant: str,
        target: str | None,
        outcome: Literal["ok", "denied"] = "ok",
        **detail: Any,
    ) -> None:
        """An audit record like the HTTP/WebSocket ones; a failure to write it is logged."""
        if self.audit is None:
            return
        try:
            await self.audit.record(
                action,
                tenant=tenant,
                token_id=who.token_id,
                target=target,
                outcome=outcome,
                detail={"transport": "grpc", **detail},
            )
        except EngineError as exc:
            log.warning("audit record of %s not written: %s", action.value, exc)

    async def principal(self, context: Context) -> Principal:
        """Who the call acts as, or UNAUTHENTICATED."""
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value.decode() if isinstance(value, bytes) else value
        try:
            who = self.auth.authenticate(token_from(authorization, None))
        except ProtocolError:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if who is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "send metadata authorization: Bearer <token>"
            )
        return who

    @staticmethod
    async def deny(context: Context, tenant: str) -> Never:
        """End the call with PERMISSION_DENIED (a submit naming another tenant)."""
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, f"this token acts for tenant {tenant!r} only"
        )

    @staticmethod
    def hidden(task_id: str) -> TaskNotFound:
        """Another tenant's task: answered exactly like a missing one, so ids cannot be probed."""
        return TaskNotFound(task_id)

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: Context
    ) -> pb.SubmitTaskResponse:
        who = await self.principal(context)
        tenant = submit_tenant(who, request.tenant)
        if tenant is None:
            await self.record(who, Action.SUBMIT, who.tenant, None, outcome="denied")
            await self.deny(context, who.tenant)
        async with Errors(context):
            try:
                args = convert.submit_args(request)
                task_id = await self.client.submit(
                    tenant=tenant, traceparent=_traceparent(context), **args
                )
            except EngineError as exc:
                if not isinstance(exc, RedisUnavailable):
                    code = status_for(exc)[0].name
                    await self.record(who, Action.SUBMIT, tenant, None, outcome="denied", code=code)
                raise
            await self.record(who, Action.SUBMIT, tenant, task_id)
        return pb.SubmitTaskResponse(task_id=task_id)

    async def SubmitTasks(
        self, requests: AsyncIterator[pb.SubmitTasksRequest], context: Context
    ) -> AsyncIterator[pb.SubmitTasksReply]:
        """One reply per batch, in order, one result per task (``stream.py``): authenticated
        once, each item checked and submitted on its own."""
        who = await self.principal(context)

        async def submit(tasks: Sequence[pb.SubmitTaskRequest], first: int) -> pb.SubmitTasksReply:
            if len(tasks) == 1:  # a stream of single items: no gather
                return pb.SubmitTasksReply(results=[await self._submit_item(who, tasks[0], first)])
            items = (self._submit_item(who, t, first + i) for i, t in enumerate(tasks))
            return pb.SubmitTasksReply(results=await asyncio.gather(*items))

        replies = serve_batches(
            requests,
            context,
            submit,
            window=self.stream_window,
            max_batch=self.stream_max_batch,
            counters=self.streams,
        )
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield reply

    async def _submit_item(
        self, who: Principal, request: pb.SubmitTaskRequest, index: int
    ) -> pb.SubmitTaskResult:
        tenant = submit_tenant(who, request.tenant)
        if tenant is None:
            await self.record(who, Action.SUBMIT, who.tenant, None, outcome="denied")
            message = f"this token acts for tenant {who.tenant!r} only"
            return item_error(index, grpc.StatusCode.PERMISSION_DENIED, message)
        try:
            args = convert.submit_args(request)
            task_id = await self.client.submit(tenant=tenant, **args)
        except EngineError as exc:
            status = status_for(exc)
            if not isinstance(exc, RedisUnavailable):
                code = status[0].name
                await self.record(who, Action.SUBMIT, tenant, None, outcome="denied", code=code)
            return item_error(index, *status)
        except Exception:
            log.exception("gRPC SubmitTasks item failed")
            return item_error(index, grpc.StatusCode.INTERNAL, "internal error")
        await self.record(who, Action.SUBMIT, tenant, task_id)
        return pb.SubmitTaskResult(index=index, task_id=task_id)

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.Task:
        who = await self.principal(context)
        task_id = request.task_id
        async with Errors(context):
            settings = self.client.settings
            record = await task_record(
                self.client.store.redis, settings.namespace, settings.partitions, task_id
            )
            if record is not None and record["status"] in TERMINAL:
                # final (exactly one terminal event per task): the projection answers; the
                # engine adds the terminal event (result loaded) and the deadline, while it
                # still has the task (it forgets it after AIIS_TASK_RETENTION_S)
                if not who.may_read(record["tenant"]):
                    raise self.hidden(task_id)
                try:
                    view = await self.client.get(task_id)
                except TaskNotFound:
                    view = None
                return convert.task_from_record(task_id, record, view)
            # not seen yet, or in progress (the record may lag): the engine is always current
            view = await self.client.get(task_id)
            if not who.may_read(view.tenant):
                raise self.hidden(task_id)
        return convert.task_message(view)

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        who = await self.principal(context)
        params = {
            "status": request.status,
            "kind": request.kind,
            "provider": request.provider,
            "since": request.since,
            "until": request.until,
            "limit": str(request.limit) if request.limit else "",
            "cursor": request.cursor,
        }
        try:
            tenant = search_scope(who, request.tenant)
        except ProtocolError:
            await self.deny(context, who.tenant)
        async with Errors(context):
            settings = self.client.settings
            try:
                query = search.parse_query(params, tenant)
                page = await search.search(
                    self.client.store.redis, settings.namespace, settings.partitions, query
                )
            except BadQuery as exc:
                context.set_trailing_metadata(((FIELD_KEY, exc.field),))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        tasks = [convert.task_from_record(t["task_id"], t, None) for t in page.tasks]
        return pb.ListTasksResponse(tasks=tasks, next_cursor=page.next_cursor or "")

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Context
    ) -> pb.CancelTaskResponse:
        who = await self.principal(context)
        task_id = request.task_id
        async with Errors(context):
            word = await self.client.state_word(task_id)
            if word is None or not who.may_read(word.tenant):
                raise self.hidden(task_id)
            # the cancel script checks the tenant again, atomically
            status = await self.client.cancel(task_id, tenant="" if who.operator else who.tenant)
            await self.record(who, Action.CANCEL, word.tenant, task_id, status=status.value)
        return pb.CancelTaskResponse(task_id=task_id, status=convert.STATUS_ENUMS[status])

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        who = await self.principal(context)
        if self.watches_of[who.tenant] >= self.max_watches_per_tenant:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_watches_per_tenant} watches of this tenant are open; retry later",
            )
        if self.active_watches >= self.max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_watches} watches are open on this server; retry later",
            )
        self.active_watches += 1
        self.watches_of[who.tenant] += 1
        try:
            async with Errors(context):
                start = await self._watch_start(request, who, context)
                if start is None:
                    return
                follow = self._follow(request.task_id, start, context)
                async with contextlib.aclosing(follow) as events:
                    async for event in events:
                        yield convert.event_message(event)
        finally:
            self.active_watches -= 1
            self.watches_of[who.tenant] -= 1
            if not self.watches_of[who.tenant]:
                del self.watches_of[who.tenant]

    def _follow(self, task_id: str, after: str, context: Context) -> AsyncGenerator[Event, None]:
        """The task's events after ``after``, live, until its terminal one, or until the call
        is over (checked after every read: redis-py can swallow the ``CancelledError`` grpc
        uses to end the handler of a call the client gave up on, redis/redis-py#2028)."""
        return self.watch_client.watch(
            task_id, since=after, block_ms=self.block_ms, stop=context.done
        )

    async def _watch_start(
        self, request: pb.WatchTaskRequest, who: Principal, context: Context
    ) -> str | None:
        """The log position to read after; ``None`` when nothing can follow ``since``."""
        task_id = request.task_id
        word = await self.client.state_word(task_id)
        if word is None or not who.may_read(word.tenant):
            raise self.hidden(task_id)
        if not request.since:
            return id_before(word.requested_id)
        store = self.client.store
        partition = partition_of(task_id, store.settings.partitions)
        await check_retained(store, partition, request.since, task_id=task_id)
        since, end = parse_id(request.since), parse_id(word.ref)
        if word.code in TERMINAL_CODES and since is not None and end is not None and since >= end:
            return None  # resumed after the terminal event: the stream is complete
        return request.since


def _traceparent(context: Context) -> str | None:
    """The W3C ``traceparent`` metadata of the call (OpenTelemetry's gRPC propagation)."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str) and TRACEPARENT.fullmatch(value):
            return value  # an invalid one is ignored (W3C): the task starts a new trace
    return None
