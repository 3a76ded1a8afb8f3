"""What each ``aiis`` subcommand does (argument parsing lives in ``engine.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from engine import dlq as dead_letters
from engine.audit import Action, AuditLog, audit_command
from engine.autoscale import Autoscaler, ScalePolicy, parse_range
from engine.client import Client
from engine.connection import connect_for, connect_sync_for
from engine.embedded import EmbeddedRedis, free_port
from engine.errors import ConfigError, EngineError
from engine.events import (
    TERMINAL_EVENTS,
    Event,
    TaskProgressData,
    TaskRequeuedData,
    TaskRetryScheduledData,
    TaskStartedData,
    TaskSucceededData,
)
from engine.runtime import redis_url, run_loop, run_worker
from engine.settings import Settings
from engine.store import Store
from engine.supervisor import Child, Pool, Supervisor


def _client(settings: Settings) -> Client:
    return Client(connect_for(settings), settings)


def cli_identity() -> str:
    """Who acts in audit records written by the CLI (there is no token: the OS user)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


async def _audit(
    client: Client,
    action: Action,
    tenant: str = "*",
    target: str | None = None,
    outcome: str = "ok",
    **detail: object,
) -> None:
    log = AuditLog(
        client.store.redis, client.settings.namespace, max_len=client.settings.audit_max_len
    )
    await log.record(
        action,
        tenant=tenant,
        token_id=cli_identity(),
        target=target,
        outcome="ok" if outcome == "ok" else "error",
        detail=detail,
    )


async def _check_redis(url: str, settings: Settings) -> None:
    client = Client(connect_for(settings, url=url), settings)
    try:
        await client.ping()
        await Store(client.store.redis, settings).prepare()
    finally:
        await client.aclose()


def _worker_children(n: int, concurrency: int | None, env: dict[str, str]) -> list[Child]:
    argv = [sys.executable, "-m", "engine", "worker", "--processes", "1"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return [Child(f"worker-{i + 1}", argv, env) for i in range(n)]


def _wait_port(port: int, child: Child, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process is not None and child.process.poll() is not None:
            raise ConfigError(f"{child.name} exited with {child.process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ConfigError(f"{child.name} did not start listening on port {port}")


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
        if _needs_sandbox(settings):
            port = free_port()
            sandbox = Child(
                "sandbox",
                [sys.executable, "-m", "providers.sandbox", "--port", str(port)],
                {**os.environ},
                quiet=True,
            )
            children.append(sandbox)
            env["AIIS_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
            providers = (
                f"sandbox at {env['AIIS_SANDBOX_URL']} (no provider API key is set: every "
                "provider is simulated on loopback)"
            )
        elif settings.provider == "auto":
            providers = "the provider router (API keys from the environment)"
        else:
            providers = settings.provider
        children += _worker_children(workers, concurrency, env)
        children += [
            Child(name, [sys.executable, "-m", "engine", name], env) for name in components
        ]
        supervisor = Supervisor(children, stop_timeout=settings.drain_timeout_s + 5)
        print(f"aiis serve: Redis {url} ({where})")
        print(f"aiis serve: providers: {providers}")
        print(
            f"aiis serve: {workers} worker process(es); also running: "
            f"{', '.join(components) or 'nothing else'}"
        )
        print('aiis serve: try  aiis submit "hello" --wait   (Ctrl-C stops everything)')
        sys.stdout.flush()
        return supervisor.run(
            # AIIS_SANDBOX_URL set by the caller: their sandbox, nothing of ours to wait for
            on_start=lambda: _wait_port(port, sandbox) if sandbox is not None else None
        )
    finally:
        if embedded is not None:
            embedded.stop()


def worker(settings: Settings, processes: int, concurrency: int | None) -> int:
    if processes <= 1:
        run_loop(run_worker(settings, concurrency), settings.event_loop)
        return 0
    asyncio.run(_check_redis(redis_url(settings), settings))
    children = _worker_children(processes, concurrency, dict(os.environ))
    return Supervisor(children, stop_timeout=settings.drain_timeout_s + 5).run()


def autoscaled_workers(settings: Settings, spec: str, concurrency: int | None) -> int:
    """Worker processes between MIN and MAX, following the queue (see engine/autoscale.py)."""
    try:
        minimum, maximum = parse_range(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    url = redis_url(settings)
    asyncio.run(_check_redis(url, settings))
    env = dict(os.environ)
    argv = [sys.executable, "-m", "engine", "worker", "--processes", "1"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
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


class _Printer:
    """Renders a task's events on a terminal; streamed text is printed as it arrives."""

    def __init__(self) -> None:
        self.streamed = False

    def __call__(self, event: Event) -> None:
        data = event.data
        if isinstance(data, TaskProgressData):
            if data.delta:
                self.streamed = True
                print(data.delta, end="", flush=True)
            if data.notice:
                detail = orjson.dumps(data.detail).decode()
                print(f"{chr(10) if self.streamed else ''}[{data.notice}] {detail}", flush=True)
            return
        if isinstance(data, TaskSucceededData):
            print(
                f"\n✔ succeeded  {data.provider}/{data.model}  tokens in/out "
                f"{data.usage.input_tokens}/{data.usage.output_tokens}  "
                f"cost ${data.cost_usd}  {data.latency_ms} ms"
            )
            if data.result.text is not None and not self.streamed:
                print(data.result.text)
            for image in data.result.images:
                print(image.url)
            return
        if isinstance(data, TaskRetryScheduledData | TaskRequeuedData | TaskStartedData):
            self.streamed = False  # a new attempt streams from the start
        summary = orjson.dumps(data.model_dump(mode="json")).decode()
        mark = "✘" if event.type in TERMINAL_EVENTS else "·"
        print(f"{mark} {event.type} {summary}", flush=True)


async def submit(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        try:
            task_id = await _submit(client, args)
        except EngineError as exc:
            with contextlib.suppress(EngineError):  # e.g. Redis is down: report the cause
                await _audit(
                    client, Action.SUBMIT, args.tenant, None, "error", error=type(exc).__name__
                )
            raise
        await _audit(client, Action.SUBMIT, args.tenant, task_id, kind=args.kind)
        print(task_id, flush=True)
        if not args.wait:
            return 0
        status = 0
        show = _Printer()
        async for event in client.watch(task_id):
            show(event)
            if event.type in TERMINAL_EVENTS and event.type != "TaskSucceeded":
                status = 1
        return status


async def _submit(client: Client, args: argparse.Namespace) -> str:
    return await client.submit(
        args.prompt if args.kind != "chat" else [{"role": "user", "content": args.prompt}],
        kind=args.kind,
        priority=args.priority,
        tenant=args.tenant,
        idempotency_key=args.idempotency_key,
        params=dict(args.param) or None,
        deadline_s=args.deadline,
    )


async def get(settings: Settings, task_id: str) -> int:
    async with _client(settings) as client:
        view = await client.get(task_id)
        print(orjson.dumps(view.as_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


async def cancel(settings: Settings, task_id: str) -> int:
    async with _client(settings) as client:
        status = await client.cancel(task_id)
        await _audit(client, Action.CANCEL, target=task_id, status=status.value)
        print(status.value)
    return 0


async def dlq(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        if args.dlq_command == "list":
            rows = await dead_letters.list_dead(client, args.limit)
            if not rows:
                print("no dead letters")
            for d in rows:
                print(
                    f"{d.task_id}  {d.reason:<18} attempt {d.attempt}  {d.priority:<6} "
                    f"tenant {d.tenant}  {d.error[:100]}"
                )
        elif args.dlq_command == "retry":
            new_id = await dead_letters.retry(client, args.task_id)
            await _audit(client, Action.DLQ_RETRY, target=args.task_id, new_task=new_id)
            print(new_id)
        else:
            purged = await dead_letters.purge(client)
            await _audit(client, Action.DLQ_PURGE, purged=purged)
            print(f"purged {purged} dead letters")
    return 0


def ops(settings: Settings) -> int:
    """``aiis ops`` until SIGTERM/SIGINT."""
    from engine.ops import run_ops  # noqa: PLC0415 - httpx only when used

    asyncio.run(run_ops(settings, redis_url(settings)))
    return 0


def audit(settings: Settings, args: argparse.Namespace) -> int:
    return audit_command(args, settings.model_copy(update={"redis_url": redis_url(settings)}))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _value(text: str) -> str:
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {text[1:]}: {exc.strerror}") from None
    return text


async def config(settings: Settings, args: argparse.Namespace) -> int:
    from engine.keys import config_key  # noqa: PLC0415
    from engine.policy import set_config  # noqa: PLC0415

    async with _client(settings) as client:
        redis = client.store.redis
        if args.config_command == "show":
            stored = await redis.hgetall(config_key(settings.namespace))
            for name, value in sorted(stored.items()):
                print(f"{_text(name)}: {_text(value)}")
            return 0
        try:
            await set_config(redis, settings.namespace, args.name, _value(args.value))
        except ConfigError as exc:
            await _audit(client, Action.CONFIG_CHANGE, target=args.name, outcome="error")
            raise ConfigError(f"{exc}; the current {args.name} stays in use") from None
        await _audit(client, Action.CONFIG_CHANGE, target=args.name)
        print(f"{args.name} updated; components pick it up within {settings.config_refresh_s} s")
    return 0


async def template(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        store = client.intake.templates
        if args.template_command == "show":
            t = await store.get(args.name, args.version)
            print(f"# {t.name} v{t.version}, variables: {', '.join(sorted(t.variables)) or '-'}")
            print(t.body)
            return 0
        version = await store.register(args.name, _value(args.body))
        await _audit(client, Action.CONFIG_CHANGE, target=f"template:{args.name}", version=version)
        print(f"{args.name} v{version}")
    return 0
