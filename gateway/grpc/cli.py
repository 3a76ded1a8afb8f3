"""``aiis grpc``: the gRPC server alone (``python -m gateway.grpc`` is the same). ``aiis
gateway`` runs it beside the WebSocket gateway; this command is for running it apart.

Exposes ``register(subparsers)`` and ``run(args, settings)`` like the other CLI plugins.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

from engine.errors import EngineError
from engine.settings import Settings
from gateway.errors import GatewayConfigError
from gateway.grpc.server import serve_grpc
from gateway.grpc.settings import GrpcSettings
from gateway.settings import GatewaySettings

COMMANDS = ("grpc",)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default AIIS_GRPC_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default AIIS_GRPC_PORT)")


def register(subparsers: Any) -> list[str]:
    _add_arguments(subparsers.add_parser("grpc", help="run the gRPC server (aiis.v1)"))
    return list(COMMANDS)


async def _serve(
    settings: Settings, config: GrpcSettings, gw: GatewaySettings, port: int | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve_grpc(settings, None, stop, port, config=config, gw=gw)


def run(args: argparse.Namespace, settings: Settings) -> int:
    config = GrpcSettings()
    if args.host is not None:
        config = config.model_copy(update={"host": args.host})
    try:
        asyncio.run(_serve(settings, config, GatewaySettings(), args.port))
    except (GatewayConfigError, EngineError) as exc:
        print(f"aiis grpc: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.grpc", description=__doc__)
    _add_arguments(parser)
    return run(parser.parse_args(argv), Settings())
