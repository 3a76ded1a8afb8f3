"""Live configuration: the PII policy, the daily budgets and the deployment's limits.

All of them are the deployment's, not the process's (DESIGN.md §3 invariant 9): the value
stored in ``<ns>:config`` is used by every producer. A component whose environment sets one
explicitly (``AIIS_PII_POLICY``, ``AIIS_BUDGETS`` — a bad one stops the component at start,
naming the variable — or one of the ``LIMITS``: queue depth, prompt, params and request sizes)
seeds it there on its first read (``HSETNX``: the first writer wins; a later disagreeing
environment is logged, for limits, and ignored); a value stored nowhere is the built-in default,
whatever this process's environment says.

Everything can be replaced while everything runs with ``aiis config set NAME VALUE``, which
validates it before writing it to ``<ns>:config``. Components re-read that hash at most every
``AIIS_CONFIG_REFRESH_S``, in the background; a document that fails validation there (written
around the CLI) is logged and the last good one stays in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError

from engine.admission.budget import BudgetConfig, parse_config
from engine.admission.redaction import Mode, PiiPolicies, TenantPolicy
from engine.core.keys import config_key, meta_key
from engine.core.store import seed_limits, translate_errors
from engine.errors import BudgetConfigError, ConfigError, EngineError
from engine.settings import DEPLOYMENT_LIMITS, Settings

log = logging.getLogger("aiis.policy")


def _json(name: str, text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not JSON ({exc})") from None


def parse_pii(text: str) -> PiiPolicies:
    """``redact`` / ``block`` / ``off``, or ``{"default": …, "tenants": {…}}``; empty: redact."""
    text = text.strip()
    if not text:
        return PiiPolicies()
    if text in {m.value for m in Mode}:
        return PiiPolicies(default=TenantPolicy(Mode(text)))
    raw = _json("pii_policy", text)
    if isinstance(raw, str):  # '"block"', as JSON: the same as bare block
        if raw in {m.value for m in Mode}:
            return PiiPolicies(default=TenantPolicy(Mode(raw)))
        raise ConfigError(f"pii_policy: mode must be one of {[m.value for m in Mode]}")
    if not isinstance(raw, dict):
        raise ConfigError("pii_policy: expected a mode or an object {default, tenants}")
    try:
        return PiiPolicies.parse(raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_budgets(text: str) -> BudgetConfig:
    """``{"default_usd": 50, "tenants": {"acme": 200}}``; empty: no budgets."""
    if not text.strip():
        return BudgetConfig()
    raw = _json("budgets", text)
    if not isinstance(raw, dict):
        raise ConfigError("budgets: expected an object {default_usd, tenants}")
    try:
        return parse_config(raw)
    except BudgetConfigError as exc:
        raise ConfigError(str(exc)) from None


LIMITS = DEPLOYMENT_LIMITS


@dataclass(frozen=True, slots=True)
class DeploymentLimits:
    """The deployment's limits, identical for every producer."""

    queue_max_depth: int
    max_prompt_chars: int
    max_params_bytes: int
    max_request_bytes: int

    @classmethod
    def defaults(cls) -> DeploymentLimits:
        return cls(**{name: Settings.model_fields[name].default for name in LIMITS})


def _limit_parser(name: str) -> Callable[[str], int]:
    field = Settings.model_fields[name]
    adapter: TypeAdapter[int] = TypeAdapter(Annotated[int, *field.metadata])

    def parse(text: str) -> int:
        try:
            return adapter.validate_python(orjson.loads(text.strip() or "null"), strict=True)
        except orjson.JSONDecodeError:
            why = f"expected a whole number, got {text.strip()[:40]!r}"
        except ValidationError as exc:  # one line, for the CLI and the audit entry's reason
            error = exc.errors()[0]
            bound = (error.get("ctx") or {}).get("ge", (error.get("ctx") or {}).get("le"))
            why = {
                "greater_than_equal": f"must be at least {bound}",
                "less_than_equal": f"must be at most {bound}",
            }.get(error["type"], f"expected a whole number, got {text.strip()[:40]!r}")
        raise ConfigError(f"{name}: {why}")

    return parse


PARSERS: dict[str, Callable[[str], Any]] = {
    "pii_policy": parse_pii,
    "budgets": parse_budgets,
    **{name: _limit_parser(name) for name in LIMITS},
}


CONFIG_NAMES = tuple(PARSERS)

_STORED = "stored in Redis: aiis config set, or seeded by the first component"


async def effective_config(redis: aioredis.Redis, settings: Settings) -> list[tuple[str, str, str]]:
    """``(name, effective value, where it comes from)`` of every configuration value, for
    ``aiis config show`` (also when nothing was ever set)."""
    with translate_errors():
        raw = await redis.hgetall(config_key(settings.namespace))
        partitions = await redis.hget(meta_key(settings.namespace), "partitions")
    stored = {_text(k): _text(v) for k, v in raw.items()}
    rows: list[tuple[str, str, str]] = []
    for name in CONFIG_NAMES:
        env = f"AIIS_{name.upper()}"
        if name in stored:
            rows.append((name, stored[name], _STORED))
        elif name in LIMITS and name in settings.model_fields_set:
            value = str(getattr(settings, name))
            rows.append((name, value, f"{env} here; not stored yet, the first component seeds it"))
        elif name in LIMITS:
            rows.append((name, str(Settings.model_fields[name].default), "default"))
        elif str(getattr(settings, name)).strip():
            text = str(getattr(settings, name))
            rows.append((name, text, f"{env} here; not stored yet, the first component seeds it"))
        else:
            rows.append((name, "redact" if name == "pii_policy" else "none", "default"))
    if partitions is not None:
        rows.append(("partitions", _text(partitions), "recorded in Redis by the first writer"))
    else:
        rows.append(("partitions", str(settings.partitions), "AIIS_PARTITIONS; not recorded yet"))
    return rows


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def set_config(redis: aioredis.Redis, namespace: str, name: str, text: str) -> None:
    """Validate ``text`` as the document ``name`` and store it for every component; a bad
    document raises ``ConfigError`` and changes nothing."""
    parser = PARSERS.get(name)
    if parser is None:
        raise ConfigError(f"unknown config {name!r}; one of {sorted(PARSERS)}")
    parser(text)
    with translate_errors():
        await redis.hset(config_key(namespace), name, text)


@dataclass(slots=True)
class LiveConfig:
    """The current PII policies and budgets of one component."""

    redis: aioredis.Redis
    settings: Settings
    pii: PiiPolicies
    budgets: BudgetConfig
    limits: DeploymentLimits
    _stamp: float = -1e18
    _task: asyncio.Task[None] | None = None
    _raw: dict[str, str] | None = None

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, settings: Settings) -> LiveConfig:
        """Raises ``ConfigError`` naming the setting when a document is malformed."""
        try:
            pii = parse_pii(settings.pii_policy)
            budgets = parse_budgets(settings.budgets)
        except ConfigError as exc:
            raise ConfigError(f"AIIS_{str(exc).split(':')[0].upper()}: {exc}") from None
        return cls(redis, settings, pii, budgets, DeploymentLimits.defaults())

    async def ensure_loaded(self) -> None:
        """The first read of ``<ns>:config`` (shared by concurrent callers), then cheap."""
        if self._raw is not None:
            self.maybe_refresh()
            return
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.refresh(strict=True))
        await asyncio.shield(self._task)

    def maybe_refresh(self) -> None:
        """Start a background refresh when the last one is older than the refresh interval."""
        if time.monotonic() - self._stamp < self.settings.config_refresh_s:
            return
        if self._task is None or self._task.done():
            self._stamp = time.monotonic()
            self._task = asyncio.ensure_future(self.refresh())

    async def refresh(self, *, strict: bool = False) -> None:
        """Re-read ``<ns>:config``; swap in each valid document, keep the last good one.
        ``strict``: an unreachable Redis raises (the first read) instead of being logged."""
        self._stamp = time.monotonic()
        key = config_key(self.settings.namespace)
        try:
            with translate_errors():
                if strict:  # the first read: seed what this environment sets explicitly
                    await seed_limits(self.redis, self.settings)
                    for name in ("pii_policy", "budgets"):  # validated by from_settings
                        text = getattr(self.settings, name)
                        if name in self.settings.model_fields_set and text.strip():
                            await self.redis.hsetnx(key, name, text)
                raw = await self.redis.hgetall(key)
        except EngineError as exc:
            if strict:
                raise
            log.warning("config refresh failed, keeping the current config: %s", exc)
            return
        docs = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
        texts = {k: v.decode() if isinstance(v, bytes) else v for k, v in docs.items()}
        if texts == self._raw:
            return
        self._raw = texts
        for name in ("pii_policy", "budgets"):  # stored nowhere: the default, not this env's
            if name not in texts:
                if name == "pii_policy":
                    self.pii = parse_pii("")
                else:
                    self.budgets = parse_budgets("")
        limits = {name: getattr(self.limits, name) for name in LIMITS}
        for name in LIMITS:  # a limit stored nowhere is the default, not this environment's
            if name not in texts:
                limits[name] = getattr(DeploymentLimits.defaults(), name)
        for name, text in texts.items():
            parser = PARSERS.get(name)
            if parser is None:
                continue
            try:
                value = parser(text)
            except ConfigError as exc:
                log.error("config %s is invalid, keeping the last good one: %s", name, exc)
                continue
            if name == "pii_policy":
                self.pii = value
            elif name == "budgets":
                self.budgets = value
            else:
                limits[name] = value
            mine = getattr(self.settings, name)
            if name in self.settings.model_fields_set and str(mine).strip() != text.strip():
                log.warning(
                    "AIIS_%s is ignored: the deployment's %s (in Redis) is %s; change it with "
                    "`aiis config set %s …`",
                    name.upper(),
                    name,
                    text if name in LIMITS else "another document",
                    name,
                )
        self.limits = DeploymentLimits(**limits)

    async def aclose(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
