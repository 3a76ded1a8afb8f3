"""``aiis gateway | watch | token`` — loaded by ``engine.runtime.cli`` (PLUGINS)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from typing import Any

from engine.runtime.workers import quiet_gc, run_loop
from engine.settings import Settings
from gateway.auth import hash_token
from gateway.errors import GatewayConfigError, WatchError
from gateway.grpc import GrpcSettings
from gateway.openai import Catalog
from gateway.processes import EXIT_CONFIG, run_processes
from gateway.server import run_gateway
from gateway.settings import GatewaySettings
from gateway.watch import Watcher
from projections.settings import ProjectionSettings
from providers.config import ProviderSettings

COMMANDS = ("gateway", "watch", "token")
MAX_PROCESSES = 64


def register(subparsers: Any) -> list[str]:
    gw = subparsers.add_parser("gateway", help="run the WebSocket/HTTP gateway and dashboard")
    gw.add_argument("--host", default=None, help="bind address (default AIIS_GATEWAY_HOST)")
    gw.add_argument("--port", type=int, default=None, help="port (default AIIS_GATEWAY_PORT)")
    gw.add_argument(
        "--processes",
        type=int,
        default=None,
        help="processes behind the same ports (default AIIS_GATEWAY_PROCESSES, 1)",
    )

    watch = subparsers.add_parser("watch", help="follow events over the gateway")
    watch.add_argument("task_id", nargs="?", default=None, help="one task (default: a tenant)")
    watch.add_argument(
        "--since",
        default=None,
        help="resume after this event id (a tenant on P > 1 partitions: P ids, comma-separated)",
    )
    watch.add_argument("--tenant", default=None, help="tenant to follow (default: the token's)")
    watch.add_argument("--url", default=None, help="ws://host:port/v1/ws (default from AIIS_*)")
    watch.add_argument("--token", default=None, help="bearer token (AIIS_GATEWAY_CLIENT_TOKEN)")
    watch.add_argument("--json", action="store_true", help="print raw envelopes, one per line")

    token = subparsers.add_parser("token", help="gateway token helpers")
    tsub = token.add_subparsers(dest="token_command", required=True)
    th = tsub.add_parser("hash", help="print the AIIS_GATEWAY_TOKENS item for a token")
    th.add_argument("token")
    th.add_argument("--tenant", default="default", help="tenant the token maps to ('*': all)")
    tn = tsub.add_parser("new", help="make a random token and its AIIS_GATEWAY_TOKENS item")
    tn.add_argument("--tenant", default="default", help="tenant the token maps to ('*': all)")
    return list(COMMANDS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "token":
        token = args.token if args.token_command == "hash" else secrets.token_urlsafe(32)
        if args.token_command == "new":
            print(f"token: {token}")
        print(f"{hash_token(token)}={args.tenant}")
        return 0
    gw = GatewaySettings()
    if args.command == "gateway":
        overrides = {
            k: v
            for k, v in (("gateway_host", args.host), ("gateway_port", args.port))
            if v is not None
        }
        if overrides:
            settings = settings.model_copy(update=overrides)
        processes = gw.processes if args.processes is None else args.processes
        if not 1 <= processes <= MAX_PROCESSES:
            print(f"aiis gateway: error: --processes must be 1..{MAX_PROCESSES}", file=sys.stderr)
            return 2
        try:
            grpc_settings = GrpcSettings()
            if processes > 1:
                return run_processes(settings, gw, grpc_settings, processes, dict(os.environ))
            catalog = Catalog.from_settings(ProviderSettings())
            # uvloop when installed (AIIS_EVENT_LOOP), as the worker: the gateway's per-request
            # socket work costs far less CPU on libuv (bench/openai_compat.py)
            quiet_gc()
            run_loop(
                run_gateway(
                    settings, None, gw, ProjectionSettings(), grpc_settings, catalog=catalog
                ),
                settings.event_loop,
            )
        except GatewayConfigError as exc:
            print(f"aiis gateway: error: {exc}", file=sys.stderr)
            # a child of `--processes N` that cannot start as configured: do not restart it
            return 2 if gw.process_index is None else EXIT_CONFIG
        return 0
    host = settings.gateway_host
    host = f"[{host}]" if ":" in host else host
    url = args.url or f"ws://{host}:{settings.gateway_port}/v1/ws"
    token = args.token or gw.client_token
    watcher = Watcher(url, token, args.task_id, args.tenant, args.since, args.json)
    try:
        return asyncio.run(watcher.run())
    except WatchError as exc:
        text = str(exc)
        if not token and any(w in text.lower() for w in ("unauthorized", "401", "4401")):
            text = (
                "the gateway requires a token: pass --token TOKEN or set "
                f"AIIS_GATEWAY_CLIENT_TOKEN ({text})"
            )
        print(f"aiis watch: error: {text}", file=sys.stderr)
        return 1  # README: errors exit 1
