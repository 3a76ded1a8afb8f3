"""``aiis`` — the command line (``python -m engine`` is the same)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from engine.admission.policy import CONFIG_NAMES
from engine.errors import ConfigError, EngineError
from engine.operations import tracing
from engine.operations.audit import register_audit
from engine.runtime import commands, serving
from engine.runtime.supervisor import EXIT_CONFIG
from engine.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # pydantic ValidationError: name the variable
        first = str(exc).splitlines()
        raise EngineError(f"bad AIIS_* setting: {' '.join(first[:3])}") from None


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


# Subcommands of the other packages. The CLI is the composition root: engine modules never
# import these packages; the CLI loads them by name, and each exposes
# ``register(subparsers) -> list[str]`` (the command names it adds) and
# ``run(args, settings) -> int``.
PLUGINS = ("projections.cli", "gateway.cli", "gateway.grpc.cli")
# long-running component commands that `aiis serve` runs as children, when installed
COMPONENTS = ("projections", "gateway", "ops", "intake")
ENGINE_COMPONENTS = ("ops", "intake")
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer its reader left


def _plugins() -> list[Any]:
    found = []
    for name in PLUGINS:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiis", description="ai-integration-service")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # set by a supervisor on its children: a configuration error exits with EXIT_CONFIG
    parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="embedded Redis (unless AIIS_REDIS_URL) + workers")
    serve.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    serve.add_argument("--concurrency", type=int, default=None, help="calls in flight per worker")

    worker = sub.add_parser("worker", help="run worker processes")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        default=None,
        help="follow the load with between MIN and MAX processes",
    )

    submit = sub.add_parser("submit", help="submit a task; prints its id")
    submit.add_argument("prompt", help="the prompt (for --kind chat: one user message)")
    submit.add_argument("--kind", default="text", choices=["text", "chat", "image"])
    submit.add_argument("--priority", default="normal", choices=["high", "normal", "low"])
    submit.add_argument("--tenant", default="default")
    submit.add_argument("--idempotency-key", default=None)
    submit.add_argument("--param", action="append", type=_param, default=[], metavar="K=V")
    submit.add_argument("--deadline", type=float, default=None, metavar="SECONDS")
    submit.add_argument("--wait", action="store_true", help="follow progress to the end")

    get = sub.add_parser("get", help="show a task's state")
    get.add_argument("task_id")
    cancel = sub.add_parser("cancel", help="cancel a task")
    cancel.add_argument("task_id")

    dlq = sub.add_parser("dlq", help="dead letters")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlist = dsub.add_parser("list")
    dlist.add_argument("--limit", type=int, default=50)
    dretry = dsub.add_parser("retry", help="submit a dead-lettered task again, as a new task")
    dretry.add_argument("task_id")
    dsub.add_parser("purge", help="delete every dead-letter entry")

    sub.add_parser("ops", help="budgets' spend, alerts and task webhooks (a catch-up reader)")
    intake = sub.add_parser("intake", help="admit the tasks producers XADD to the intake stream")
    intake.add_argument("--consumers", type=int, default=1, help="consumers of the group")
    register_audit(sub)
    config = sub.add_parser(
        "config", help="live configuration: pii_policy, budgets, the deployment's limits"
    )
    csub = config.add_subparsers(dest="config_command", required=True)
    cset = csub.add_parser("set", help="validate and store a document (JSON, or @FILE)")
    cset.add_argument("name", choices=list(CONFIG_NAMES))
    cset.add_argument("value")
    csub.add_parser("show", help="print every effective value and where it comes from")
    template = sub.add_parser("template", help="prompt templates")
    tsub = template.add_subparsers(dest="template_command", required=True)
    tadd = tsub.add_parser("add", help="register BODY (or @FILE) as the next version of NAME")
    tadd.add_argument("name")
    tadd.add_argument("body")
    tshow = tsub.add_parser("show", help="print a template version (default: the latest)")
    tshow.add_argument("name")
    tshow.add_argument("--version", type=int, default=None)
    for plugin in _plugins():
        for command in plugin.register(sub):
            _PLUGIN_OF[command] = plugin
    return parser


_PLUGIN_OF: dict[str, Any] = {}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per provider request is noise at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as exc:
        print(f"aiis: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG if args.supervised else 1
    except EngineError as exc:
        print(f"aiis: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        if not _only_broken_pipes(exc):
            raise
        # the reader went away (`aiis … | head`): stop quietly, as a tool killed by SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def _dispatch(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.command == "ops":  # the one process that makes spans (engine/operations/tracing.py)
        tracing.configure(settings, "aiis-ops")
    if args.command == "serve":
        components = [c for c in COMPONENTS if c in _PLUGIN_OF or c in ENGINE_COMPONENTS]
        return serving.serve(settings, args.workers, args.concurrency, components)
    if args.command == "worker":
        if args.autoscale:
            return serving.autoscaled_workers(settings, args.autoscale, args.concurrency)
        return serving.worker(settings, args.processes, args.concurrency)
    if args.command == "submit":
        return asyncio.run(commands.submit(settings, args))
    if args.command == "get" and not getattr(args, "events", False):  # --events: projections.cli
        return asyncio.run(commands.get(settings, args.task_id))
    if args.command == "cancel":
        return asyncio.run(commands.cancel(settings, args.task_id))
    if args.command == "dlq":
        return asyncio.run(commands.dlq(settings, args))
    if args.command == "ops":
        return commands.ops(settings)
    if args.command == "intake":
        from engine.runtime import intake  # noqa: PLC0415 - faststream only when used

        return intake.run(settings, max(1, args.consumers))
    if args.command == "audit":
        return commands.audit(settings, args)
    if args.command == "config":
        return asyncio.run(commands.config(settings, args))
    if args.command == "template":
        return asyncio.run(commands.template(settings, args))
    return int(_PLUGIN_OF[args.command].run(args, settings))
