"""Shared rate limits: GCRA buckets in Redis, waiting within the budget, RateLimited beyond it,
provider headers tightening the limit, and one limit across two worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from providers.errors import RateLimited
from providers.factory import build_router
from providers.ratelimit import Limit, RateLimiter
from providers.sandbox import Sandbox
from providers.types import ProviderRequest
from tests.providers.conftest import RecordingSink, make_settings

ROOT = Path(__file__).resolve().parents[2]


def limiter(redis: aioredis.Redis, **limits: Limit) -> RateLimiter:
    return RateLimiter(redis, f"t{uuid.uuid4().hex[:8]}", dict(limits))


async def test_burst_then_refuse_without_budget(fake_redis: aioredis.Redis) -> None:
    """The burst goes at once; the next call without wait budget is refused with the wait."""
    rl = limiter(fake_redis, gemini=Limit(rpm=600, burst_fraction=0.01))  # burst 6, 1 per 100 ms
    for _ in range(6):
        assert await rl.acquire("gemini", max_wait=0) == 0
    with pytest.raises(RateLimited) as info:
        await rl.acquire("gemini", max_wait=0)
    assert 0 < (info.value.retry_after or 0) <= 0.1


async def test_calls_made_together_share_one_round_trip(fake_redis: aioredis.Redis) -> None:
    """Ten calls started in the same loop turn are decided by one script run, in order, as if
    each ran alone: the burst of 6 goes, the other 4 are refused; a call after that is a new
    round trip."""
    rl = limiter(fake_redis, gemini=Limit(rpm=600, burst_fraction=0.01))  # burst 6, 1 per 100 ms
    runs = 0
    script = rl._acquire

    async def counted(**kwargs: object) -> object:
        nonlocal runs
        runs += 1
        return await script(**kwargs)  # type: ignore[arg-type]

    rl._acquire = counted  # type: ignore[assignment]
    results = await asyncio.gather(
        *(rl.acquire("gemini", max_wait=0) for _ in range(10)), return_exceptions=True
    )
    assert runs == 1
    assert results[:6] == [0.0] * 6
    assert all(isinstance(r, RateLimited) for r in results[6:])
    with pytest.raises(RateLimited):
        await rl.acquire("gemini", max_wait=0)
    assert runs == 2


async def test_waits_for_a_slot_within_budget(fake_redis: aioredis.Redis) -> None:
    """When the next slot frees before the budget runs out, the call waits for it."""
    rl = limiter(fake_redis, gemini=Limit(rpm=600, burst_fraction=0.0))  # 1 per 100 ms
    await rl.acquire("gemini", max_wait=0)
    started = time.monotonic()
    waited = await rl.acquire("gemini", max_wait=1.0)
    assert 0.05 < waited <= 0.1
    assert time.monotonic() - started >= 0.05


async def test_tokens_per_minute(fake_redis: aioredis.Redis) -> None:
    """Token budget: a call whose tokens exceed what is left is refused."""
    rl = limiter(fake_redis, openai=Limit(tpm=6000, burst_fraction=0.1))  # 600 tokens at once
    await rl.acquire("openai", tokens=500, max_wait=0)
    with pytest.raises(RateLimited):
        await rl.acquire("openai", tokens=500, max_wait=0)


async def test_charge_after_the_call_counts(fake_redis: aioredis.Redis) -> None:
    """Tokens learned from usage afterwards use up the budget too."""
    rl = limiter(fake_redis, openai=Limit(tpm=6000, burst_fraction=0.1))
    await rl.acquire("openai", tokens=10, max_wait=0)
    rl.charge("openai", 590)
    with pytest.raises(RateLimited):
        await rl.acquire("openai", tokens=10, max_wait=0)


async def test_block_until_holds_everyone_off(fake_redis: aioredis.Redis) -> None:
    """A provider-announced reset blocks the provider until then, even with budget left."""
    rl = limiter(fake_redis, anthropic=Limit(rpm=1000))
    await rl.block_until("anthropic", time.time() + 5)
    with pytest.raises(RateLimited) as info:
        await rl.acquire("anthropic", max_wait=1)
    assert 4 < (info.value.retry_after or 0) <= 5


async def test_limits_are_per_provider(fake_redis: aioredis.Redis) -> None:
    """One provider's exhausted budget does not affect another."""
    rl = limiter(fake_redis, gemini=Limit(rpm=1, burst_fraction=0), openai=Limit(rpm=1))
    await rl.acquire("gemini", max_wait=0)
    with pytest.raises(RateLimited):
        await rl.acquire("gemini", max_wait=0)
    await rl.acquire("openai", max_wait=0)


async def test_router_headers_tighten_then_fall_back(
    sandbox: Sandbox, fake_redis: aioredis.Redis
) -> None:
    """OpenAI headers say remaining=0: the next task skips OpenAI unmade for Anthropic."""
    settings = make_settings(
        sandbox.url, AIIS_TEXT_CHAIN="openai,anthropic", AIIS_RATE_MAX_WAIT_S=0.5
    )
    router = build_router(fake_redis, settings)
    try:
        await router.process(
            ProviderRequest("t", "a", "text", prompt="x [[fault:remaining0]]"), RecordingSink()
        )
        calls = sandbox.stats()["requests"]["openai"]
        sink = RecordingSink()
        result = await router.process(ProviderRequest("t", "a", "text", prompt="y"), sink)
        assert result.provider == "anthropic"
        assert sandbox.stats()["requests"]["openai"] == calls
        assert dict(sink.notices)["fallback"]["error_class"] == "RateLimited"
    finally:
        await router.aclose()


async def test_provider_429_blocks_the_limiter(
    sandbox: Sandbox, fake_redis: aioredis.Redis
) -> None:
    """After a 429 with a wait, further calls to that provider wait or fall back unmade."""
    settings = make_settings(sandbox.url, AIIS_TEXT_CHAIN="gemini,openai", AIIS_RATE_MAX_WAIT_S=0)
    router = build_router(fake_redis, settings)
    try:
        await router.process(
            ProviderRequest("t", "a", "text", prompt="x [[fault:rate_limit@gemini]]"),
            RecordingSink(),
        )
        before = sandbox.stats()["requests"]["gemini"]
        result = await router.process(
            ProviderRequest("t", "a", "text", prompt="y"), RecordingSink()
        )
        assert result.provider == "openai"
        assert sandbox.stats()["requests"]["gemini"] == before
    finally:
        await router.aclose()


@pytest.mark.slow
async def test_limit_holds_across_two_processes(provider_redis_url: str) -> None:
    """Two worker processes share one 20/s limit: together they never exceed it."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 1.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.providers.workers",
            "limited",
            provider_redis_url,
            prefix,
            str(start_at),
            "15",
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [json.loads((await p.communicate())[0]) for p in procs]
    granted = sorted(t for o in outputs for t in o["granted"])
    assert len(granted) == 30
    # 30 slots at 20/s need >= 1.45 s together; a per-process limit would finish in ~0.7 s
    assert granted[-1] - granted[0] >= 1.3
    for i, t in enumerate(granted):
        in_window = sum(1 for u in granted[i:] if u - t < 0.5)
        assert in_window <= 12  # 10 per 0.5 s, plus timing slack
