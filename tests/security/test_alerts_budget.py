"""Alert rules with hysteresis, the alert notifier, and daily budgets (engine/operations/alerts.py,
engine/admission/budget.py)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from engine.admission.budget import BudgetConfig, Budgets, parse_config
from engine.errors import BudgetConfigError, BudgetExceeded
from engine.operations.alerts import (
    AlertEngine,
    AlertNotifier,
    AlertRaised,
    AlertResolved,
    BacklogRule,
    BreakerChanged,
    BreakerRule,
    BudgetRule,
    ErrorRateRule,
    ProviderCall,
    QueueDepth,
    Spend,
    Tick,
)

DAY_MS = 86_400_000
T0 = 1_718_000_000_000 - 1_718_000_000_000 % DAY_MS  # midnight UTC


def kinds(records: list[AlertRaised | AlertResolved]) -> list[str]:
    return [f"{r.type}:{r.alert_id}" for r in records]


def test_backlog_needs_duration_and_clears_with_hysteresis() -> None:
    """Backlog raises only after T seconds above N, once, and clears only below the clear mark."""
    eng = AlertEngine([BacklogRule(threshold=100, for_s=10, clear_at=50)])
    assert eng.observe(QueueDepth(T0, "all", 150)) == []
    assert eng.observe(QueueDepth(T0 + 5_000, "all", 150)) == []
    raised = eng.observe(QueueDepth(T0 + 10_000, "all", 160))
    assert kinds(raised) == ["AlertRaised:queue_backlog:all"]
    assert eng.observe(QueueDepth(T0 + 11_000, "all", 170)) == []  # once per transition
    assert eng.observe(QueueDepth(T0 + 12_000, "all", 80)) == []  # between marks: still active
    assert eng.observe(QueueDepth(T0 + 13_000, "all", 101)) == []
    assert kinds(eng.observe(QueueDepth(T0 + 14_000, "all", 40))) == [
        "AlertResolved:queue_backlog:all"
    ]
    assert eng.observe(QueueDepth(T0 + 15_000, "all", 30)) == []


def test_backlog_dip_resets_the_timer_and_tick_raises() -> None:
    """A dip below the threshold restarts the T-second clock; a Tick can complete it."""
    eng = AlertEngine([BacklogRule(threshold=100, for_s=10, clear_at=50)])
    eng.observe(QueueDepth(T0, "q", 150))
    eng.observe(QueueDepth(T0 + 6_000, "q", 90))
    eng.observe(QueueDepth(T0 + 7_000, "q", 150))
    assert eng.observe(Tick(T0 + 12_000)) == []
    assert kinds(eng.observe(Tick(T0 + 17_000))) == ["AlertRaised:queue_backlog:q"]


def test_error_rate_window_and_hysteresis() -> None:
    """Error rate raises over X % with enough calls, stays until under the clear %, once each."""
    rule = ErrorRateRule(raise_pct=20, clear_pct=10, window_s=60, min_calls=10)
    eng = AlertEngine([rule])
    out = eng.observe_all(ProviderCall(T0 + i, "gemini", ok=i % 4 != 0) for i in range(10))
    assert kinds(out) == ["AlertRaised:provider_error_rate:gemini"]  # 3/10 = 30 %
    assert isinstance(out[0], AlertRaised) and out[0].severity == "critical"
    out = eng.observe_all(ProviderCall(T0 + 100 + i, "gemini", ok=True) for i in range(6))
    assert out == []  # 3/16 = 18.75 %: under raise, over clear
    out = eng.observe_all(ProviderCall(T0 + 200 + i, "gemini", ok=True) for i in range(20))
    assert kinds(out) == ["AlertResolved:provider_error_rate:gemini"]
    # old failures leave the window
    eng.observe_all(ProviderCall(T0 + 1_000 + i, "openai", ok=False) for i in range(10))
    assert "provider_error_rate:openai" in eng.active
    out = eng.observe(Tick(T0 + 120_000))
    assert kinds(out) == ["AlertResolved:provider_error_rate:openai"]


def test_few_calls_do_not_raise() -> None:
    """Below min_calls, even 100 % failures raise nothing."""
    eng = AlertEngine([ErrorRateRule(min_calls=20)])
    assert eng.observe_all(ProviderCall(T0 + i, "x", ok=False) for i in range(19)) == []


def test_budget_rule_per_tenant_and_day() -> None:
    """Spend over the tenant's budget raises once; the next UTC day resolves it."""
    eng = AlertEngine([BudgetRule(default_usd=1.0, tenants={"big": 10.0})])
    assert eng.observe(Spend(T0, "acme", 0.6)) == []
    assert kinds(eng.observe(Spend(T0 + 1, "acme", 0.6))) == ["AlertRaised:cost_over_budget:acme"]
    assert eng.observe(Spend(T0 + 2, "acme", 0.6)) == []
    assert eng.observe(Spend(T0 + 3, "big", 5.0)) == []
    assert kinds(eng.observe(Tick(T0 + DAY_MS))) == ["AlertResolved:cost_over_budget:acme"]


def test_breaker_rule() -> None:
    """An opened circuit raises, a repeat does not, closing resolves."""
    eng = AlertEngine([BreakerRule()])
    assert kinds(eng.observe(BreakerChanged(T0, "gemini", "opened"))) == [
        "AlertRaised:circuit_open:gemini"
    ]
    assert eng.observe(BreakerChanged(T0 + 1, "gemini", "opened")) == []
    assert eng.observe(BreakerChanged(T0 + 2, "gemini", "half_open")) == []
    assert kinds(eng.observe(BreakerChanged(T0 + 3, "gemini", "closed"))) == [
        "AlertResolved:circuit_open:gemini"
    ]


def test_alert_records_are_strict() -> None:
    """Alert records are frozen and refuse unknown fields."""
    rec = AlertResolved(alert_id="a:b", rule="a", subject="b", value=0, ts=1)
    with pytest.raises(ValidationError):
        AlertResolved(alert_id="a:b", rule="a", subject="b", value=0, ts=1, extra=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        rec.value = 2  # type: ignore[misc]


async def test_notifier_retries_5xx_then_delivers() -> None:
    """The alert webhook gets the record as JSON, after a 500 is retried."""
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(500 if len(bodies) == 1 else 200)

    async def no_sleep(s: float) -> None:
        await asyncio.sleep(0)

    record = AlertResolved(alert_id="a:b", rule="a", subject="b", value=0, ts=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        assert await AlertNotifier(client, "https://ops.example/hook", sleep=no_sleep).send(record)
    assert len(bodies) == 2 and orjson.loads(bodies[1])["alert_id"] == "a:b"


# --- budgets ----------------------------------------------------------------------------


def test_budget_config_validation() -> None:
    """Wrong types and negative amounts are errors naming the field."""
    assert parse_config({"default_usd": 5, "tenants": {"a": 1.5}}).budget("a") == 1.5
    with pytest.raises(BudgetConfigError, match=r"tenants\.acme"):
        parse_config({"tenants": {"acme": "100"}})
    with pytest.raises(BudgetConfigError, match="default_usd"):
        parse_config({"default_usd": -1})
    with pytest.raises(BudgetConfigError, match="default_usd"):
        parse_config({"default_usd": True})
    with pytest.raises(BudgetConfigError, match="unknown"):
        parse_config({"daily": 5})


async def test_bad_update_keeps_last_good(redis: aioredis.Redis, namespace: str) -> None:
    """A bad budget update raises and the previous configuration stays in force."""
    budgets = Budgets(redis, namespace, BudgetConfig(tenants={"acme": 1.0}))
    with pytest.raises(BudgetConfigError):
        budgets.update({"tenants": {"acme": "lots"}})
    assert budgets.config.budget("acme") == 1.0


async def test_budget_blocks_once_spent(redis: aioredis.Redis, namespace: str) -> None:
    """check passes under budget and raises BudgetExceeded once the day's spend reaches it."""
    budgets = Budgets(redis, namespace, parse_config({"tenants": {"acme": 0.30}}))
    day = "20240601"
    await budgets.check("acme", day)
    assert await budgets.add_spend("acme", 0.1, day, "e1") == pytest.approx(0.1)
    assert await budgets.add_spend("acme", 0.1, day, "e2") == pytest.approx(0.2)
    await budgets.check("acme", day)
    await budgets.add_spend("acme", 0.1, day, "e3")
    with pytest.raises(BudgetExceeded) as info:
        await budgets.check("acme", day)
    assert info.value.resets_at.startswith("2024-06-02T00:00:00")
    assert "acme" in str(info.value)
    await budgets.check("acme", "20240602")  # a new day
    await budgets.check("other", day)  # no budget: unlimited


async def test_spend_counts_each_event_once_and_concurrently(
    redis: aioredis.Redis, namespace: str
) -> None:
    """Re-delivered events are not charged twice; concurrent adds lose nothing."""
    budgets = Budgets(redis, namespace)
    day = "20240601"
    await asyncio.gather(*(budgets.add_spend("t", 0.001, day, f"e{i}") for i in range(50)))
    await asyncio.gather(*(budgets.add_spend("t", 0.001, day, f"e{i}") for i in range(50)))
    assert await budgets.spent("t", day) == pytest.approx(0.05)
    ttl = await redis.ttl(f"{namespace}:{{budget:t}}:{day}:spent")
    assert 0 < ttl <= 2 * 86_400 + 3600
