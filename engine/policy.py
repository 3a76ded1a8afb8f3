"""Live policy documents: the PII policy and the daily budgets.

Each starts from its setting (``AIIS_PII_POLICY``, ``AIIS_BUDGETS``; a bad one stops the
component at start with an error naming the field) and can be replaced while everything runs
with ``aiis config set NAME JSON``, which validates the document before it writes it to
``<ns>:config``. Components re-read that hash at most every ``AIIS_CONFIG_REFRESH_S``, in the
background; a document that fails validation there (written around the CLI) is logged and the
last good one stays in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.budget import BudgetConfig, BudgetConfigError, parse_config
from engine.errors import ConfigError, EngineError
from engine.keys import config_key
from engine.redaction import Mode, PiiPolicies, TenantPolicy
from engine.settings import Settings
from engine.store import translate_errors

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


PARSERS: dict[str, Callable[[str], Any]] = {"pii_policy": parse_pii, "budgets": parse_budgets}


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
        return cls(redis, settings, pii, budgets)

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
        try:
            with translate_errors():
                raw = await self.redis.hgetall(config_key(self.settings.namespace))
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
            else:
                self.budgets = value

    async def aclose(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
