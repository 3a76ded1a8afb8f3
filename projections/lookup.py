"""Point reads of the views for the gateways: one entry of one shard, without loading the view.

A reader gets the record as the projection runner last saved it — possibly behind the log by
the runner's lag, and absent for a task it has not seen yet (or has evicted). Callers that must
be current decide what a record can answer on its own (a finished task's record is final:
exactly one terminal event per task, and ``task_state`` ignores anything after it).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core.keys import partition_of
from engine.core.store import translate_errors
from projections.keys import ShardKeys
from projections.views.task_state import PROJECTION as TASK_STATE
from projections.views.task_state import TERMINAL

__all__ = ["TERMINAL", "task_record"]


async def task_record(
    redis: aioredis.Redis, namespace: str, partitions: int, task_id: str
) -> dict[str, Any] | None:
    """The ``task_state`` record of ``task_id`` (status, tenant, kind, priority, attempts,
    timestamps, provider, model, tokens, cost, error …), or ``None`` when the view has none."""
    key = ShardKeys(namespace, partition_of(task_id, partitions), TASK_STATE.name).view
    with translate_errors():
        raw = await redis.hget(key, task_id)
    if raw is None:
        return None
    record: dict[str, Any] = orjson.loads(raw)
    return record
