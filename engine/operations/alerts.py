"""Alert rules over a stream of observations: a pure core (``AlertEngine``) and an optional
webhook notifier.

Rules (DESIGN.md §1 Monitoring): queue backlog over N for T seconds, a provider's error rate
over X % in a sliding window, a tenant's cost per UTC day over its budget, a circuit breaker
opened. Each rule keeps per-subject state and emits ``AlertRaised`` / ``AlertResolved``
exactly once per transition; the raise and clear thresholds differ (hysteresis), so a value
hovering at the threshold does not flap. Time comes from the observations (and ``tick``), never
from a clock, so evaluation is deterministic and replayable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

log = logging.getLogger("aiis.alerts")

Severity = Literal["warning", "critical"]


class AlertRaised(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["AlertRaised"] = "AlertRaised"
    alert_id: str  # "<rule>:<subject>", stable across raise and resolve
    rule: str
    subject: str
    severity: Severity
    message: str
    value: float
    threshold: float
    ts: int  # unix ms


class AlertResolved(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["AlertResolved"] = "AlertResolved"
    alert_id: str
    rule: str
    subject: str
    value: float
    ts: int


AlertRecord = AlertRaised | AlertResolved


# --- observations --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueDepth:
    ts: int
    queue: str  # e.g. "p0:high" or "all"
    depth: int


@dataclass(frozen=True, slots=True)
class ProviderCall:
    ts: int
    provider: str
    ok: bool


@dataclass(frozen=True, slots=True)
class Spend:
    ts: int
    tenant: str
    usd: float


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    ts: int
    provider: str
    state: Literal["opened", "closed", "half_open"]


@dataclass(frozen=True, slots=True)
class Tick:
    ts: int


Observation = QueueDepth | ProviderCall | Spend | BreakerChanged | Tick


# --- rules ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BacklogRule:
    """Raise when a queue stays above ``threshold`` for ``for_s``; clear below ``clear_at``."""

    threshold: int = 10_000
    for_s: float = 60.0
    clear_at: int | None = None  # default: 80 % of the threshold
    name: str = "queue_backlog"


@dataclass(frozen=True, slots=True)
class ErrorRateRule:
    """Raise when a provider's failures exceed ``raise_pct`` of its calls in ``window_s`` (with
    at least ``min_calls``); clear under ``clear_pct``."""

    raise_pct: float = 20.0
    clear_pct: float = 10.0
    window_s: float = 300.0
    min_calls: int = 20
    max_samples: int = 10_000  # per provider: the window is bounded in memory too
    name: str = "provider_error_rate"


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """Raise when a tenant's spend in one UTC day exceeds its budget (USD); clear at the next
    day. Tenants without a budget (and no default) are not watched."""

    default_usd: float | None = None
    tenants: dict[str, float] = field(default_factory=dict)
    name: str = "cost_over_budget"

    def budget(self, tenant: str) -> float | None:
        return self.tenants.get(tenant, self.default_usd)


@dataclass(frozen=True, slots=True)
class BreakerRule:
    """Raise when a provider's circuit opens; clear when it closes."""

    name: str = "circuit_open"


Rule = BacklogRule | ErrorRateRule | BudgetRule | BreakerRule


def utc_day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


@dataclass(slots=True)
class _Backlog:
    above_since: int | None = None


@dataclass(slots=True)
class _Calls:
    samples: deque[tuple[int, bool]] = field(default_factory=deque)
    failures: int = 0


class AlertEngine:
    """Feeds observations through the rules; returns the alert records each one causes."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)
        self.active: dict[str, AlertRaised] = {}
        self._backlog: dict[tuple[str, str], _Backlog] = {}
        self._calls: dict[tuple[str, str], _Calls] = {}
        self._spend: dict[tuple[str, str], tuple[str, float]] = {}  # -> (day, usd)

    def observe(self, obs: Observation) -> list[AlertRecord]:
        out: list[AlertRecord] = []
        for rule in self.rules:
            if isinstance(rule, BacklogRule) and isinstance(obs, QueueDepth | Tick):
                out += self._on_backlog(rule, obs)
            elif isinstance(rule, ErrorRateRule) and isinstance(obs, ProviderCall | Tick):
                out += self._on_calls(rule, obs)
            elif isinstance(rule, BudgetRule) and isinstance(obs, Spend | Tick):
                out += self._on_spend(rule, obs)
            elif isinstance(rule, BreakerRule) and isinstance(obs, BreakerChanged):
                out += self._on_breaker(rule, obs)
        return out

    def observe_all(self, observations: Iterable[Observation]) -> list[AlertRecord]:
        return [r for obs in observations for r in self.observe(obs)]

    # --- transitions ---------------------------------------------------------------------

    def _raise(
        self,
        rule: str,
        subject: str,
        severity: Severity,
        message: str,
        value: float,
        threshold: float,
        ts: int,
    ) -> list[AlertRecord]:
        alert_id = f"{rule}:{subject}"
        if alert_id in self.active:
            return []
        record = AlertRaised(
            alert_id=alert_id,
            rule=rule,
            subject=subject,
            severity=severity,
            message=message,
            value=value,
            threshold=threshold,
            ts=ts,
        )
        self.active[alert_id] = record
        return [record]

    def _resolve(self, rule: str, subject: str, value: float, ts: int) -> list[AlertRecord]:
        alert_id = f"{rule}:{subject}"
        if self.active.pop(alert_id, None) is None:
            return []
        return [AlertResolved(alert_id=alert_id, rule=rule, subject=subject, value=value, ts=ts)]

    def _on_backlog(self, rule: BacklogRule, obs: QueueDepth | Tick) -> list[AlertRecord]:
        clear_at = rule.clear_at if rule.clear_at is not None else int(rule.threshold * 0.8)
        if isinstance(obs, Tick):
            out: list[AlertRecord] = []
            for (name, queue), st in self._backlog.items():
                if name == rule.name and st.above_since is not None:
                    out += self._backlog_due(rule, queue, st, obs.ts, float(rule.threshold))
            return out
        st = self._backlog.setdefault((rule.name, obs.queue), _Backlog())
        if obs.depth > rule.threshold:
            if st.above_since is None:
                st.above_since = obs.ts
            return self._backlog_due(rule, obs.queue, st, obs.ts, float(obs.depth))
        if obs.depth < clear_at:
            st.above_since = None
            return self._resolve(rule.name, obs.queue, obs.depth, obs.ts)
        if f"{rule.name}:{obs.queue}" not in self.active:
            st.above_since = None  # between the thresholds: not yet a backlog
        return []

    def _backlog_due(
        self, rule: BacklogRule, queue: str, st: _Backlog, ts: int, value: float
    ) -> list[AlertRecord]:
        assert st.above_since is not None
        if ts - st.above_since < rule.for_s * 1000:
            return []
        held = (ts - st.above_since) / 1000
        message = f"queue {queue} above {rule.threshold} for {held:.0f} s"
        return self._raise(rule.name, queue, "warning", message, value, rule.threshold, ts)

    def _on_calls(self, rule: ErrorRateRule, obs: ProviderCall | Tick) -> list[AlertRecord]:
        out: list[AlertRecord] = []
        if isinstance(obs, ProviderCall):
            st = self._calls.setdefault((rule.name, obs.provider), _Calls())
            st.samples.append((obs.ts, obs.ok))
            st.failures += 0 if obs.ok else 1
            targets = [(obs.provider, st)]
        else:
            targets = [(p, s) for (n, p), s in self._calls.items() if n == rule.name]
        for provider, st in targets:
            horizon = obs.ts - rule.window_s * 1000
            while st.samples and (st.samples[0][0] < horizon or len(st.samples) > rule.max_samples):
                _, ok = st.samples.popleft()
                st.failures -= 0 if ok else 1
            calls = len(st.samples)
            pct = 100.0 * st.failures / calls if calls else 0.0
            if calls >= rule.min_calls and pct > rule.raise_pct:
                message = (
                    f"{provider}: {pct:.1f} % of {calls} calls failed in {rule.window_s:.0f} s"
                )
                out += self._raise(
                    rule.name, provider, "critical", message, pct, rule.raise_pct, obs.ts
                )
            elif pct < rule.clear_pct:
                out += self._resolve(rule.name, provider, pct, obs.ts)
        return out

    def _on_spend(self, rule: BudgetRule, obs: Spend | Tick) -> list[AlertRecord]:
        day = utc_day(obs.ts)
        if isinstance(obs, Tick):  # a new UTC day clears yesterday's alerts
            out: list[AlertRecord] = []
            for (name, tenant), (d, _) in list(self._spend.items()):
                if name == rule.name and d != day:
                    self._spend[(name, tenant)] = (day, 0.0)
                    out += self._resolve(rule.name, tenant, 0.0, obs.ts)
            return out
        budget = rule.budget(obs.tenant)
        if budget is None:
            return []
        key = (rule.name, obs.tenant)
        last_day, spent = self._spend.get(key, (day, 0.0))
        out = []
        if last_day != day:
            spent = 0.0
            out += self._resolve(rule.name, obs.tenant, 0.0, obs.ts)
        spent += obs.usd
        self._spend[key] = (day, spent)
        if spent > budget:
            message = f"tenant {obs.tenant} spent ${spent:.2f} of ${budget:.2f} on {day}"
            out += self._raise(rule.name, obs.tenant, "critical", message, spent, budget, obs.ts)
        return out

    def _on_breaker(self, rule: BreakerRule, obs: BreakerChanged) -> list[AlertRecord]:
        if obs.state == "opened":
            message = f"circuit of {obs.provider} opened"
            return self._raise(rule.name, obs.provider, "critical", message, 1.0, 1.0, obs.ts)
        if obs.state == "closed":
            return self._resolve(rule.name, obs.provider, 0.0, obs.ts)
        return []


# --- notifier ------------------------------------------------------------------------------


class AlertNotifier:
    """POSTs each alert record as JSON to an operator's webhook, retrying 5xx and timeouts
    with exponential backoff (``max_attempts`` in all). Returns whether it was delivered."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        max_attempts: int = 4,
        base_s: float = 0.5,
        timeout_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.url = url
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.timeout_s = timeout_s
        self.sleep = sleep

    async def send(self, record: AlertRecord) -> bool:
        body = record.model_dump_json().encode()
        headers = {"content-type": "application/json"}
        for attempt in range(1, self.max_attempts + 1):
            try:
                r = await self.client.post(
                    self.url, content=body, headers=headers, timeout=self.timeout_s
                )
                if r.status_code < 300:
                    return True
                if r.status_code < 500 and r.status_code not in (408, 429):
                    log.warning("alert webhook refused %s: HTTP %d", record.alert_id, r.status_code)
                    return False
            except httpx.TransportError as exc:
                log.info("alert webhook attempt %d: %s", attempt, type(exc).__name__)
            if attempt < self.max_attempts:
                await self.sleep(self.base_s * 2 ** (attempt - 1))
        log.warning("alert webhook gave up on %s", record.alert_id)
        return False
