"""Fixtures of the security building blocks: a Redis client on the real redis-server and on
fakeredis[lua] (each Redis test runs twice), with a private namespace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import fakeredis
import pytest
import redis.asyncio as aioredis

from engine.runtime.connection import connect


@pytest.fixture(params=["real", "fake"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """A Redis client: the session's real redis-server, then fakeredis[lua]."""
    if request.param == "real":
        client: aioredis.Redis = connect(request.getfixturevalue("redis_url"))
    else:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield client
    await client.aclose()


@pytest.fixture
def namespace() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


from tests.gateway.conftest import make_gateway  # noqa: E402, F401  (the gateway factory fixture)
