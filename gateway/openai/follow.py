"""One task's live events for one OpenAI request: a hub subscription, without a gap.

A request subscribes right after its submit returned. Whatever the hub dispatched in between
would be missed, so the hub's cursors are noted before the submit: unchanged afterwards, the
hub has dispatched nothing since, and a live subscription is complete (no Redis command);
moved, the log is replayed from the noted cursor (the hub drops the overlap). A repeated
``Idempotency-Key`` attaches to a task that may be older: replayed from its first event.
"""

from __future__ import annotations

from engine.core.keys import partition_of
from engine.core.store import id_before
from gateway.context import Context
from gateway.hub import Subscription
from gateway.outbox import Outbox
from gateway.protocol import Target


class Follower:
    """The outbox of one task's events (``get`` → ``Item``, ``None`` once closed)."""

    def __init__(self, ctx: Context, task_id: str) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.partition = partition_of(task_id, ctx.client.settings.partitions)
        self.outbox = Outbox(ctx.gw.send_queue, ctx.gw.send_queue_bytes, self._overflow)
        self.sub = Subscription(Target("task", task_id), self.outbox, ctx.gw.send_queue)

    def _overflow(self) -> None:
        self.ctx.counters.slow_closed += 1

    async def start(self, noted: dict[int, str]) -> None:
        """Subscribe; ``noted`` is the hub's cursors from before the submit."""
        before = noted.get(self.partition)
        if before is not None and self.ctx.hub.cursors.get(self.partition) == before:
            self.ctx.hub.add(self.sub)
        else:
            await self.ctx.hub.subscribe(self.sub, {self.partition: before or "0-0"})

    async def start_from_first(self, requested_id: str) -> None:
        await self.ctx.hub.subscribe(self.sub, {self.partition: id_before(requested_id)})

    def close(self) -> None:
        self.ctx.hub.remove(self.sub)
        self.outbox.close()
