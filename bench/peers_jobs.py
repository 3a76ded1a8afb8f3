"""The no-op job of `bench/peers.py` for each peer, and the app/broker its worker loads.

Every job does one thing: ``INCR bench:done`` — how `bench/peers.py` sees completion, the same
way for every peer. The Redis URL comes from ``BENCH_REDIS_URL``; the in-flight limit of the
asyncio workers (arq) from ``BENCH_CONCURRENCY``. `bench/peers.py` starts the workers with
(cwd = ``bench/``):

    python -m arq peers_jobs.ArqSettings
    python -m taskiq worker peers_jobs:taskiq_broker --workers 1 --max-async-tasks 512
    python -m celery -A peers_jobs:celery_app worker --pool threads --concurrency 8
    python -m dramatiq peers_jobs:dramatiq_broker --processes 1 --threads 8
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
import redis
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from celery import Celery
from dramatiq.brokers.redis import RedisBroker
from taskiq_redis import RedisStreamBroker

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DONE = "bench:done"
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "512"))

_sync: redis.Redis | None = None
_async: aioredis.Redis | None = None


def sync_redis() -> redis.Redis:
    """One client per process (its pool is thread-safe), made on first use."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(URL)
    return _sync


def async_redis() -> aioredis.Redis:
    """One asyncio client per worker process, made on first use inside its event loop."""
    global _async
    if _async is None:
        _async = aioredis.Redis.from_url(URL)
    return _async


# --- arq: the worker's own ArqRedis is in ctx --------------------------------------------------


async def arq_noop(ctx: dict[str, Any]) -> None:
    await ctx["redis"].incr(DONE)


class ArqSettings:
    functions = [arq_noop]  # noqa: RUF012 - arq reads class attributes
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = CONCURRENCY  # default 10; see docs/peers.md


# --- taskiq with taskiq-redis' RedisStreamBroker (defaults; no result backend) ---------------

taskiq_broker = RedisStreamBroker(URL)


@taskiq_broker.task(task_name="noop")
async def taskiq_noop() -> None:
    await async_redis().incr(DONE)


# --- Celery with the Redis broker (defaults; no result backend configured) --------------------

celery_app = Celery("peers_jobs", broker=URL)


@celery_app.task(name="noop")
def celery_noop() -> None:
    sync_redis().incr(DONE)


# --- Dramatiq with the Redis broker (defaults) ------------------------------------------------

dramatiq_broker = RedisBroker(url=URL)
dramatiq.set_broker(dramatiq_broker)


@dramatiq.actor(actor_name="noop")
def dramatiq_noop() -> None:
    sync_redis().incr(DONE)
