"""Result cache: key normalisation, TTL, LRU bound, opt-out (engine/admission/cache.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from engine.admission.cache import ResultCache, cache_enabled, request_key
from engine.core.events import TaskSucceededData

CHAIN = ("gemini", "openai")


def succeeded(text: str = "answer", cost: float = 0.0123) -> dict[str, Any]:
    return {
        "attempt": 1,
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        },
        "cost_usd": cost,
        "finish_reason": "stop",
        "result": {"text": text, "images": []},
        "latency_ms": 900,
    }


def test_key_normalises_whitespace_key_order_and_engine_params() -> None:
    """Whitespace, dict order and engine-only params do not change the key."""
    a = request_key("acme", "text", "Hello   world\n", {"temperature": 0, "top_p": 1}, CHAIN)
    b = request_key(
        "acme", "text", " Hello world", {"top_p": 1, "temperature": 0, "cache": True}, CHAIN
    )
    assert a == b


def test_key_separates_what_matters() -> None:
    """Tenant, kind, prompt words, params and chain each change the key."""
    base = request_key("acme", "text", "hi", {"t": 0}, CHAIN)
    assert base != request_key("other", "text", "hi", {"t": 0}, CHAIN)
    assert base != request_key("acme", "image", "hi", {"t": 0}, CHAIN)
    assert base != request_key("acme", "text", "hi!", {"t": 0}, CHAIN)
    assert base != request_key("acme", "text", "hi", {"t": 1}, CHAIN)
    assert base != request_key("acme", "text", "hi", {"t": 0}, ("openai", "gemini"))
    chat = [{"role": "user", "content": "hi"}]
    assert base != request_key("acme", "chat", chat, {"t": 0}, CHAIN)
    assert request_key("a", "text", "hi", {}, CHAIN, shared=True) == request_key(
        "b", "text", "hi", {}, CHAIN, shared=True
    )


def test_opt_out() -> None:
    """params cache: false opts out; anything else keeps the cache on."""
    assert cache_enabled({}) and cache_enabled({"cache": True})
    assert not cache_enabled({"cache": False})


async def test_hit_returns_cached_success_with_zero_cost(
    redis: aioredis.Redis, namespace: str
) -> None:
    """A hit yields valid TaskSucceeded data marked cached with cost 0; a miss yields None."""
    cache = ResultCache(redis, namespace)
    key = request_key("acme", "text", "hi", {}, CHAIN)
    assert await cache.get(key) is None
    await cache.put(key, succeeded("cached answer"), "task-1")
    hit = await cache.get(key)
    assert hit is not None and hit.source_task == "task-1"
    data = TaskSucceededData.model_validate(hit.succeeded_data(attempt=1, latency_ms=2))
    assert data.cached is True and data.cost_usd == 0.0
    assert data.result.text == "cached answer" and data.provider == "gemini"


async def test_cached_results_are_not_stored_again(redis: aioredis.Redis, namespace: str) -> None:
    """Putting a cache hit's data is a no-op (the original entry keeps its age)."""
    cache = ResultCache(redis, namespace)
    key = request_key("acme", "text", "hi", {}, CHAIN)
    await cache.put(key, succeeded("first"), "task-1")
    again = {**succeeded("second"), "cached": True}
    await cache.put(key, again, "task-2")
    hit = await cache.get(key)
    assert hit is not None and hit.result["text"] == "first"


async def test_entries_expire(redis: aioredis.Redis, namespace: str) -> None:
    """After the TTL the entry is gone."""
    cache = ResultCache(redis, namespace, ttl_s=0.05)
    key = request_key("acme", "text", "hi", {}, CHAIN)
    await cache.put(key, succeeded(), "t")
    assert await cache.get(key) is not None
    await asyncio.sleep(0.12)
    assert await cache.get(key) is None


async def test_bounded_with_lru_eviction(redis: aioredis.Redis, namespace: str) -> None:
    """Past max_entries the least recently used entries go; recently read ones stay."""
    cache = ResultCache(redis, namespace, max_entries=5, shards=1)
    keys = [request_key("acme", "text", f"q{i}", {}, CHAIN) for i in range(5)]
    for i, k in enumerate(keys):
        await cache.put(k, succeeded(f"a{i}"), f"t{i}")
        await asyncio.sleep(0.002)
    assert await cache.get(keys[0]) is not None  # touch: now the most recent
    await asyncio.sleep(0.002)
    extra = [request_key("acme", "text", f"new{i}", {}, CHAIN) for i in range(2)]
    for k in extra:
        await cache.put(k, succeeded(), "tn")
        await asyncio.sleep(0.002)
    present = [await cache.get(k) is not None for k in keys]
    assert present == [True, False, False, True, True]
    entries = [k async for k in redis.scan_iter(match=f"{namespace}:*:e:*")]
    assert len(entries) == 5
