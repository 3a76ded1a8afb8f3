"""The typed door to the projections' Lua scripts (``projections/lua``): for each script one
function that builds its ``(keys, args)`` from typed values and one that types its reply, so an
argument's position exists in exactly one place. Keys come from ``projections.keys`` and
``engine.core.keys``.

- view_save.lua: per view shard KEYS (view, meta); ARGV n, then per shard ``ShardSave`` (the
  expected ``"gen saved"``, applied, pending, last ts, #set, #deleted, set pairs, deleted keys)
  → the 1-based indices of stale shards (nothing written when any).
- view_swap.lua: per shard KEYS (view, meta, rebuilt view, rebuilt meta); no ARGV.
- keep.lua: KEYS state hash, kept hash; ARGV per entry (task, entry id, 2n, n field/value
  pairs) → entries kept.
- archive_record.lua: KEYS archive hash, log; ARGV archived_to, events, segments, MINID →
  entries trimmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

ScriptCall = tuple[list[str], list[Any]]


@dataclass(frozen=True, slots=True)
class ShardSave:
    """One view shard's changes, checked against what the writer last saw of it."""

    view: str
    meta: str
    expected: str  # "<gen> <saved checkpoint>" as the meta hash must still hold it
    applied: str
    pending: int
    last_ts: int
    present: Sequence[tuple[str, bytes]]  # key, JSON record
    gone: Sequence[str]


def build_view_save(shards: Sequence[ShardSave]) -> ScriptCall:
    keys: list[str] = []
    argv: list[Any] = [len(shards)]
    for s in shards:
        keys += [s.view, s.meta]
        argv += [s.expected, s.applied, s.pending, s.last_ts, len(s.present), len(s.gone)]
        argv += chain.from_iterable(s.present)
        argv += s.gone
    return keys, argv


def parse_view_save(raw: Sequence[Any]) -> list[int]:
    """0-based indices of the stale shards."""
    return sorted(int(i) - 1 for i in raw)


def build_view_swap(shards: Iterable[tuple[str, str, str, str]]) -> ScriptCall:
    """Per shard (view, meta, rebuilt view, rebuilt meta)."""
    return list(chain.from_iterable(shards)), []


def build_keep(
    state: str, kept: str, page: Sequence[tuple[str, Mapping[str, str]]]
) -> ScriptCall | None:
    """Entries of ``page`` that name a task; None when none does (nothing to run)."""
    argv: list[Any] = []
    for eid, fields in page:
        task = fields.get("task")
        if not task:
            continue
        argv += [task, eid, 2 * len(fields)]
        argv += chain.from_iterable(fields.items())
    return ([state, kept], argv) if argv else None


def build_archive_record(
    archive: str, log: str, archived_to: str, events: int, segments: int, trim_below: str
) -> ScriptCall:
    return [archive, log], [archived_to, events, segments, trim_below]


def parse_count(raw: Any) -> int:
    return int(raw)
