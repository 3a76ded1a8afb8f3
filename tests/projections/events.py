"""Pure helpers: envelopes and raw log entries without Redis, for view and property tests."""

from __future__ import annotations

from typing import Any

from engine.core.mapper import entry_fields
from projections.fold import Position, RawEntry, apply_batch
from projections.view import Projection, Shard, ViewConfig


def env(
    etype: str,
    task: str,
    data: dict[str, Any],
    ts: int = 1_700_000_000_000,
    eid: str = "1-0",
    tenant: str = "acme",
) -> dict[str, Any]:
    return {
        "id": eid,
        "type": etype,
        "task_id": task,
        "tenant": tenant,
        "ts": ts,
        "v": 1,
        "data": data,
    }


def entries(
    events: list[tuple[str, str, dict[str, Any], int]], tenant: str = "acme"
) -> list[RawEntry]:
    """Raw log entries with ids 1-0, 2-0, … for ``(type, task, data, ts)`` tuples."""
    return [
        (
            f"{i + 1}-0",
            {
                k: v.decode() if isinstance(v, bytes) else v
                for k, v in entry_fields(t, task, tenant, ts, data).items()
            },
        )
        for i, (t, task, data, ts) in enumerate(events)
    ]


def raw_entries(
    events: list[tuple[str, str, dict[str, Any], int]], tenant: str = "acme"
) -> list[RawEntry]:
    """The same entries as ``entries``, in the shape Redis sends them: ``[id, [k, v, …]]``."""
    return [
        [
            f"{i + 1}-0".encode(),
            [
                x.encode() if isinstance(x, str) else x
                for kv in entry_fields(t, task, tenant, ts, data).items()
                for x in kv
            ],
        ]
        for i, (t, task, data, ts) in enumerate(events)
    ]


def fold(projection: Projection, config: ViewConfig, raw: list[RawEntry]) -> Shard:
    pos = Position(projection, projection.new(config))
    apply_batch(0, [pos], raw)
    return pos.shard
