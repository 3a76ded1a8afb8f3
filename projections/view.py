"""What every view is: a pure fold over events, one shard per partition.

A shard is a mapping ``entry key -> record`` where records are plain JSON values (dicts with
str keys, lists, str, int, float, bool, None), so the in-memory shard and the one read back from
Redis are equal. ``evolve(view, event) -> view`` takes ownership of ``view`` (it updates it in
place for speed and returns it), reads nothing but its arguments — no clock, no I/O — and lists
the keys it wrote in ``view.changed`` so the runner writes only those. Keys starting with ``~``
are a view's private bookkeeping, skipped by readers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from projections.settings import ProjectionSettings

Envelope = dict[str, Any]  # engine.core.mapper.envelope(): id, type, task_id, tenant, ts, v, data
Record = Any  # a JSON value


@dataclass(frozen=True, slots=True)
class ViewConfig:
    """The parameters a view's semantics depend on (part of the view: change → replay)."""

    partitions: int = 1
    task_retention_ms: int = 86_400_000
    task_max: int = 100_000  # across all partitions
    cost_days: int = 400
    health_bucket_ms: int = 60_000
    health_buckets: int = 15
    throughput_minutes: int = 60

    @classmethod
    def from_settings(
        cls, partitions: int, task_retention_s: float, proj: ProjectionSettings
    ) -> ViewConfig:
        return cls(
            partitions=partitions,
            task_retention_ms=int(task_retention_s * 1000),
            task_max=proj.task_max,
            cost_days=proj.cost_days,
            health_bucket_ms=proj.health_bucket_s * 1000,
            health_buckets=proj.health_buckets,
            throughput_minutes=proj.throughput_minutes,
        )

    @property
    def task_max_per_shard(self) -> int:
        return max(100, self.task_max // self.partitions)


class Shard:
    """One partition's part of a view. Subclasses add indexes derived from ``entries``."""

    __slots__ = ("changed", "config", "entries")

    def __init__(self, config: ViewConfig, entries: dict[str, Record] | None = None) -> None:
        self.config = config
        self.entries: dict[str, Record] = entries if entries is not None else {}
        self.changed: set[str] = set()

    def put(self, key: str, record: Record) -> None:
        self.entries[key] = record
        self.changed.add(key)

    def drop(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.changed.add(key)


Evolve = Callable[[Any, Envelope], Any]


@dataclass(frozen=True, slots=True)
class Projection:
    """A named view: how to start one, rebuild its indexes from stored entries, and fold."""

    name: str
    description: str
    load: Callable[[ViewConfig, dict[str, Record]], Shard]  # entries -> shard (with indexes)
    evolve: Evolve

    def new(self, config: ViewConfig) -> Shard:
        return self.load(config, {})


def public(entries: Mapping[str, Record]) -> dict[str, Record]:
    """The entries a reader sees (without ``~`` bookkeeping)."""
    return {k: v for k, v in entries.items() if not k.startswith("~")}
