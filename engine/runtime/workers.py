"""Builds the running pieces from settings: Redis connection, store, provider processor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import importlib
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis

from engine.admission.results import Results
from engine.client import Client
from engine.core.store import Store
from engine.core.worker import Worker
from engine.errors import ConfigError
from engine.operations.audit import AuditLog
from engine.runtime.connection import connect_for
from engine.runtime.embedded import discover_url
from engine.settings import Settings
from providers.echo import EchoProvider, ScriptedProvider
from providers.types import TaskProcessor

if TYPE_CHECKING:
    from providers.config import ProviderSettings

log = logging.getLogger("aiis")
T = TypeVar("T")


# the cyclic collector's young-generation threshold for long-running services (CPython's is
# 700): fewer, larger young collections, each still a fraction of a millisecond
GC_YOUNG_THRESHOLD = 20_000


def quiet_gc() -> None:
    """Before a service's loop starts: move everything alive (imported modules, pydantic
    models, settings) into the collector's permanent generation, so a full collection under
    load no longer walks it, and collect the young generation less often. Measured at 100
    streamed chat completions/s: gen-2 pauses of 210–260 ms in the worker and gateway before,
    none above a few ms after (docs/benchmarks.md). Cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_loop(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the chosen event loop: ``uvloop`` (an error when it is not
    installed), ``asyncio``, or ``auto`` — uvloop when installed. uvloop's loop is libuv in C:
    the worker's HTTP/2 calls cost ~15 % less CPU on it (bench/providers.py)."""
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")  # not on Windows
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("AIIS_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


def loop_name() -> str:
    """The running loop's kind, for logs: ``uvloop`` or ``asyncio``."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def redis_url(settings: Settings) -> str:
    """AIIS_REDIS_URL, else the embedded Redis a running ``aiis serve`` advertises."""
    if settings.redis_url:
        return settings.redis_url
    url = discover_url(settings.data_dir)
    if url is None:
        raise ConfigError(
            f"no Redis: AIIS_REDIS_URL is unset and no `aiis serve` runs for "
            f"{settings.data_dir.resolve()} — start `aiis serve`, or set AIIS_REDIS_URL"
        )
    return url


def parse_provider_settings(settings: Settings) -> ProviderSettings | None:
    """The process's ``ProviderSettings``, parsed once (None when ``AIIS_PROVIDER`` is echo or
    scripted: no provider is called, httpx is not imported)."""
    if settings.provider in ("echo", "scripted"):
        return None
    from providers.config import ProviderSettings  # noqa: PLC0415 - httpx only when used

    try:
        parsed = ProviderSettings()
    except ValueError as exc:
        raise ConfigError(f"bad provider setting: {str(exc).splitlines()[0:3]}") from None
    return parsed.model_copy(update={"redis_prefix": settings.namespace})


def make_processor(
    settings: Settings,
    redis: aioredis.Redis,
    provider_settings: ProviderSettings | None,
    on_key_alert: Callable[[Any], None] | None = None,
) -> TaskProcessor:
    """The provider processor the worker calls, as ``AIIS_PROVIDER`` says
    (``provider_settings`` from ``parse_provider_settings``)."""
    if settings.provider == "echo":
        return EchoProvider()
    if settings.provider == "scripted":
        return ScriptedProvider()
    from providers.errors import SecretsError  # noqa: PLC0415
    from providers.factory import build_processor  # noqa: PLC0415

    if provider_settings is None:
        raise ConfigError(f"provider {settings.provider!r}: no provider settings were parsed")
    sandbox_url = settings.sandbox_url or None  # compose passes an empty value for "none"
    if sandbox_url is None and not provider_settings.has_any_key():
        raise ConfigError(
            "no provider API key is set (GEMINI_API_KEY, OPENAI_API_KEY, ANTHROPIC_API_KEY, "
            "UNSPLASH_ACCESS_KEY, PEXELS_API_KEY) and no AIIS_SANDBOX_URL; `aiis serve` starts "
            "a sandbox by itself, or set AIIS_PROVIDER=echo"
        )
    try:
        return build_processor(
            redis,
            provider_settings,
            sandbox_url,
            on_circuit=_log_circuit,
            on_key_alert=on_key_alert,
        )
    except SecretsError as exc:
        raise ConfigError(str(exc)) from None


def _log_circuit(provider: str, transition: str, info: Mapping[str, Any]) -> None:
    log.warning("circuit breaker of %s %s (%s)", provider, transition, dict(info))


def new_worker(
    store: Store,
    processor: TaskProcessor,
    *,
    concurrency: int | None = None,
    consumer: str | None = None,
) -> Worker:
    """A worker with the service's result stage (cache, cleaning, out-of-line storage)."""
    results = Results(store, getattr(processor, "chains", None) or {})
    return Worker(store, processor, results, concurrency=concurrency, consumer=consumer)


async def run_worker(settings: Settings, concurrency: int | None) -> None:
    """One worker process until SIGTERM/SIGINT, then drain."""
    client = Client(
        connect_for(settings, 32 + settings.partitions),
        settings,
    )
    try:
        await client.ping()
        await client.store.prepare()  # the deployment's partition count, consumer groups
        keys = _KeyEvents(client, settings)
        provider_settings = parse_provider_settings(settings)  # once for the whole process
        processor = make_processor(settings, client.store.redis, provider_settings, keys.alert)
    except BaseException:
        await client.aclose()
        raise
    worker = new_worker(client.store, processor, concurrency=concurrency)
    log.info("worker %s: event loop %s", worker.consumer, loop_name())
    keys.who = f"worker:{worker.consumer}"
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def stop_all() -> None:
        stop.set()
        worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    background = keys.start(getattr(processor, "keyring", None), provider_settings, stop)
    try:
        await worker.run()
    finally:
        stop.set()
        await asyncio.gather(*background, *keys.pending, return_exceptions=True)
        with contextlib.suppress(Exception):
            await processor.aclose()
        await client.aclose()


class _KeyEvents:
    """A worker's key events: rotation alerts to the ops stream, reloads (SIGHUP, secrets
    file changes) to the audit log, scheduled round-robin."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.who = f"worker:{getpass.getuser()}"
        self.pending: set[asyncio.Task[Any]] = set()
        self._reload_failed = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def alert(self, alert: Any) -> None:
        """A credentials ``KeyAlert`` as an ``AlertRaised`` event (key ids only)."""
        from engine.operations.deliveries import append_ops  # noqa: PLC0415

        subject = alert.provider or "secrets"
        data = {
            "alert_id": f"{alert.kind}:{subject}",
            "rule": alert.kind,
            "subject": subject,
            "severity": "warning" if alert.kind == "key_rejected" else "critical",
            "message": alert.message,
            "value": float(len(alert.key_ids)),
            "threshold": 1.0,
        }
        if alert.kind == "secrets_reload_failed":
            self._reload_failed = True
        self._spawn(append_ops(self.client.store.redis, self.settings, "AlertRaised", data))

    def reloaded(self, ok: bool) -> None:
        from engine.operations.deliveries import append_ops  # noqa: PLC0415

        audit = AuditLog(self.client.store.redis, self.settings.namespace)
        self._spawn(
            audit.record(
                "key_reload", tenant="*", token_id=self.who, outcome="ok" if ok else "error"
            )
        )
        if ok and self._reload_failed:
            self._reload_failed = False
            data = {
                "alert_id": "secrets_reload_failed:secrets",
                "rule": "secrets_reload_failed",
                "subject": "secrets",
                "value": 0.0,
            }
            redis = self.client.store.redis
            self._spawn(append_ops(redis, self.settings, "AlertResolved", data))

    def start(
        self, keyring: Any, provider_settings: ProviderSettings | None, stop: asyncio.Event
    ) -> list[asyncio.Task[None]]:
        """Reload on SIGHUP and on secrets file changes; rotate on a schedule."""
        if keyring is None or provider_settings is None:
            return []
        keyring.on_reload = self.reloaded
        keyring.install_sighup()
        tasks = []
        if provider_settings.secrets_dir is not None:
            tasks.append(
                asyncio.create_task(keyring.watch_files(provider_settings.secrets_dir, stop))
            )
        if provider_settings.key_rotate_s > 0:
            tasks.append(
                asyncio.create_task(keyring.rotate_every(provider_settings.key_rotate_s, stop))
            )
        return tasks
