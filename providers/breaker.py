"""Circuit breakers shared by every worker process, on purgatory's state model.

purgatory's ``Context`` decides the transitions (closed → opened after ``threshold`` consecutive
failures, opened → half-opened after ``ttl``, half-opened → closed on success / opened on
failure); ``RedisBreakerRepository`` implements its repository interface with Lua scripts so each
step is atomic across processes. purgatory's own Redis repository reads then writes, so two
workers could both see "opened and expired" and both probe; here loading a breaker whose open
period is over claims a ``SET NX PX`` probe lock in the same script, and only the winner gets a
half-opened context. Everyone else sees it still open.

What counts: only the provider's own failures (``errors.PROVIDER_FAILURES``: 5xx/overload,
timeouts, network). A 429 is pacing — the limiter and the provider's hints handle it; an
``AuthFailed`` or ``InsufficientCredits`` is about our account, handled by key rotation and
fallback; an error of our own code says nothing about the provider. Those are neutral: they
neither count as a failure nor reset the count, and a probe that ends in one hands its probe
lock back. ``InvalidRequest`` proves the provider answered: it counts as a success.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from purgatory import AsyncAbstractUnitOfWork, AsyncCircuitBreakerFactory
from purgatory.domain.model import Context, OpenedState
from purgatory.service._async.repository import AsyncAbstractRepository
from redis.exceptions import RedisClusterException, RedisError

from providers import keys
from providers.errors import PROVIDER_FAILURES, CircuitOpen, InvalidRequest
from providers.script_args import (
    BreakerKeys,
    build_breaker_acquire,
    build_breaker_fail,
    build_breaker_release,
    build_breaker_reset,
    build_breaker_settle,
    parse_breaker_acquire,
    parse_breaker_fail,
    parse_flag,
)
from providers.scripts import lua_source

log = logging.getLogger(__name__)

T = TypeVar("T")
# (provider, "opened" | "closed", info) — called once per real transition, cluster-wide
TransitionHook = Callable[[str, str, dict[str, Any]], None]

_ACQUIRE = lua_source("breaker_acquire")
_FAIL = lua_source("breaker_fail")
# only the probe's outcome moves a half-opened breaker; stale contexts cannot
_SETTLE = lua_source("breaker_settle")
_RESET = lua_source("breaker_reset")
_RELEASE = lua_source("breaker_release")

_transitions: contextvars.ContextVar[list[tuple[str, dict[str, Any]]] | None] = (
    contextvars.ContextVar("aiis_breaker_transitions", default=None)
)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    threshold: int = 5
    open_s: float = 60.0
    probe_lock_s: float = 300.0  # longer than any call; a crashed probe frees it after this
    closed_cache_s: float = 0.1  # reuse a healthy state read for this long (0: always read)


class RedisBreakerRepository(AsyncAbstractRepository):
    """purgatory's repository interface over Redis, every operation one atomic script."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        policy: BreakerPolicy,
        hook: TransitionHook | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.policy = policy
        self.hook = hook
        self.messages = []
        self._token = f"{id(self):x}-{time.time_ns():x}"
        self._healthy: dict[str, float] = {}  # provider -> monotonic time the cached read expires
        self._reading: dict[str, asyncio.Future[bool]] = {}  # provider -> read in flight: healthy?
        self._acquire = redis.register_script(_ACQUIRE)
        self._fail = redis.register_script(_FAIL)
        self._settle = redis.register_script(_SETTLE)
        self._reset = redis.register_script(_RESET)
        self._release = redis.register_script(_RELEASE)

    def _keys(self, name: str) -> BreakerKeys:
        return BreakerKeys(keys.breaker(self.prefix, name), keys.probe(self.prefix, name))

    def _transition(self, name: str, state: str, info: dict[str, Any]) -> None:
        pending = _transitions.get()
        if pending is not None:
            pending.append((state, info))
        if self.hook is not None:
            self.hook(name, state, info)

    async def get(self, name: str) -> Context:
        """Load the breaker for one request; claims the probe when the open period is over.

        A healthy (closed, no failures) state read less than ``closed_cache_s`` ago is reused:
        it saves a Redis round trip per call, and at worst calls go out for that long after
        another worker opened the breaker."""
        p = self.policy
        if self._healthy.get(name, 0.0) > time.monotonic():
            return Context(name, p.threshold, p.open_s)
        pending = self._reading.get(name)
        if pending is not None:
            # another call is reading this breaker right now (2,000 calls starting together
            # would otherwise make 2,000 reads): if it finds it healthy, so is ours; if not,
            # read ourselves (the read may claim the probe, which must stay one call's)
            if await asyncio.shield(pending):
                return Context(name, p.threshold, p.open_s)
            return await self._read(name)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._reading[name] = done
        healthy = False
        try:
            context = await self._read(name)
            healthy = context.state == "closed" and context.failure_count == 0
            return context
        finally:
            del self._reading[name]
            done.set_result(healthy)

    async def _read(self, name: str) -> Context:
        p = self.policy
        script_keys, args = build_breaker_acquire(
            self._keys(name), time.time(), p.open_s, int(p.probe_lock_s * 1000), self._token
        )
        read = parse_breaker_acquire(await self._acquire(keys=script_keys, args=args))
        if read.state == "closed" and read.failures == 0:
            # from the answer, not the question: a read slower than closed_cache_s (thousands
            # of calls queued on the pool) must still serve the calls right after it
            self._healthy[name] = time.monotonic() + p.closed_cache_s
        else:
            self._healthy.pop(name, None)
        return Context(
            name,
            p.threshold,
            p.open_s,
            state=read.state,
            failure_count=read.failures,
            opened_at=read.opened_at,
        )

    async def register(self, context: Context) -> None:
        """Nothing to do: a missing hash reads as a closed breaker."""

    async def update_state(self, name: str, state: str, opened_at: float | None) -> None:
        if state == "half-opened":
            return  # claimed atomically in get()
        script_keys, args = build_breaker_settle(self._keys(name), state, opened_at or time.time())
        if parse_flag(await self._settle(keys=script_keys, args=args)):
            self._transition(name, state, {"probe": True, "open_s": self.policy.open_s})

    async def inc_failures(self, name: str, failure_count: int) -> None:
        self._healthy.pop(name, None)
        script_keys, args = build_breaker_fail(self._keys(name), time.time(), self.policy.threshold)
        failures = parse_breaker_fail(await self._fail(keys=script_keys, args=args))
        if failures:
            self._transition(
                name, "opened", {"failures": int(failures), "open_s": self.policy.open_s}
            )

    async def reset_failure(self, name: str) -> None:
        script_keys, args = build_breaker_reset(self._keys(name))
        await self._reset(keys=script_keys, args=args)

    async def release_probe(self, name: str) -> None:
        script_keys, args = build_breaker_release(self._keys(name), self._token)
        await self._release(keys=script_keys, args=args)


class _UnitOfWork(AsyncAbstractUnitOfWork):
    def __init__(self, repository: RedisBreakerRepository) -> None:
        self.contexts = repository

    async def commit(self) -> None:
        """Every repository call is already its own atomic script."""

    async def rollback(self) -> None:
        """Nothing to roll back (see commit)."""


class Breakers:
    """One shared breaker per provider; ``call(provider, fn)`` runs ``fn`` under it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "aiis",
        policy: BreakerPolicy | None = None,
        hook: TransitionHook | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.repository = RedisBreakerRepository(redis, prefix, self.policy, hook)
        self.factory = AsyncCircuitBreakerFactory(
            default_threshold=self.policy.threshold,
            default_ttl=self.policy.open_s,
            uow=_UnitOfWork(self.repository),
        )

    async def call(
        self,
        provider: str,
        fn: Callable[[], Awaitable[T]],
        transitions: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> T:
        """Run ``fn`` unless the breaker is open (then ``CircuitOpen`` with the wait as
        retry_after).

        Only ``PROVIDER_FAILURES`` count as failures; InvalidRequest proves the provider healthy;
        anything else (429, auth, credits, our own exceptions) and cancellation count neither
        way (a probe ending so hands the probe lock back).
        """
        token = _transitions.set(transitions)
        try:
            try:
                breaker = await self.factory.get_breaker(provider, exclude=[InvalidRequest])
            except (RedisError, RedisClusterException) as exc:
                # fail open: an unreachable breaker store must not stop healthy traffic
                log.warning(
                    "%s: circuit state unavailable (%s); calling without breaker",
                    provider,
                    type(exc).__name__,
                )
                return await fn()
            context = breaker.context
            try:
                context.handle_new_request()
            except OpenedState as exc:
                left = (context.opened_at or 0) + self.policy.open_s - time.time()
                raise CircuitOpen(
                    f"{provider}: circuit open",
                    provider=provider,
                    retry_after=max(round(left, 3), 0.001),
                ) from exc
            probing = context.state == "half-opened"
            try:
                result = await fn()
            except BaseException as exc:
                if not isinstance(exc, (*PROVIDER_FAILURES, InvalidRequest)):
                    if probing:
                        await asyncio.shield(self.repository.release_probe(provider))
                    raise
                context.handle_exception(exc)
                await self._flush(breaker)
                raise
            context.handle_end_request()
            await self._flush(breaker)
            return result
        finally:
            _transitions.reset(token)

    async def _flush(self, breaker: Any) -> None:
        try:
            while breaker.context.messages:
                await breaker.messagebus.handle(breaker.context.messages.pop(0), breaker.uow)
        except (RedisError, RedisClusterException):
            # the call's own outcome matters more than one lost breaker update
            return

    async def state(self, provider: str) -> str:
        """The shared state as stored ("closed", "opened", "half-opened"); for stats and tests."""
        raw = await self.repository.redis.hget(
            keys.breaker(self.repository.prefix, provider), "state"
        )
        if raw is None:
            return "closed"
        return raw.decode() if isinstance(raw, bytes) else str(raw)
