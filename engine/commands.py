"""What each ``aiis`` subcommand does (argument parsing lives in ``engine.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import orjson

from engine import dlq as dead_letters
from engine.client import Client
from engine.connection import connect
from engine.embedded import EmbeddedRedis
from engine.events import TERMINAL_EVENTS, Event
from engine.runtime import redis_url, run_worker
from engine.settings import Settings
from engine.store import Store
from engine.supervisor import Child, Supervisor


def _client(settings: Settings) -> Client:
    return Client(connect(redis_url(settings)), settings)


async def _check_redis(url: str, settings: Settings) -> None:
    client = Client(connect(url), settings)
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


def serve(settings: Settings, workers: int, concurrency: int | None) -> int:
    """Everything in one process tree: embedded Redis (unless AIIS_REDIS_URL) and workers."""
    embedded: EmbeddedRedis | None = None
    if settings.redis_url:
        url = settings.redis_url
        where = "AIIS_REDIS_URL"
    else:
        embedded = EmbeddedRedis(Path(settings.data_dir))
        url = embedded.start()
        where = f"embedded redis-server, AOF on, data in {embedded.data_dir}"
    try:
        asyncio.run(_check_redis(url, settings))
        env = {**os.environ, "AIIS_REDIS_URL": url}
        children = _worker_children(workers, concurrency, env)
        print(f"aiis serve: Redis {url} ({where})")
        print(
            f"aiis serve: {workers} worker process(es); providers: {settings.provider} "
            "(in-process echo unless configured)"
        )
        print('aiis serve: try  aiis submit "hello" --wait   (Ctrl-C stops everything)')
        sys.stdout.flush()
        return Supervisor(children, stop_timeout=settings.drain_timeout_s + 5).run()
    finally:
        if embedded is not None:
            embedded.stop()


def worker(settings: Settings, processes: int, concurrency: int | None) -> int:
    if processes <= 1:
        asyncio.run(run_worker(settings, settings.provider, concurrency))
        return 0
    asyncio.run(_check_redis(redis_url(settings), settings))
    children = _worker_children(processes, concurrency, dict(os.environ))
    return Supervisor(children, stop_timeout=settings.drain_timeout_s + 5).run()


def _print_event(event: Event) -> None:
    data = event.data
    if event.type == "TaskProgress":
        delta = getattr(data, "delta", "")
        notice = getattr(data, "notice", None)
        if delta:
            print(delta, end="", flush=True)
        if notice:
            print(f"\n[{notice}] {orjson.dumps(getattr(data, 'detail', None)).decode()}")
        return
    if event.type == "TaskSucceeded":
        d = data.model_dump()
        text = d["result"]["text"]
        images = d["result"]["images"]
        print(
            f"\n✔ succeeded  {d['provider']}/{d['model']}  tokens in/out "
            f"{d['usage']['input_tokens']}/{d['usage']['output_tokens']}  "
            f"cost ${d['cost_usd']}  {d['latency_ms']} ms"
        )
        if text is not None:
            print(text)
        for image in images:
            print(image["url"])
        return
    summary = orjson.dumps(data.model_dump(mode="json")).decode()
    mark = "✘" if event.type in TERMINAL_EVENTS else "·"
    print(f"{mark} {event.type} {summary}", flush=True)


async def submit(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        task_id = await client.submit(
            args.prompt if args.kind != "chat" else [{"role": "user", "content": args.prompt}],
            kind=args.kind,
            priority=args.priority,
            tenant=args.tenant,
            idempotency_key=args.idempotency_key,
            params=dict(args.param) or None,
            deadline_s=args.deadline,
        )
        print(task_id, flush=True)
        if not args.wait:
            return 0
        status = 0
        async for event in client.watch(task_id):
            _print_event(event)
            if event.type in TERMINAL_EVENTS and event.type != "TaskSucceeded":
                status = 1
        return status


async def get(settings: Settings, task_id: str) -> int:
    async with _client(settings) as client:
        view = await client.get(task_id)
        print(orjson.dumps(view.as_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


async def cancel(settings: Settings, task_id: str) -> int:
    async with _client(settings) as client:
        status = await client.cancel(task_id)
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
            print(await dead_letters.retry(client, args.task_id))
        else:
            print(f"purged {await dead_letters.purge(client)} dead letters")
    return 0
