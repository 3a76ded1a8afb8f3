"""What each ``aiis`` subcommand does (argument parsing lives in ``engine.runtime.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

import orjson

from engine.client import Client
from engine.core.events import (
    TERMINAL_EVENTS,
    Event,
    TaskProgressData,
    TaskRequeuedData,
    TaskRetryScheduledData,
    TaskStartedData,
    TaskSucceededData,
)
from engine.errors import ConfigError, EngineError
from engine.operations import dlq as dead_letters
from engine.operations import tracing
from engine.operations.audit import Action, AuditLog, parse_since
from engine.operations.tracing import TaskTracer
from engine.runtime.connection import connect_for
from engine.runtime.workers import redis_url
from engine.settings import Settings


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


class _Printer:
    """Renders a task's events on a terminal; streamed text is printed as it arrives. A result
    reads the same whether it streamed, came whole or from the cache: the text (or image URLs),
    then one summary line."""

    def __init__(self) -> None:
        self.streamed = False  # this attempt's text was shown as it arrived
        self.midline = False  # streamed text left the cursor inside a line

    def _line(self, text: str) -> None:
        if self.midline:
            print()
            self.midline = False
        print(text, flush=True)

    def __call__(self, event: Event) -> None:
        data = event.data
        if isinstance(data, TaskProgressData):
            if data.delta:
                self.streamed = True
                print(data.delta, end="", flush=True)
                self.midline = not data.delta.endswith("\n")
            # a successful call's notice says what the summary line will say: only failed calls,
            # skips, fallbacks and breakers are shown
            ok_call = data.notice == "attempt" and (data.detail or {}).get("outcome") == "ok"
            if data.notice and not ok_call:
                self._line(f"[{data.notice}] {orjson.dumps(data.detail).decode()}")
            return
        if isinstance(data, TaskSucceededData):
            if data.result.text is not None and not self.streamed:
                self._line(data.result.text)
            for image in data.result.images:
                self._line(image.url)
            self._line(
                f"✔ succeeded{' (cached)' if data.cached else ''}  {data.provider}/{data.model}"
                f"  tokens in/out {data.usage.input_tokens}/{data.usage.output_tokens}  "
                f"cost ${data.cost_usd}  {data.latency_ms} ms"
            )
            return
        if isinstance(data, TaskRetryScheduledData | TaskRequeuedData | TaskStartedData):
            self.streamed = False  # a new attempt streams from the start
        summary = orjson.dumps(data.model_dump(mode="json")).decode()
        mark = "✘" if event.type in TERMINAL_EVENTS else "·"
        self._line(f"{mark} {event.type} {summary}")


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
    from engine.admission.policy import effective_config, set_config  # noqa: PLC0415

    async with _client(settings) as client:
        redis = client.store.redis
        if args.config_command == "show":
            for name, value, source in await effective_config(redis, settings):
                print(f"{name:18} {value}  ({source})")
            return 0
        try:
            await set_config(redis, settings.namespace, args.name, _value(args.value))
        except ConfigError as exc:
            await _audit(
                client, Action.CONFIG_CHANGE, target=args.name, outcome="error", reason=str(exc)
            )
            raise ConfigError(f"{exc}; the current {args.name} stays in use") from None
        await _audit(client, Action.CONFIG_CHANGE, target=args.name)
        print(f"{args.name} updated; components pick it up within {settings.config_refresh_s} s")
    return 0


async def template(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        store = client.admission.templates
        if args.template_command == "show":
            t = await store.get(args.name, args.version)
            print(f"# {t.name} v{t.version}, variables: {', '.join(sorted(t.variables)) or '-'}")
            print(t.body)
            return 0
        version = await store.register(args.name, _value(args.body))
        await _audit(client, Action.CONFIG_CHANGE, target=f"template:{args.name}", version=version)
        print(f"{args.name} v{version}")
    return 0


async def run_ops(settings: Settings, url: str) -> None:
    """``aiis ops`` until SIGTERM/SIGINT."""
    from engine.operations.ops import Ops  # noqa: PLC0415 - httpx only when used

    client = Client(connect_for(settings, url=url), settings)
    await client.adopt_deployment()
    ops = Ops(client, tracer=TaskTracer(tracing.tracer()) if tracing.enabled(settings) else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("aiis.ops").info(
        "ops: spend, alerts%s%s",
        ", alert webhook" if ops.notifier else "",
        ", task webhooks" if ops.deliveries else " (task webhooks off: AIIS_WEBHOOK_SECRET unset)",
    )
    try:
        await ops.run(stop)
    finally:
        await ops.aclose()
        await client.aclose()


async def _read_audit(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        raise EngineError("aiis audit needs AIIS_REDIS_URL")
    redis = connect_for(settings, url=settings.redis_url)
    try:
        audit_log = AuditLog(redis, settings.namespace)
        limit = max(1, min(args.limit, 100_000))
        note = ""
        if args.since:  # a page forward from --since, and how to ask for the next one
            entries = await audit_log.read(parse_since(args.since), limit + 1, args.tenant)
            if len(entries) > limit:
                entries = entries[:limit]
                note = f"… more entries follow: aiis audit --since {entries[-1].id}"
        else:  # the newest, and whether older ones were left out
            entries = await audit_log.read_latest(limit + 1, args.tenant)
            if len(entries) > limit:
                entries = entries[1:]
                left = "earlier" if args.tenant else f"{await audit_log.length() - limit} earlier"
                note = f"… {left} entries not shown: --limit N shows more, --since 2h pages forward"
        for e in entries:
            if args.json:
                print(e.model_dump_json())
            else:
                when = datetime.fromtimestamp(e.ts / 1000).isoformat(timespec="seconds")
                detail = " ".join(f"{k}={v}" for k, v in e.detail.items())
                print(
                    f"{e.id} {when} {e.action.value:13} tenant={e.tenant} "
                    f"token={e.token_id or '-'} target={e.target or '-'} {e.outcome} {detail}"
                )
        if note:
            print(note, file=sys.stderr)
    finally:
        await redis.aclose()
    return 0


def audit_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``aiis audit`` (exit code)."""
    return asyncio.run(_read_audit(args, settings))
