"""The typed door to admission's Lua scripts (``engine/admission/lua``): for each script one
function that builds its ``(keys, args)`` from typed values and one that types its reply, so an
argument's position exists in exactly one place. Every key is built by ``engine.core.keys`` and
passed in; no script derives a key from another.

- budget_reserve.lua: KEYS holds, spent, held of the day; ARGV budget, estimate, task, ttl →
  ``BudgetReply(ok, spent, held)``. The hold records the name of the day's ``held`` key, so the
  settle of a later day gives it back without rebuilding the name.
- budget_settle.lua: KEYS holds, spent, seen of the event's day; ARGV task, cost, ttl, settle →
  ``SettleReply(applied, spent)``.
- cache_get.lua / cache_put.lua: KEYS entry, shard LRU; the LRU's members are entry keys.
- template_register.lua: KEYS the template's hash; ARGV the body → the new version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

ScriptCall = tuple[list[str], list[Any]]


class BudgetReply(NamedTuple):
    ok: bool  # reserved (or already reserved by this task)
    spent_micro: int
    held_micro: int


def build_budget_reserve(
    keys: tuple[str, str, str], budget_micro: int, estimate_micro: int, task_id: str, ttl_s: int
) -> ScriptCall:
    """``keys``: (holds, spent, held) of the day, from ``engine.core.keys.budget_keys``."""
    holds, spent, held = keys
    return [holds, spent, held], [budget_micro, estimate_micro, task_id, ttl_s]


def parse_budget_reserve(raw: Sequence[Any]) -> BudgetReply:
    return BudgetReply(bool(int(raw[0])), int(raw[1]), int(raw[2]))


class SettleReply(NamedTuple):
    applied: bool  # False: this task (or event) was settled before
    spent_micro: int  # the day's spend after it


def build_budget_settle(
    keys: tuple[str, str, str], task_id: str, cost_micro: int, ttl_s: int, *, charge: bool
) -> ScriptCall:
    """``keys``: (holds, spent, seen) of the event's day. ``cost_micro`` −1: unknown, charge
    the reservation; ``charge=False`` only releases the reservation."""
    holds, spent, seen = keys
    return [holds, spent, seen], [task_id, cost_micro, ttl_s, "1" if charge else "0"]


def parse_budget_settle(raw: Sequence[Any]) -> SettleReply:
    return SettleReply(bool(int(raw[0])), int(raw[1]))


def build_cache_get(entry: str, lru: str, now_ms: int) -> ScriptCall:
    return [entry, lru], [now_ms]


def build_cache_put(
    entry: str, lru: str, value: bytes, ttl_ms: int, now_ms: int, per_shard: int
) -> ScriptCall:
    return [entry, lru], [value, ttl_ms, now_ms, per_shard]


def parse_cache_put(raw: Any) -> int:
    """How many entries were evicted to make room."""
    return max(0, int(raw))


def build_template_register(key: str, body: str) -> ScriptCall:
    return [key], [body]


def parse_template_register(raw: Any) -> int:
    return int(raw)
