"""The process side of the CLI: ``aiis serve`` (embedded Redis, sandbox, workers and the other
components under one supervisor, stopped in dependency order, healed when they die) and
``aiis worker --processes N | --autoscale MIN:MAX``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.client import Client
from engine.core.store import Store
from engine.errors import ConfigError, EngineError
from engine.runtime.autoscale import Autoscaler, ScalePolicy, parse_range
from engine.runtime.connection import connect_for, connect_sync_for
from engine.runtime.embedded import EmbeddedRedis, free_port
from engine.runtime.supervisor import HEALTHY_S, Child, Pool, Supervisor
from engine.runtime.workers import quiet_gc, redis_url, run_loop, run_worker
from engine.settings import Settings


async def _check_redis(url: str, settings: Settings) -> None:
    client = Client(connect_for(settings, url=url), settings)
    try:
        await client.ping()
        await Store(client.store.redis, settings).prepare()
    finally:
        await client.aclose()


# `aiis serve` stops its children in this order: what takes work in, the workers (they drain
# their calls), the sandbox they call, then the log's readers; the embedded Redis goes last.
STAGE_OF = {"gateway": 0, "intake": 0, "worker": 1, "sandbox": 2, "projections": 3, "ops": 3}


def _engine_argv(*args: str) -> list[str]:
    """A supervised ``aiis`` child: a configuration error exits with EXIT_CONFIG, which stops
    the supervisor instead of a restart loop."""
    return [sys.executable, "-m", "engine", "--supervised", *args]


def _worker_argv(concurrency: int | None) -> list[str]:
    argv = _engine_argv("worker", "--processes", "1")
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def _worker_children(n: int, concurrency: int | None, env: dict[str, str]) -> list[Child]:
    argv = _worker_argv(concurrency)
    return [Child(f"worker-{i + 1}", argv, env, stage=STAGE_OF["worker"]) for i in range(n)]


class _RedisHealer:
    """Restarts the embedded redis-server of ``aiis serve`` from its AOF when it dies; gives up
    (one line, serve exits 1) when it dies again within HEALTHY_S of a restart."""

    def __init__(self, embedded: EmbeddedRedis) -> None:
        self.embedded = embedded
        self.restarted_at: float | None = None

    def __call__(self) -> str | None:
        code = self.embedded.died()
        if code is None:
            return None
        now = time.monotonic()
        log_file = self.embedded.data_dir / "redis.log"
        if self.restarted_at is not None and now - self.restarted_at < HEALTHY_S:
            return f"embedded redis-server died again (exit {code}); see {log_file}"
        print(
            f"aiis: embedded redis-server exited with {code}; restarting it from its AOF",
            file=sys.stderr,
        )
        try:
            self.embedded.restart()
        except EngineError as exc:
            return f"embedded redis-server could not restart: {exc}"
        self.restarted_at = time.monotonic()
        print(f"aiis: embedded redis-server is back at {self.embedded.url}", file=sys.stderr)
        return None


def _wait_port(port: int, child: Child, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process is not None and child.process.poll() is not None:
            raise ConfigError(f"{child.name} exited with {child.process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ConfigError(f"{child.name} did not start listening on port {port}")


# our client-side provider limits (providers/config.py), sized for real provider tiers
PROVIDER_RATE_LIMITS = tuple(
    f"AIIS_{name}"
    for name in (
        "GEMINI_RPM", "GEMINI_TPM", "OPENAI_RPM", "OPENAI_TPM",
        "ANTHROPIC_RPM", "ANTHROPIC_TPM", "UNSPLASH_RPM", "PEXELS_RPM",
    )
)  # fmt: skip


def sandbox_worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The workers' environment against serve's own sandbox: our rate limits model real
    provider tiers (Gemini 1,000 rpm capped a sandbox burst at ~18 tasks/s); the loopback
    sandbox has none, so they are off unless the user set them."""
    return {**{name: "0" for name in PROVIDER_RATE_LIMITS}, **env}


def _needs_sandbox(settings: Settings) -> bool:
    if settings.provider != "auto" or settings.sandbox_url:
        return False
    from providers.config import ProviderSettings  # noqa: PLC0415 - httpx only when used

    return not ProviderSettings().has_any_key()


def serve(
    settings: Settings, workers: int, concurrency: int | None, components: Sequence[str] = ()
) -> int:
    """Everything in one process tree: embedded Redis (unless AIIS_REDIS_URL), the provider
    sandbox (when no API key is set), workers, and the other components (projections, gateway).
    """
    embedded: EmbeddedRedis | None = None
    if settings.redis_url:
        url = settings.redis_url
        where = "AIIS_REDIS_URL"
    else:
        embedded = EmbeddedRedis(Path(settings.data_dir))
        url = embedded.start()
        where = f"embedded redis-server, AOF on, data in {embedded.data_dir}"
    supervisor: Supervisor | None = None
    try:
        asyncio.run(_check_redis(url, settings))
        env = {**os.environ, "AIIS_REDIS_URL": url}
        children: list[Child] = []
        sandbox: Child | None = None
        port = 0
        if _needs_sandbox(settings):
            port = free_port()
            sandbox = Child(
                "sandbox",
                [sys.executable, "-m", "providers.sandbox", "--port", str(port)],
                {**os.environ},
                quiet=True,
                stage=STAGE_OF["sandbox"],
            )
            children.append(sandbox)
            env = sandbox_worker_env(env)
            env["AIIS_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
            providers = (
                f"sandbox at {env['AIIS_SANDBOX_URL']} (no provider API key is set: every "
                "provider is simulated on loopback)"
            )
        elif settings.provider == "auto" and settings.sandbox_url:
            providers = f"the sandbox at {settings.sandbox_url} (AIIS_SANDBOX_URL)"
        elif settings.provider == "auto":
            providers = "the provider router (API keys from the environment)"
        else:
            providers = settings.provider
        children += _worker_children(workers, concurrency, env)
        children += [
            Child(name, _engine_argv(name), env, stage=STAGE_OF.get(name, 0)) for name in components
        ]
        supervisor = Supervisor(
            children,
            stop_timeout=settings.drain_timeout_s + 5,
            tick=_RedisHealer(embedded) if embedded is not None else None,
        )
        print(f"aiis serve: Redis {url} ({where})")
        print(f"aiis serve: providers: {providers}")
        print(
            f"aiis serve: {workers} worker process(es); also running: "
            f"{', '.join(components) or 'nothing else'}"
        )
        print('aiis serve: try  aiis submit "hello" --wait   (Ctrl-C stops everything)')
        sys.stdout.flush()
        started = sandbox  # the first child: the workers start once it listens

        def sandbox_listens() -> None:
            if started is not None:
                _wait_port(port, started)

        return supervisor.run(on_start=sandbox_listens)
    finally:
        if embedded is not None:
            embedded.stop()


def worker(settings: Settings, processes: int, concurrency: int | None) -> int:
    if processes <= 1:
        quiet_gc()
        run_loop(run_worker(settings, concurrency), settings.event_loop)
        return 0
    asyncio.run(_check_redis(redis_url(settings), settings))
    children = _worker_children(processes, concurrency, dict(os.environ))
    return Supervisor(children, stop_timeout=settings.drain_timeout_s + 5).run()


def autoscaled_workers(settings: Settings, spec: str, concurrency: int | None) -> int:
    """Worker processes between MIN and MAX, following the queue (engine/runtime/autoscale.py)."""
    try:
        minimum, maximum = parse_range(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    url = redis_url(settings)
    asyncio.run(_check_redis(url, settings))
    env = dict(os.environ)
    argv = _worker_argv(concurrency)
    client = connect_sync_for(settings, url)
    policy = ScalePolicy(
        minimum,
        maximum,
        concurrency or settings.concurrency,
        grow_after_s=settings.autoscale_grow_after_s,
        idle_s=settings.autoscale_idle_s,
    )
    scaler = Autoscaler(client, settings.namespace, Store.keys_of(settings), policy)
    pool = Pool(
        lambda n: Child(f"worker-{n}", argv, env),
        scaler,
        initial=minimum,
        every_s=settings.autoscale_interval_s,
    )
    return Supervisor([], stop_timeout=settings.drain_timeout_s + 5, pool=pool).run()
