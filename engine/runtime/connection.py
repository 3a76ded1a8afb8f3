"""Redis connections with the same limits and reconnect policy everywhere.

A command that meets a dropped connection (Redis restarted, failover) is retried on a fresh one
with a short backoff. Every engine script is safe to repeat: a repeated submit finds its task id
already there, a repeated commit or fetch is fenced by the state word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

if TYPE_CHECKING:
    from engine.settings import Settings


def connect(url: str, max_connections: int = 64, *, cluster: bool = False) -> aioredis.Redis:
    """A client whose pool waits for a free connection (up to 10 s) instead of failing.

    With ``cluster`` (``AIIS_REDIS_CLUSTER``) the URL names any node of a Redis Cluster and the
    client routes each command by slot. Every engine script touches one partition's keys, which
    share a hash tag, so it runs on one node. ``RedisCluster`` offers every command the engine
    uses with the same signatures, hence the ``Redis`` type.
    """
    if cluster:
        client = RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=4),
            retry_on_error=[ConnectionError, TimeoutError],
        )
        return cast(aioredis.Redis, client)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=4),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return aioredis.Redis.from_pool(pool)


def connect_for(
    settings: Settings, max_connections: int = 64, *, url: str | None = None
) -> aioredis.Redis:
    """The one factory every process and component uses: ``AIIS_REDIS_URL`` (or the embedded
    Redis of a running ``aiis serve``, or ``url``), standalone or cluster per
    ``AIIS_REDIS_CLUSTER`` — so no component can forget the flag."""
    if url is None:
        from engine.runtime.workers import redis_url  # noqa: PLC0415 — runtime imports this module

        url = redis_url(settings)
    return connect(url, max_connections, cluster=settings.redis_cluster)


def connect_sync_for(settings: Settings, url: str) -> redis.Redis:
    """A blocking client for the few places that run outside an event loop (the autoscaler's
    signal reader in the pool supervisor), standalone or cluster per ``AIIS_REDIS_CLUSTER``;
    ``RedisCluster`` offers the commands they use with the same signatures."""
    if settings.redis_cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(url, socket_connect_timeout=5))
    return redis.Redis.from_url(url, socket_connect_timeout=5)
