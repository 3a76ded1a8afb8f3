"""Helpers for engine tests: read a namespace's whole log, wait for terminal events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.client import Client
from engine.core import mapper
from engine.core.events import TERMINAL_EVENTS


async def log_events(client: Client) -> list[dict[str, Any]]:
    """Every event of every partition, decoded through the one mapper (validating models)."""
    out: list[dict[str, Any]] = []
    for keys in client.store.partitions:
        for eid, fields in await client.store.redis.xrange(keys.log):
            mapper.decode(eid, fields)  # every script-written event must validate
            out.append(mapper.envelope(eid, fields))
    return out


async def events_of(client: Client, task_id: str) -> list[dict[str, Any]]:
    return [e for e in await log_events(client) if e["task_id"] == task_id]


async def wait_terminal(client: Client, task_ids: list[str], timeout: float = 30) -> None:
    """Wait until every task has a terminal event (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    pending = set(task_ids)
    while pending:
        events = await log_events(client)
        done = {e["task_id"] for e in events if e["type"] in TERMINAL_EVENTS}
        pending -= done
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} tasks without a terminal event: {pending}")
        await asyncio.sleep(0.05)


async def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def terminal_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        if e["type"] in TERMINAL_EVENTS:
            counts[e["task_id"]] = counts.get(e["task_id"], 0) + 1
    return counts
