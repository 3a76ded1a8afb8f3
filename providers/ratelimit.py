"""Per-provider rate limits shared by every worker: requests/min and tokens/min as two GCRA
buckets checked and reserved in one Lua script, plus a "blocked until" instant set when the
provider itself says the budget is spent (429, or ``remaining: 0`` with a reset time).

A call reserves its slot at the earliest instant both buckets allow; it sleeps until then when
that is within its wait budget (the task deadline, capped), otherwise nothing is reserved and it
raises RateLimited(retry_after) so the engine reschedules the task.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from providers import keys
from providers.errors import RateLimited
from providers.script_args import (
    RateCall,
    build_ratelimit_acquire,
    build_ratelimit_block,
    parse_ratelimit_acquire,
)
from providers.scripts import lua_source

# KEYS: req_tat, tok_tat, blocked. ARGV: now_ms, req_T_ms, req_tau_ms, tok_T_ms (per token),
# tok_tau_ms, debt (tokens used by earlier calls beyond their estimate, charged whatever the
# outcome), then one (tokens, max_wait_ms) pair per call of the batch, decided in order exactly
# as if each ran alone. Returns one number per call: the wait in ms (reserved) or -wait-1
# (refused, nothing reserved).
_ACQUIRE = lua_source("ratelimit_acquire")
# KEYS: blocked. ARGV: until_ms, now_ms. Only ever moves the instant later.
_BLOCK = lua_source("ratelimit_block")


@dataclass(frozen=True, slots=True)
class Limit:
    rpm: int = 0  # requests per minute (0: none)
    tpm: int = 0  # tokens per minute (0: none)
    burst_fraction: float = 0.1  # share of a minute's budget usable at once


def _bucket(per_minute: int, burst_fraction: float) -> tuple[float, float]:
    """(emission interval ms, tolerance ms) of a GCRA bucket."""
    if per_minute <= 0:
        return 0.0, 0.0
    interval = 60_000.0 / per_minute
    burst = max(1, math.floor(per_minute * burst_fraction))
    return interval, interval * (burst - 1)


def estimate_tokens(text: str) -> int:
    """About four characters per token: what a call reserves before usage is known."""
    return max(1, len(text) // 4)


class RateLimiter:
    """Shared limits of every provider (one Limit each); Redis errors fail open."""

    def __init__(self, redis: aioredis.Redis, prefix: str, limits: dict[str, Limit]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = limits
        self._acquire = redis.register_script(_ACQUIRE)
        self._debt: dict[str, int] = {}
        self._block = redis.register_script(_BLOCK)
        # calls waiting for the next round trip, per provider: (tokens, max_wait_ms, answer)
        self._queued: dict[str, list[tuple[int, int, asyncio.Future[int]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def limits_calls(self, provider: str) -> bool:
        """Whether ``provider`` has any limit of ours (else acquiring is a no-op)."""
        limit = self.limits.get(provider)
        return limit is not None and (limit.rpm > 0 or limit.tpm > 0)

    async def acquire(self, provider: str, tokens: int = 0, max_wait: float = 30.0) -> float:
        """Reserve one request (and ``tokens``); sleep until the slot when it is at most
        ``max_wait`` s away, else raise RateLimited. Returns the seconds waited.

        Calls made in the same event-loop turn share one Redis round trip (one script run
        decides them in order, as if each ran alone): 2,000 calls starting together cost a
        handful of round trips, not 2,000."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        queued = self._queued.get(provider)
        if queued is None:
            queued = self._queued[provider] = []
            loop.call_soon(self._send_batch, provider)
        queued.append((tokens, int(max(max_wait, 0) * 1000), answer))
        wait_ms = await answer
        wait = wait_ms / 1000
        if wait < 0:
            retry_after = (-wait_ms - 1) / 1000
            raise RateLimited(
                f"{provider}: shared rate limit reached, next slot in {retry_after:.2f}s",
                provider=provider,
                retry_after=retry_after,
            )
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def _send_batch(self, provider: str) -> None:
        batch = self._queued.pop(provider, [])
        if batch:
            task = asyncio.ensure_future(self._decide(provider, batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _decide(
        self, provider: str, batch: list[tuple[int, int, asyncio.Future[int]]]
    ) -> None:
        limit = self.limits.get(provider, Limit())
        r_t, r_tau = _bucket(limit.rpm, limit.burst_fraction)
        t_t, t_tau = _bucket(limit.tpm, limit.burst_fraction)
        p = self.prefix
        script_keys, args = build_ratelimit_acquire(
            keys.rate(p, provider, "requests"),
            keys.rate(p, provider, "tokens"),
            keys.blocked(p, provider),
            _now_ms(),
            (r_t, r_tau),
            (t_t, t_tau),
            self._debt.pop(provider, 0),
            [RateCall(tokens, max_wait_ms) for tokens, max_wait_ms, _ in batch],
        )
        try:
            waits = parse_ratelimit_acquire(await self._acquire(keys=script_keys, args=args))
        except (RedisError, RedisClusterException):
            waits = [0] * len(batch)  # our limiter down must not stop traffic; providers 429
        except BaseException:
            for _, _, answer in batch:  # cancelled at shutdown: let the callers through
                if not answer.done():
                    answer.set_result(0)
            raise
        for (_, _, answer), wait_ms in zip(batch, waits, strict=True):
            if not answer.done():  # its caller may have given up meanwhile
                answer.set_result(wait_ms)

    def charge(self, provider: str, tokens: int) -> None:
        """Tokens a call used beyond the estimate it reserved: carried to this worker's next
        acquisition of ``provider`` (so a call costs one Redis round trip, not two)."""
        if tokens > 0 and self.limits.get(provider, Limit()).tpm > 0:
            self._debt[provider] = self._debt.get(provider, 0) + tokens

    async def block_until(self, provider: str, until: float) -> None:
        """Hold every worker off ``provider`` until the unix time ``until``."""
        now = _now_ms()
        until_ms = int(until * 1000)
        if until_ms <= now:
            return
        try:
            script_keys, args = build_ratelimit_block(
                keys.blocked(self.prefix, provider), until_ms, now
            )
            await self._block(keys=script_keys, args=args)
        except (RedisError, RedisClusterException):
            return


def _now_ms() -> int:
    return int(time.time() * 1000)
