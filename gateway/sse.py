"""``GET /v1/tasks/{id}/events``: one task's events as Server-Sent Events.

The stream starts at the task's first event, or after ``Last-Event-ID`` (header, as browsers
send it on reconnect; or ``?last_event_id=``), and ends after the terminal event. It is a hub
subscription like a WebSocket one, so resume has no gap and no duplicate, and a reader that
falls behind its send buffer is cut off (it reconnects with Last-Event-ID).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from engine.core.events import TERMINAL_CODES
from gateway import since, tasks
from gateway.context import Context
from gateway.errors import ProtocolError
from gateway.http import ctx_of, principal
from gateway.hub import Subscription
from gateway.outbox import Item, Outbox
from gateway.protocol import Target, parse_id
from gateway.session import authorize_task

RETRY_MS = 1000


def sse_event(item: Item) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        item.id.encode(),
        item.type.encode(),
        item.envelope,
    )


async def _stream(ctx: Context, sub: Subscription, starts: dict[int, str]) -> AsyncIterator[bytes]:
    ctx.sse_streams += 1
    ctx.sse_outboxes.add(sub.outbox)
    try:
        yield b"retry: %d\n\n" % RETRY_MS
        await ctx.hub.subscribe(sub, starts)
        outbox = sub.outbox
        while True:
            try:
                async with asyncio.timeout(ctx.gw.sse_keepalive_s):
                    msg = await outbox.get()
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if msg is None:
                if outbox.overflowed:
                    ctx.counters.slow_closed += 1
                return
            if isinstance(msg, Item):
                yield sse_event(msg)
                if msg.terminal:
                    return
    finally:
        ctx.hub.remove(sub)
        ctx.sse_outboxes.discard(sub.outbox)
        ctx.sse_streams -= 1


async def task_events(request: Request) -> Response:
    if tasks.wants_json(request):  # the task's story, not its live stream
        return await tasks.task_story(request)
    ctx = ctx_of(request)
    who = principal(request)
    task_id = request.path_params["task_id"]
    word = await authorize_task(ctx, who, task_id)
    last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    target = Target("task", task_id)
    if last is not None and not last.strip():
        last = None
    if last is not None and word.code in TERMINAL_CODES:
        done, seen = parse_id(word.ref), parse_id(last.strip())
        if done is not None and seen is not None and seen >= done:
            return Response(status_code=204)  # the client has the terminal event: stop
    starts = await since.resolve(ctx.hub.store, target, last, word)
    if starts is None:  # pragma: no cover - a task subscription always replays
        raise ProtocolError("internal", "no replay start")
    outbox = Outbox(ctx.gw.send_queue, ctx.gw.send_queue_bytes, lambda: None)
    sub = Subscription(target, outbox, ctx.gw.send_queue)
    return StreamingResponse(
        _stream(ctx, sub, starts),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
