"""Hard daily budgets per tenant, in USD.

A budgeted tenant's task **reserves** an estimate of its cost at submit (``reserve``: input
tokens and ``max_tokens`` at the model's price, or the dearest priced model when none is
pinned) and **settles** at its terminal event (``settle``, from ``aiis ops``): the reservation
is released and the real cost added to the day's spend, exactly once per task, in one Lua step
(lua/budget_reserve.lua, lua/budget_settle.lua). A reservation is granted while spend +
reservations < budget, so tasks submitted together overshoot by at most one task's estimate
(checking spend alone let ten concurrent tasks spend 23x a budget). A task on a model without
a price is refused for a budgeted tenant, and a success whose cost is unknown is charged its
reservation: never free. Amounts are integer micro-dollars (``INCRBY``: no float drift); keys
expire two days after their day, so memory is bounded by tenants x 2 days.

Budget configuration (``{"default_usd": 50, "tenants": {"acme": 200}}``) is validated on every
update; a bad one raises ``BudgetConfigError`` naming the field and the last good one stays.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache

import redis.asyncio as aioredis

from engine.admission.script_args import (
    build_budget_reserve,
    build_budget_settle,
    parse_budget_reserve,
    parse_budget_settle,
)
from engine.core.keys import budget_keys
from engine.core.scripts import lua_source
from engine.core.store import translate_errors
from engine.errors import BudgetConfigError, BudgetExceeded
from providers.pricing import PER_MILLION, PriceTable

MICRO = 1_000_000
KEY_TTL_S = 2 * 86_400 + 3600
CHARS_PER_TOKEN = 3  # a generous input-token estimate (English runs ~4, Japanese ~1-2)
TOKENS_PER_MESSAGE = 8


@cache
def prices() -> PriceTable:
    return PriceTable.load()


def estimate_usd(texts: list[str], model: str | None, max_tokens: int) -> float | None:
    """An upper-ish estimate of a call's cost: the input (``CHARS_PER_TOKEN``) and
    ``max_tokens`` of output at ``model``'s price, or at the dearest priced model when none is
    pinned. ``None``: ``model`` has no price."""
    table = prices()
    if model is not None:
        price = table.lookup(model)
        if price is None:
            return None
        inp, out, per = price.input, price.output, price.per_request
    else:
        inp, out, per = table.max_price()
    tokens_in = sum(len(t.encode()) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE for t in texts)
    return (tokens_in * inp + max_tokens * out) / PER_MILLION + per


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
    """(total, settled tasks) of one tenant and day."""
    _, spent, seen, _ = budget_keys(namespace, tenant, day)
    return spent, seen


class Budgets:
    """The budget gate and spend ledger."""

    def __init__(
        self, redis: aioredis.Redis, namespace: str, config: BudgetConfig | None = None
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.config = config or BudgetConfig()
        self._reserve = redis.register_script(
            lua_source("budget_reserve", package="engine.admission")
        )
        self._settle = redis.register_script(
            lua_source("budget_settle", package="engine.admission")
        )

    def update(self, raw: Mapping[str, object]) -> BudgetConfig:
        """Swap in a new configuration; on error the last good one stays and the error is
        raised."""
        self.config = parse_config(raw)
        return self.config

    async def reserve(
        self, tenant: str, task_id: str, estimate_usd: float, day: str | None = None
    ) -> None:
        """Hold ``estimate_usd`` of the tenant's budget for ``task_id`` until it settles;
        ``BudgetExceeded`` when spend + holds have reached the budget (nothing is held then)."""
        budget = self.config.budget(tenant)
        if budget is None:
            return
        day = day or day_of()
        holds, spent, _, held = budget_keys(self.namespace, tenant, day)
        keys, args = build_budget_reserve(
            (holds, spent, held),
            round(budget * MICRO),
            max(0, round(estimate_usd * MICRO)),
            task_id,
            KEY_TTL_S,
        )
        with translate_errors():
            reply = parse_budget_reserve(await self._reserve(keys=keys, args=args))
        if not reply.ok:
            raise BudgetExceeded(
                tenant,
                reply.spent_micro / MICRO,
                budget,
                _resets_at(day),
                reply.held_micro / MICRO,
            )

    async def release(self, tenant: str, task_id: str) -> None:
        """Give back ``task_id``'s reservation without charging anything (it was not queued)."""
        holds, spent, seen, _ = budget_keys(self.namespace, tenant, day_of())
        keys, args = build_budget_settle((holds, spent, seen), task_id, 0, KEY_TTL_S, charge=False)
        with translate_errors():
            await self._settle(keys=keys, args=args)

    async def settle(
        self, tenant: str, task_id: str, usd: float | None, day: str | None = None
    ) -> float:
        """At ``task_id``'s terminal event (of ``day``): release its reservation and add
        ``usd`` (``None``: unknown, charge the reservation) to the day's spend, once per task.
        Returns the day's total in USD."""
        if usd is not None and (not math.isfinite(usd) or usd < 0):
            raise ValueError("spend must be a finite amount >= 0")
        day = day or day_of()
        holds, spent, seen, _ = budget_keys(self.namespace, tenant, day)
        micro = -1 if usd is None else round(usd * MICRO)
        keys, args = build_budget_settle(
            (holds, spent, seen), task_id, micro, KEY_TTL_S, charge=True
        )
        with translate_errors():
            reply = parse_budget_settle(await self._settle(keys=keys, args=args))
        return reply.spent_micro / MICRO

    async def add_spend(
        self, tenant: str, usd: float, day: str | None = None, event_id: str | None = None
    ) -> float:
        """Add ``usd`` to the tenant's spend of ``day`` (today, UTC); counted once per
        ``event_id`` (see ``settle``). Returns the day's total in USD."""
        if not math.isfinite(usd) or usd < 0:
            raise ValueError("spend must be a finite amount >= 0")
        if event_id is None:
            event_id = f"anon:{uuid.uuid4().hex}"
        return await self.settle(tenant, event_id, usd, day)

    async def held(self, tenant: str, day: str | None = None) -> float:
        """What tasks in flight hold of the tenant's budget of ``day``."""
        *_, held_key = budget_keys(self.namespace, tenant, day or day_of())
        with translate_errors():
            raw = await self.redis.get(held_key)
        return int(raw or 0) / MICRO

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
            raise BudgetExceeded(tenant, spent, budget, _resets_at(day), await self.held(tenant))
