"""``aiis projections | replay | stats | archive`` — loaded by ``engine.runtime.cli`` (PLUGINS)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from engine.client import Client
from engine.operations.audit import Action, AuditLog
from engine.runtime.commands import cli_identity
from engine.runtime.connection import connect_for
from engine.settings import Settings
from projections import render, story
from projections.archive import MIN_AGE, archive_log
from projections.registry import PROJECTIONS, select
from projections.replay import estimate_events, replay, verify
from projections.runner import check_partitions, run_projections
from projections.settings import ProjectionSettings, archive_dir
from projections.stats import gather
from projections.storage import ShardStore
from projections.top import run_top
from projections.view import ViewConfig

COMMANDS = ("projections", "replay", "stats", "archive", "top")


def register(subparsers: Any) -> list[str]:
    names = ", ".join(PROJECTIONS)
    run = subparsers.add_parser("projections", help="keep the read models up to date")
    run.add_argument(
        "--projection",
        action="append",
        choices=list(PROJECTIONS),
        help="only these (repeatable; default all)",
    )

    rp = subparsers.add_parser("replay", help="rebuild projections from the log (archive + stream)")
    rp.add_argument("--projection", default=None, help=f"one of: {names} (default all)")
    rp.add_argument(
        "--verify",
        action="store_true",
        help="rebuild beside the live views and exit 1 on any difference",
    )
    rp.add_argument(
        "--archive-dir",
        type=Path,
        default=None,
        help="archive segments (default AIIS_PROJ_ARCHIVE_DIR, else AIIS_DATA_DIR/archive)",
    )

    st = subparsers.add_parser("stats", help="queues, throughput, cost today, provider health")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    ar = subparsers.add_parser("archive", help="archive the log below every checkpoint, then trim")
    ar.add_argument("--dir", type=Path, default=None, help="archive directory")
    ar.add_argument(
        "--min-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep at least this much recent log in the stream "
        "(default AIIS_PROJ_ARCHIVE_MIN_AGE_S)",
    )
    ar.add_argument("--segment-events", type=int, default=None, help="entries per segment file")
    subparsers.add_parser(
        "top", help="live view: queues, throughput, providers, failures (q quits)"
    )
    get = subparsers.choices.get("get")  # engine.runtime.cli's `aiis get`: add its story
    if get is None:
        return list(COMMANDS)
    get.add_argument("--events", action="store_true", help="the task's story: every event")
    get.add_argument("--json", action="store_true", help="with --events: the story as JSON")
    return [*COMMANDS, "get"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "get":
        return asyncio.run(_get_events(settings, args.task_id, args.json))
    proj = ProjectionSettings()
    handlers: dict[str, Callable[[aioredis.Redis], Awaitable[int]]] = {
        "projections": lambda r: _projections(r, settings, proj, args),
        "replay": lambda r: _replay(r, settings, proj, args),
        "stats": lambda r: _stats(r, settings, proj, args),
        "archive": lambda r: _archive(r, settings, proj, args),
        "top": lambda r: run_top(r, settings, _store(r, settings, proj)),
    }
    try:
        code = asyncio.run(_with_redis(settings, handlers[args.command]))
        sys.stdout.flush()  # here, so a closed pipe is caught below rather than at exit
        return code
    except BrokenPipeError:
        return _output_closed()


def _output_closed() -> int:
    """Whoever read our output went away (``aiis archive | head``): that is no error, and
    never a traceback; stdout goes to /dev/null so the exit-time flush cannot fail either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


async def _with_redis(settings: Settings, fn: Callable[[aioredis.Redis], Awaitable[int]]) -> int:
    redis = connect_for(settings, 16 + settings.partitions)
    try:
        return await fn(redis)
    finally:
        await redis.aclose()


def _store(redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings) -> ShardStore:
    config = ViewConfig.from_settings(settings.partitions, settings.task_retention_s, proj)
    return ShardStore(redis, settings.namespace, config)


async def _projections(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, args: argparse.Namespace
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    chosen = [PROJECTIONS[n] for n in args.projection] if args.projection else None
    await run_projections(redis, settings, stop, proj, chosen)
    return 0


@contextlib.contextmanager
def _progress(console: Console, total: int, label: str) -> Iterator[Callable[[int], None]]:
    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(label, total=max(total, 1), rate="")
        started, done = time.monotonic(), 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.monotonic() - started, 1e-6)
            bar.update(task, advance=n, rate=f"{rate:,.0f} ev/s")

        yield advance


async def _replay(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, args: argparse.Namespace
) -> int:
    chosen = select(args.projection)
    await check_partitions(redis, settings)
    store = _store(redis, settings, proj)
    root = archive_dir(settings, proj, args.archive_dir)
    console = Console(stderr=True)
    total = await estimate_events(redis, settings.namespace, settings.partitions, root)
    names = ", ".join(p.name for p in chosen)
    started = time.monotonic()
    if args.verify:
        with _progress(console, total * len(chosen), "verifying") as advance:
            diffs = await verify(store, settings.partitions, chosen, root, advance)
        if diffs:
            render.differences(Console(), diffs)
            return 1
        print(f"verified {names}: rebuilt views equal the live ones")
        return 0
    with _progress(console, total, "replaying") as advance:
        n = await replay(store, settings.partitions, chosen, root, advance)
    elapsed = time.monotonic() - started
    audit = AuditLog(redis, settings.namespace, max_len=settings.audit_max_len)
    await audit.record(
        Action.REPLAY, tenant="*", token_id=cli_identity(), target=names, detail={"events": n}
    )
    print(f"replayed {n:,} events into {names} in {elapsed:.1f} s; swapped in")
    return 0


async def _stats(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, args: argparse.Namespace
) -> int:
    now = dt.datetime.now(dt.UTC)
    report = await gather(
        _store(redis, settings, proj),
        settings.partitions,
        int(now.timestamp() * 1000),
        now.date().isoformat(),
    )
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        render.stats(Console(), report)
    return 0


async def _get_events(settings: Settings, task_id: str, as_json: bool) -> int:
    async with Client(connect_for(settings), settings) as client:
        told = await story.load(client, task_id)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(told.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        story.render(Console(), told)
    return 0


async def _archive(
    redis: aioredis.Redis, settings: Settings, proj: ProjectionSettings, args: argparse.Namespace
) -> int:
    await check_partitions(redis, settings)
    root = archive_dir(settings, proj, args.dir)
    min_age = proj.archive_min_age_s if args.min_age is None else args.min_age
    reports = await archive_log(
        redis,
        settings.namespace,
        settings.partitions,
        root,
        list(PROJECTIONS),
        segment_events=args.segment_events or proj.segment_events,
        min_age_ms=int(min_age * 1000),
    )
    for r in reports:
        if r.held_by == MIN_AGE:
            note = f" (held back by the min-age: entries newer than {min_age:g} s stay)"
        elif r.held_by:
            note = f" (held back by the {r.held_by} projection's checkpoint)"
        else:
            note = ""
        print(
            f"partition {r.partition}: archived {r.archived:,} events in {r.segments} "
            f"segment(s), trimmed {r.trimmed:,}; archived up to {r.archived_to}{note}"
        )
    print(f"archive: {root.resolve()}")
    return 0
