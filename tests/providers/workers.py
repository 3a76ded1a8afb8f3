"""Worker processes for the cross-process tests: ``python -m tests.providers.workers MODE ...``.
Each prints one JSON object on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from providers.breaker import BreakerPolicy, Breakers
from providers.errors import Overloaded
from providers.ratelimit import Limit, RateLimiter


async def probe(url: str, prefix: str, start_at: float) -> dict[str, Any]:
    """Wait for ``start_at`` then try one call (0.5 s long) through the shared breaker."""
    redis = aioredis.Redis.from_url(url)
    transitions: list[list[str]] = []
    b = Breakers(
        redis, prefix, BreakerPolicy(5, 1.0, 5.0), hook=lambda p, s, _i: transitions.append([p, s])
    )
    await redis.ping()
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def slow() -> str:
        await asyncio.sleep(0.5)
        return "ok"

    try:
        await b.call("gemini", slow)
        outcome = "admitted"
    except Overloaded:
        outcome = "rejected"
    await redis.aclose()
    return {"outcome": outcome, "transitions": transitions}


async def limited(url: str, prefix: str, start_at: float, count: int) -> dict[str, Any]:
    """Take ``count`` slots of a shared 20 requests/s limit, recording when each was granted."""
    redis = aioredis.Redis.from_url(url)
    limiter = RateLimiter(redis, prefix, {"openai": Limit(rpm=1200, burst_fraction=0.0)})
    await redis.ping()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    granted = []
    for _ in range(count):
        await limiter.acquire("openai", max_wait=10.0)
        granted.append(time.time())
    await redis.aclose()
    return {"granted": granted}


def main() -> None:
    mode, url, prefix, start_at, *rest = sys.argv[1:]
    if mode == "probe":
        out = asyncio.run(probe(url, prefix, float(start_at)))
    else:
        out = asyncio.run(limited(url, prefix, float(start_at), int(rest[0])))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
