"""Assembly: settings (or a sandbox URL) → adapters → Router with shared breakers and limits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx
import redis.asyncio as aioredis
from pydantic import SecretStr

from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.base import HttpAdapter
from providers.adapters.gemini import GeminiAdapter
from providers.adapters.images import PexelsAdapter, UnsplashAdapter
from providers.adapters.openai import OpenAIAdapter
from providers.breaker import BreakerPolicy, Breakers, TransitionHook
from providers.config import PROVIDERS, ProviderSettings
from providers.credentials.keyring import KeyAlert, Keyring, default_loader, wrap_adapters
from providers.pricing import PriceTable
from providers.ratelimit import Limit, RateLimiter
from providers.router import Adapter, Router
from providers.types import Kind

ADAPTERS: dict[str, type[HttpAdapter]] = {
    "gemini": GeminiAdapter,
    "openai": OpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "unsplash": UnsplashAdapter,
    "pexels": PexelsAdapter,
}
_BASE_URL_FIELD = {p: f"{p}_base_url" for p in PROVIDERS}
_KEY_FIELD = {p: "unsplash_access_key" if p == "unsplash" else f"{p}_api_key" for p in PROVIDERS}


def sandbox_settings(sandbox_url: str, settings: ProviderSettings) -> ProviderSettings:
    """``settings`` pointed at a sandbox: every base URL under it, sandbox keys where none is
    set, HTTP/2 with prior knowledge (the sandbox speaks h2c)."""
    base = settings
    update: dict[str, object] = {"http2_prior_knowledge": True}
    for name in PROVIDERS:
        update[_BASE_URL_FIELD[name]] = f"{sandbox_url.rstrip('/')}/{name}"
        if base.provider(name).api_key is None:
            update[_KEY_FIELD[name]] = SecretStr(f"sandbox-key-{name}")
    return base.model_copy(update=update)


def sandbox_env(sandbox_url: str) -> dict[str, str]:
    """Environment variables pointing every adapter at a sandbox (for subprocesses and SDKs)."""
    env = {"AIIS_HTTP2_PRIOR_KNOWLEDGE": "1"}
    for name in PROVIDERS:
        env[f"AIIS_{name.upper()}_BASE_URL"] = f"{sandbox_url.rstrip('/')}/{name}"
        env[_KEY_FIELD[name].upper()] = f"sandbox-key-{name}"
    return env


def build_router(
    redis: aioredis.Redis | None,
    settings: ProviderSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    on_circuit: TransitionHook | None = None,
    prices: PriceTable | None = None,
    on_key_alert: Callable[[KeyAlert], None] | None = None,
    sandbox: bool = False,
) -> Router:
    """Adapters for every provider with a key; breakers and limits shared through ``redis``
    (None: no breaker, no shared limit — for single-process tools only). Keys come from a
    ``Keyring`` (the variables, overridden by ``AIIS_SECRETS_DIR`` files; several keys per
    provider, rotated on rejection); it is ``router.keyring``. A malformed secrets file raises
    ``SecretsError`` here, at start."""
    keyring = Keyring(
        default_loader(settings.secrets_dir, lambda: settings),
        on_alert=on_key_alert,
        bad_for_s=settings.key_bad_for_s,
        sandbox=sandbox,
    )
    with_keys = set(keyring.providers())
    adapters: dict[str, Adapter] = {}
    limits = {}
    for name, cls in ADAPTERS.items():
        config = settings.provider(name)
        if config.api_key is None and name not in with_keys:
            continue
        adapters[name] = cls(config, settings, transport)
        limits[name] = Limit(config.rpm, config.tpm, settings.rate_burst_fraction)
    breakers = limiter = None
    if redis is not None:
        policy = BreakerPolicy(
            settings.breaker_threshold, settings.breaker_open_s, max(settings.call_timeout_s, 60.0)
        )
        breakers = Breakers(redis, settings.redis_prefix, policy, on_circuit)
        limiter = RateLimiter(redis, settings.redis_prefix, limits)
    chains: dict[Kind, Sequence[str]] = {
        "text": settings.text_chain,
        "chat": settings.chat_chain,
        "image": settings.image_chain,
    }
    router = Router(
        wrap_adapters(adapters, keyring),
        chains,
        breakers=breakers,
        limiter=limiter,
        prices=prices,
        max_rate_wait_s=settings.rate_max_wait_s,
    )
    router.keyring = keyring
    return router


def build_processor(
    redis: aioredis.Redis | None,
    settings: ProviderSettings,
    sandbox_url: str | None = None,
    *,
    on_circuit: TransitionHook | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_key_alert: Callable[[KeyAlert], None] | None = None,
) -> Router:
    """The TaskProcessor the worker calls. With ``sandbox_url`` every provider points at that
    sandbox (keys default to sandbox keys); ``on_circuit(provider, "opened"|"closed", info)``
    fires once per breaker transition across all workers."""
    # only placeholders when no real key is set: the log says "sandbox", not "keys loaded"
    sandbox = sandbox_url is not None and not settings.has_any_key()
    if sandbox_url is not None:
        settings = sandbox_settings(sandbox_url, settings)
    return build_router(
        redis,
        settings,
        transport=transport,
        on_circuit=on_circuit,
        on_key_alert=on_key_alert,
        sandbox=sandbox,
    )
