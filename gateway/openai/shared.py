"""Who still follows a task that requests share through an ``Idempotency-Key``.

A client that goes away mid-answer cancels its task — unless another request with the same key
(a retry by the SDK, another replica of the caller) still follows it: then the task runs on
for that one, and only the last follower to leave early cancels it. The count lives in Redis,
so it holds whichever gateway process serves each request (``aiis gateway --processes N``):
one counter per tenant and key (``keys.followers_key``, in the task's cluster slot), joined
before the submit, so a request that attaches while the creator is still being answered is
always counted before either can leave. The counter expires (``TTL_MARGIN_S`` after the
deadline a task gets by default): a gateway that crashes with followers counted leaves a task
that runs to its end instead of one cancelled — nothing stays behind for good.

The last follower leaving early does not cancel at once: a caller whose connection broke
retries with the same key, so the task is cancelled ``AIIS_GATEWAY_SHARED_CANCEL_GRACE_S``
(2 s) later unless a request joined it meanwhile (``Completion``).

Requests without a key cannot be joined by another, so they are not counted (no Redis
command): leaving early cancels their task at once.
"""

from __future__ import annotations

from engine.admission.steps import hash_key
from engine.core.keys import followers_key, partition_for_key
from engine.core.store import translate_errors
from engine.errors import EngineError
from gateway.context import Context

TTL_MARGIN_S = 60


class Shared:
    """One request's membership in the followers of its idempotency key's task."""

    def __init__(self, ctx: Context, tenant: str, idempotency_key: str) -> None:
        client = ctx.client
        stored = hash_key(tenant, idempotency_key)  # as the task stores it: never in clear
        partition = partition_for_key(tenant, stored, client.settings.partitions)
        self.key = followers_key(client.store.keys(partition).tag, tenant, stored)
        self.redis = client.store.redis
        self.ttl_s = int(ctx.settings.task_deadline_s) + TTL_MARGIN_S
        self.joined = False

    async def join(self) -> None:
        """Count this request in (one round trip)."""
        with translate_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(self.key)
                pipe.expire(self.key, self.ttl_s)
                await pipe.execute()
        self.joined = True

    async def followers(self) -> int:
        """How many requests follow the task now (0 when Redis cannot tell: nobody known)."""
        try:
            with translate_errors():
                raw = await self.redis.get(self.key)
        except EngineError:
            return 0
        return int(raw or 0)

    async def leave(self) -> bool:
        """Count this request out; True when no request follows the task any more (so one
        leaving before the end may cancel it). False when Redis cannot tell: a task that is
        not cancelled runs to its end, which is the safe side for the others."""
        if not self.joined:
            return False
        self.joined = False
        try:
            with translate_errors():
                left = int(await self.redis.decr(self.key))
                if left < 0:
                    # the counter had expired (a request outliving its TTL): DECR made a new
                    # one at -1 without a TTL; give the 1 back (increments commute, so a join
                    # in between is still counted) and let it expire again
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.incr(self.key)
                        pipe.expire(self.key, self.ttl_s)
                        left = int((await pipe.execute())[0])
        except EngineError:
            return False
        # left at 0 rather than deleted: a DEL racing a new request's INCR would lose it
        return left <= 0
