"""Dead letters: list them, retry one (as a new task: the dead-lettered one keeps its single
terminal event), purge them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine.client import Client
from engine.core.events import StateCode
from engine.core.keys import partition_of
from engine.core.store import translate_errors
from engine.core.task import TaskSpec
from engine.errors import InvalidTask, TaskNotFound

SCAN_PAGE = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    partition: int
    task_id: str
    tenant: str
    reason: str
    attempt: int
    priority: str
    error: str
    ts: int

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def _dead_letter(partition: int, eid: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
    return DeadLetter(
        entry_id=eid.decode(),
        partition=partition,
        task_id=f.get("task", ""),
        tenant=f.get("tenant", ""),
        reason=f.get("reason", ""),
        attempt=int(f.get("attempt") or 0),
        priority=f.get("priority", ""),
        error=f.get("error", ""),
        ts=int(f.get("ts") or 0),
    )


async def list_dead(client: Client, limit: int = 50) -> list[DeadLetter]:
    """The newest ``limit`` dead letters of every partition, newest first."""
    out: list[DeadLetter] = []
    for keys in client.store.partitions:
        rows = await client.store.entries(keys.dlq, count=limit, reverse=True)
        out.extend(_dead_letter(keys.partition, eid, fields) for eid, fields in rows)
    out.sort(key=lambda d: d.ts, reverse=True)
    return out[:limit]


async def retry(client: Client, task_id: str) -> str:
    """Submit the dead-lettered task again as a new task; returns the new task id."""
    partition = partition_of(task_id, client.settings.partitions)
    found = await client.store.state(partition, task_id)
    if found is None:
        raise TaskNotFound(task_id)
    word, raw_record = found
    if raw_record is None or word.code != StateCode.DEAD_LETTERED:
        raise InvalidTask("task_id", f"task {task_id} is not dead-lettered")
    keys = client.store.keys(partition)
    entries = await _dlq_entries(client, keys.dlq, task_id)
    if not entries:
        raise InvalidTask(
            "task_id", f"task {task_id} is not in the dead-letter queue (retried or purged)"
        )
    record = orjson.loads(raw_record)
    spec = TaskSpec.model_validate(
        {
            "kind": record["kind"],
            "input": record["input"],
            "priority": record["priority"],
            "tenant": record["tenant"],
            "params": record.get("params") or {},
            # two operators retrying at once still make one new task
            "idempotency_key": f"dlq-retry:{task_id}",
        },
        strict=False,
    )
    new_id = await client.submit_spec(spec, retry_of=task_id)
    with translate_errors():
        await client.store.redis.xdel(keys.dlq, *entries)
    return new_id


async def _dlq_entries(client: Client, dlq_key: str, task_id: str) -> list[bytes]:
    found: list[bytes] = []
    cursor = "-"
    while True:
        rows = await client.store.entries(dlq_key, cursor, "+", count=SCAN_PAGE)
        found += [eid for eid, f in rows if f.get(b"task") == task_id.encode()]
        if len(rows) < SCAN_PAGE:
            return found
        cursor = "(" + rows[-1][0].decode()


async def purge(client: Client) -> int:
    """Delete every dead-letter entry; returns how many there were."""
    total = 0
    with translate_errors():
        for keys in client.store.partitions:
            total += await client.store.redis.xlen(keys.dlq)
            await client.store.redis.delete(keys.dlq)
    return total
