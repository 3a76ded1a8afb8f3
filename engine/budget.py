"""Hard daily budgets per tenant, in USD.

Spend is accumulated atomically in Redis per tenant and UTC day, in integer micro-dollars
(``INCRBY``: no float drift), from the costs of ``TaskSucceeded`` events. ``add_spend`` takes
the event id and counts each event once, so a re-delivered event cannot double-charge.
``check(tenant)`` before a submit raises ``BudgetExceeded`` once the day's spend has reached
the budget. Keys expire two days after their day, so memory is bounded by tenants x 2 days.

Budget configuration (``{"default_usd": 50, "tenants": {"acme": 200}}``) is validated on every
update; a bad one raises ``BudgetConfigError`` naming the field and the last good one stays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from engine.errors import BudgetConfigError, BudgetExceeded
from engine.store import translate_errors

MICRO = 1_000_000
KEY_TTL_S = 2 * 86_400 + 3600

# KEYS: total, seen. ARGV: micro-dollars, event id ("" = no de-duplication), ttl
_ADD = """
if ARGV[2] ~= '' then
  if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[1]) == 0 then
    return {0, tonumber(redis.call('GET', KEYS[1]) or '0')}
  end
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, total}
"""


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    default_usd: float | None = None  # None: tenants without their own budget are unlimited
    tenants: Mapping[str, float] = field(default_factory=dict)

    def budget(self, tenant: str) -> float | None:
        return self.tenants.get(tenant, self.default_usd)


def _usd(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BudgetConfigError(
            f"budget {where}: expected a number of USD, got {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0:
        raise BudgetConfigError(f"budget {where}: must be a finite amount >= 0")
    return float(value)


def parse_config(raw: Mapping[str, object]) -> BudgetConfig:
    """A ``BudgetConfig`` from plain data; ``BudgetConfigError`` naming the bad field."""
    unknown = set(raw) - {"default_usd", "tenants"}
    if unknown:
        raise BudgetConfigError(f"budget: unknown fields {sorted(unknown)}")
    default = raw.get("default_usd")
    tenants = raw.get("tenants", {})
    if not isinstance(tenants, Mapping):
        raise BudgetConfigError("budget tenants: expected an object of tenant -> USD")
    return BudgetConfig(
        default_usd=None if default is None else _usd("default_usd", default),
        tenants={str(t): _usd(f"tenants.{t}", v) for t, v in tenants.items()},
    )


def day_of(ts: datetime | None = None) -> str:
    return (ts or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d")


def _resets_at(day: str) -> str:
    start = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
    return (start + timedelta(days=1)).isoformat()


def spend_keys(namespace: str, tenant: str, day: str) -> tuple[str, str]:
    """(total, seen events) of one tenant and day; one hash tag, so one Lua call on Cluster."""
    tag = f"{namespace}:{{budget:{tenant}:{day}}}"
    return f"{tag}:spent", f"{tag}:seen"


class Budgets:
    """The budget gate and spend ledger."""

    def __init__(
        self, redis: aioredis.Redis, namespace: str, config: BudgetConfig | None = None
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.config = config or BudgetConfig()
        self._add = redis.register_script(_ADD)

    def update(self, raw: Mapping[str, object]) -> BudgetConfig:
        """Swap in a new configuration; on error the last good one stays and the error is
        raised."""
        self.config = parse_config(raw)
        return self.config

    async def add_spend(
        self, tenant: str, usd: float, day: str | None = None, event_id: str | None = None
    ) -> float:
        """Add ``usd`` to the tenant's spend of ``day`` (today, UTC); counted once per
        ``event_id``. Returns the day's total in USD."""
        if not math.isfinite(usd) or usd < 0:
            raise ValueError("spend must be a finite amount >= 0")
        day = day or day_of()
        total_key, seen_key = spend_keys(self.namespace, tenant, day)
        micro = round(usd * MICRO)
        with translate_errors():
            _, total = await self._add(
                keys=[total_key, seen_key], args=[micro, event_id or "", KEY_TTL_S]
            )
        return int(total) / MICRO

    async def spent(self, tenant: str, day: str | None = None) -> float:
        total_key, _ = spend_keys(self.namespace, tenant, day or day_of())
        with translate_errors():
            raw = await self.redis.get(total_key)
        return int(raw or 0) / MICRO

    async def check(self, tenant: str, day: str | None = None) -> None:
        """Raise ``BudgetExceeded`` when the tenant's spend today has reached its budget."""
        budget = self.config.budget(tenant)
        if budget is None:
            return
        day = day or day_of()
        spent = await self.spent(tenant, day)
        if spent >= budget:
            raise BudgetExceeded(tenant, spent, budget, _resets_at(day))
