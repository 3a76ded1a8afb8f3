"""SubmitTasks' flow: batches read from one bidi stream, submitted, and answered in order.

Each stream message is a batch of 0 to ``max_batch`` tasks; its items go to the engine at once
(so they share its group commits) and its reply goes out when every item has an outcome, in
the order the batches came. Items carry a stream-wide index (counted over all batches).

Up to ``window`` items of a stream are in flight (submitted, reply not yet sent); beyond that
the stream stops reading and HTTP/2 flow control holds the client back. A batch bigger than the
window is admitted alone, once nothing else of its stream is in flight, so no batch the limit
allows can stall a stream. A batch over ``max_batch`` ends the stream with INVALID_ARGUMENT
(field ``tasks``) after the replies to the batches before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from gateway.grpc.gen import tasks_pb2 as pb

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

FIELD_KEY = "aiis-field"  # trailing metadata: the request field an INVALID_ARGUMENT is about

# (the batch's tasks, the stream-wide index of its first) -> its reply
SubmitBatch = Callable[[Sequence[pb.SubmitTaskRequest], int], Awaitable[pb.SubmitTasksReply]]


@dataclass
class StreamCounters:
    """SubmitTasks streams in progress and items submitted but not finished, server-wide; the
    batches in flight are held here too, so a stream the client abandoned cannot drop them."""

    active: int = 0
    items: int = 0
    batches: set[asyncio.Future[pb.SubmitTasksReply]] = field(default_factory=set)

    def track(self, batch: asyncio.Future[pb.SubmitTasksReply], size: int) -> None:
        self.items += size
        self.batches.add(batch)

        def done(_: asyncio.Future[pb.SubmitTasksReply]) -> None:
            self.items -= size
            self.batches.discard(batch)

        batch.add_done_callback(done)


class Window:
    """Items in flight on one stream, at most ``limit`` (one batch alone may exceed it)."""

    __slots__ = ("_freed", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more items fit (or nothing is in flight); one caller at a time."""
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()


@dataclass(frozen=True)
class Oversized:
    """The reader's last entry when a batch exceeded the limit."""

    size: int


Entry = tuple[asyncio.Future[pb.SubmitTasksReply], int] | Oversized | None


async def serve_batches(
    requests: AsyncIterator[pb.SubmitTasksRequest],
    context: Context,
    submit: SubmitBatch,
    *,
    window: int,
    max_batch: int,
    counters: StreamCounters,
) -> AsyncGenerator[pb.SubmitTasksReply, None]:
    """The replies of one SubmitTasks stream (the caller has authenticated it)."""
    slots = Window(window)
    # entries are admitted by `slots` (one per batch in flight, plus one last marker), so the
    # queue stays bounded by the window without a maxsize
    queue: asyncio.Queue[Entry] = asyncio.Queue()

    async def read() -> None:
        last: Entry = None
        try:
            index = 0
            async for request in requests:
                size = len(request.tasks)
                if size > max_batch:
                    last = Oversized(size)
                    break
                await slots.acquire(size)
                batch = asyncio.ensure_future(submit(request.tasks, index))
                counters.track(batch, size)
                queue.put_nowait((batch, size))
                index += size
        finally:
            queue.put_nowait(last)

    counters.active += 1
    reader = asyncio.ensure_future(read())
    try:
        while (entry := await queue.get()) is not None:
            if isinstance(entry, Oversized):
                context.set_trailing_metadata(((FIELD_KEY, "tasks"),))
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"tasks: at most {max_batch} tasks per message, got {entry.size}",
                )
            batch, size = entry
            # shielded: a client that goes away cancels this handler, not the submits in flight
            reply = await asyncio.shield(batch)
            slots.release(size)
            yield reply
        await reader  # a broken request stream ends the call with its error
    finally:
        # Items already handed to the engine are left to finish (their tasks exist or will);
        # only the reading stops.
        reader.cancel()
        counters.active -= 1
