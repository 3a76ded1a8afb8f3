"""One WebSocket connection: reads client frames, answers them, and writes its outbox.

A bad frame is answered with ``{"op":"error"}`` and the connection carries on. A connection
whose outbox overflows is closed with 1013 (try again later) and resumes with ``since``; one
that does not even read its close frame is aborted after ``close_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.admission.sanitize import Limits
from engine.admission.stream import error_code
from engine.core.client import Submitted
from engine.core.task import validate_task
from engine.errors import (
    BudgetExceeded,
    EngineError,
    IdempotencyConflict,
    InvalidTask,
    QueueFull,
    RedisUnavailable,
    TaskNotFound,
)
from engine.operations.audit import Action
from gateway import protocol, since
from gateway.auth import Principal
from gateway.context import Context
from gateway.errors import ProtocolError
from gateway.hub import Subscription
from gateway.outbox import Item, Outbox
from gateway.protocol import Target
from gateway.transport import ABORT_EXTENSION

log = logging.getLogger("aiis.gateway")

SLOW_REASON = "send buffer full: reconnect and subscribe with since=<last event id>"


def not_found(task_id: str) -> ProtocolError:
    # the same answer for "no such task" and "another tenant's task": ids cannot be probed
    return ProtocolError("not_found", f"no task {task_id[:64]!r}", status=404)


async def audit(
    ctx: Context,
    who: Principal,
    action: Action,
    tenant: str,
    target: str | None,
    outcome: str = "ok",
    **detail: Any,
) -> None:
    """An audit record (who: tenant + token id); a failure to write it is logged, never the
    caller's problem."""
    if ctx.audit is None:
        return
    try:
        await ctx.audit.record(
            action,
            tenant=tenant,
            token_id=who.token_id,
            target=target,
            outcome="ok" if outcome == "ok" else "denied",
            detail=detail,
        )
    except EngineError as exc:
        log.warning("audit record of %s not written: %s", action.value, exc)


MAX_CHAT_MESSAGES = Limits().chat_messages


# before parsing: a valid message holds the token "role" once as a key and at most once as a
# string value (a string cannot contain it unescaped), so a body with many more is a chat over
# the limit, refused without building its objects; a body that hides its keys (\u escapes)
# is parsed, then refused by ``precheck``
MAX_ROLE_TOKENS = 3 * MAX_CHAT_MESSAGES + 1000


def precheck_body(body: bytes | bytearray) -> None:
    """Refuse a body with far too many chat messages before it is parsed."""
    if len(body) > 64 * 1024 and body.count(b'"role"') > MAX_ROLE_TOKENS:
        raise InvalidTask("input", f"over {MAX_CHAT_MESSAGES} chat messages")


def precheck(task: dict[str, Any]) -> None:
    """Cheap checks before model validation, whose cost grows with the message count: a
    120,000-message chat would hold the event loop for every other client."""
    messages = task.get("input")
    if isinstance(messages, list) and len(messages) > MAX_CHAT_MESSAGES:
        raise InvalidTask(
            "input", f"{len(messages)} chat messages; the limit is {MAX_CHAT_MESSAGES}"
        )


def task_tenant(who: Principal, task: dict[str, Any]) -> str:
    """The tenant ``who`` submits ``task`` as: the token's, or an operator's choice in the task
    (``default`` when it names none)."""
    return str(task.get("tenant", "default")) if who.operator else who.tenant


async def submit_task(ctx: Context, who: Principal, task: dict[str, Any], transport: str) -> str:
    """Validate and submit ``task`` as ``who``; ``ProtocolError`` with the HTTP status."""
    return (await submit_outcome(ctx, who, task, transport)).task_id


async def submit_outcome(
    ctx: Context, who: Principal, task: dict[str, Any], transport: str
) -> Submitted:
    """``submit_task``, telling whether the task was created or an idempotency key attached
    the request to an earlier one."""
    try:
        submitted = await _submit_task(ctx, who, task, transport)
    except ProtocolError as exc:
        if exc.code != "unavailable":
            tenant = task_tenant(who, task)
            await audit(ctx, who, Action.SUBMIT, tenant, None, "denied", code=exc.code)
        raise
    await audit(
        ctx, who, Action.SUBMIT, task_tenant(who, task), submitted.task_id, transport=transport
    )
    return submitted


async def _submit_task(
    ctx: Context, who: Principal, task: dict[str, Any], transport: str
) -> Submitted:
    raw = dict(task)
    tenant = raw.get("tenant")
    if not who.operator:
        if tenant is not None and tenant != who.tenant:
            ctx.counters.submits[(transport, "forbidden")] += 1
            raise ProtocolError(
                "forbidden", f"this token submits as tenant {who.tenant!r}", status=403
            )
        raw["tenant"] = who.tenant
    try:
        precheck(raw)
        # the deployment's limits (DESIGN.md §3.9), not this process's environment
        await ctx.client.admission.ensure_loaded()
        spec = validate_task(raw, ctx.client.admission.limits)
        submitted = await ctx.client.submit_outcome(spec)
    except InvalidTask as exc:
        ctx.counters.submits[(transport, "invalid")] += 1
        raise ProtocolError(error_code(exc), str(exc), field=exc.field) from None
    except BudgetExceeded as exc:
        ctx.counters.submits[(transport, "budget_exceeded")] += 1
        raise ProtocolError(
            "budget_exceeded", str(exc), status=429, resets_at=exc.resets_at
        ) from None
    except QueueFull as exc:
        ctx.counters.submits[(transport, "queue_full")] += 1
        raise ProtocolError("queue_full", str(exc), status=429, retry_after_s=1) from None
    except IdempotencyConflict as exc:
        # the IETF Idempotency-Key draft: a key reused with another payload is a 422
        ctx.counters.submits[(transport, "idempotency_conflict")] += 1
        raise ProtocolError(
            "idempotency_conflict", str(exc), status=422, field=exc.field, task_id=exc.task_id
        ) from None
    except RedisUnavailable as exc:
        ctx.counters.submits[(transport, "unavailable")] += 1
        raise ProtocolError("unavailable", "Redis is unavailable; retry", status=503) from exc
    ctx.counters.submits[(transport, "accepted")] += 1
    return submitted


async def authorize_task(ctx: Context, who: Principal, task_id: str) -> Any:
    """The task's state word if ``who`` may read it, else ``not_found``."""
    try:
        word = await ctx.client.state_word(task_id)
    except (InvalidTask, TaskNotFound):
        raise not_found(task_id) from None
    if word is None or not who.may_read(word.tenant):
        raise not_found(task_id)
    return word


class Session:
    def __init__(self, ws: WebSocket, ctx: Context, who: Principal | None) -> None:
        self.ws = ws
        self.ctx = ctx
        self.who = who
        gw = ctx.gw
        self.outbox = Outbox(gw.send_queue, gw.send_queue_bytes, self._too_slow)
        self.subs: dict[Target, Subscription] = {}
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        self._writer = asyncio.create_task(self._write())
        auth_deadline = None
        if self.who is None:
            loop = asyncio.get_running_loop()
            auth_deadline = loop.call_later(self.ctx.gw.auth_timeout_s, self._auth_timeout)
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message.get("text")
                if frame is None:
                    frame = message.get("bytes") or b""
                await self._handle(frame)
                if self.who is not None and auth_deadline is not None:
                    auth_deadline.cancel()
        except (WebSocketDisconnect, RuntimeError):
            return  # the peer went away mid-send, or the socket is already closed
        finally:
            if auth_deadline is not None:
                auth_deadline.cancel()
            self._cleanup()

    def _cleanup(self) -> None:
        for sub in self.subs.values():
            self.ctx.hub.remove(sub)
        self.subs.clear()
        self.ctx.stats.subscribers.pop(self.outbox, None)
        self.outbox.close()
        if self._writer is not None:
            self._writer.cancel()

    async def _write(self) -> None:
        while True:
            msg = await self.outbox.get()
            if msg is None:
                return
            await self.ws.send_text(msg.frame if isinstance(msg, Item) else msg)

    def close(self, code: int, reason: str) -> None:
        """Close from outside the receive loop (slow subscriber, shutdown, auth timeout)."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if self._writer is not None:  # it may be stuck on a full TCP buffer
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        abort = self.ws.scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
        handle = None
        if abort is not None:  # a peer that reads nothing never takes the close frame either
            handle = asyncio.get_running_loop().call_later(self.ctx.gw.close_timeout_s, abort)
        try:
            async with asyncio.timeout(self.ctx.gw.close_timeout_s):
                await self.ws.close(code, reason)
        except (TimeoutError, RuntimeError, OSError):
            if handle is not None:
                handle.cancel()
                abort()

    def _too_slow(self) -> None:
        self.ctx.counters.slow_closed += 1
        self.close(1013, SLOW_REASON)

    def _auth_timeout(self) -> None:
        if self.who is None:
            self.close(1008, "authenticate within AIIS_GATEWAY_AUTH_TIMEOUT_S")

    # --- requests ------------------------------------------------------------------------

    def _send(self, frame: str) -> None:
        self.outbox.put(frame)

    async def _handle(self, frame: str | bytes) -> None:
        ref: protocol.Ref = None
        try:
            command = protocol.parse(frame, self.ctx.gw.max_message_bytes)
            ref = command.ref
            await self._dispatch(command)
        except ProtocolError as exc:
            self.ctx.counters.errors[exc.code] += 1
            extra = {"ref": ref, **exc.extra}
            self._send(protocol.error(exc.code, exc.message, **extra))
        except EngineError as exc:
            self.ctx.counters.errors["unavailable"] += 1
            log.warning("request failed: %s", exc)
            self._send(protocol.error("unavailable", "the engine is unavailable; retry", ref=ref))

    async def _dispatch(self, command: protocol.Command) -> None:
        if isinstance(command, protocol.Ping):
            self._send(protocol.pong(command.ref))
            return
        if isinstance(command, protocol.Auth):
            who = self.ctx.auth.authenticate(command.token)
            if self.who is not None and who != self.who:
                raise ProtocolError("forbidden", "this connection is already authenticated")
            self.who = who
            assert who is not None
            self._send(protocol.authenticated(who.tenant, command.ref))
            return
        who = self.who
        if who is None:
            raise ProtocolError(
                "unauthorized",
                'authenticate first: Authorization: Bearer, ?token=, or {"op":"auth"}',
                status=401,
            )
        if isinstance(command, protocol.Submit):
            task_id = await submit_task(self.ctx, who, command.task, "ws")
            self._send(protocol.accepted(task_id, command.ref))
        elif isinstance(command, protocol.Subscribe):
            await self._subscribe(who, command)
        else:
            self._unsubscribe(command)

    async def _subscribe(self, who: Principal, command: protocol.Subscribe) -> None:
        target = command.target
        current = self.subs.get(target)
        if current is not None and not current.finished:
            raise ProtocolError("already_subscribed", "already subscribed; unsubscribe first")
        live = sum(1 for s in self.subs.values() if not s.finished)
        if live >= self.ctx.gw.max_subscriptions:
            raise ProtocolError(
                "too_many_subscriptions",
                f"{live} subscriptions on this connection; the limit is "
                f"{self.ctx.gw.max_subscriptions}",
            )
        word = None
        if target.kind == "task":
            word = await authorize_task(self.ctx, who, target.value)
        elif target.kind == "tenant" and not who.may_read(target.value):
            raise ProtocolError(
                "forbidden", f"this token reads tenant {who.tenant!r} only", status=403
            )
        starts = await since.resolve(self.ctx.hub.store, target, command.since, word)
        extra = {}
        if target.kind == "tenant":
            # where this subscription starts in each partition (its since, or the hub's position
            # now: nothing can be dispatched before it is registered below): a client resumes
            # from these for a partition it has seen no event of
            at = starts or self.ctx.hub.cursors
            extra["cursors"] = [at.get(p, "0-0") for p in range(self.ctx.settings.partitions)]
        self._send(protocol.subscribed(target, command.ref, **extra))
        if target.kind == "stats":
            self.ctx.stats.subscribers[self.outbox] = who
            self.ctx.stats.windows[self.outbox] = target.value  # the charts window ("": 15m)
            return
        sub = Subscription(target, self.outbox, self.ctx.gw.send_queue)
        sub.positions = target.kind == "tenant"
        self.subs[target] = sub
        await self.ctx.hub.subscribe(sub, starts)

    def _unsubscribe(self, command: protocol.Unsubscribe) -> None:
        target = command.target
        if target.kind == "stats":
            found = self.ctx.stats.subscribers.pop(self.outbox, None) is not None
        else:
            sub = self.subs.pop(target, None)
            found = sub is not None
            if sub is not None:
                self.ctx.hub.remove(sub)
        if not found:
            raise ProtocolError("not_subscribed", "no such subscription on this connection")
        self._send(protocol.unsubscribed(target, command.ref))


async def websocket_endpoint(ws: WebSocket, ctx: Context, who: Principal | None) -> None:
    """Serve one accepted connection until it closes."""
    session = Session(ws, ctx, who)
    ctx.connections += 1
    ctx.counters.connections_total += 1
    ctx.sessions.add(session)
    try:
        await session.run()
    finally:
        ctx.sessions.discard(session)
        ctx.connections -= 1
        session.ended.set()
        if session._closing is not None:
            with contextlib.suppress(Exception):
                await session._closing
