"""``aiis gateway --processes N``: N gateway processes behind the same HTTP and gRPC ports.

The parent reserves both ports with a bound, never-listening ``SO_REUSEPORT`` socket (so port 0
resolves once, and a restarted child binds the same port again), then runs the children under
the engine's ``Supervisor`` (restart with backoff, ordered SIGTERM drain). Each child listens
with ``SO_REUSEPORT`` too, and the kernel spreads new connections over the listening ones. A
child is a whole gateway: its own engine client, log reader (hub) and sessions, so a WebSocket
subscriber's guarantees hold whichever child serves it — a resumed subscription replays from
the log (``since``), not from a process's memory.

``/metrics`` is answered by whichever child the scrape reaches, so the children share their
process-local families (connections, submits, errors, fan-out counters …): each writes a
snapshot to a directory the parent made, once a second, and a scrape adds every live sibling's
snapshot, each family labelled ``process="<index>"`` (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.core import Metric

from engine.runtime.supervisor import EXIT_CONFIG, Child, Supervisor
from engine.settings import Settings
from gateway.auth import is_loopback, load_tokens
from gateway.errors import GatewayConfigError
from gateway.grpc import GrpcSettings
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from gateway.context import Context

SNAPSHOT_EVERY_S = 1.0
STALE_S = 10.0  # a snapshot older than this is a dead child's: not reported, removed
LABEL = "process"


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _labelled(families: Iterable[Metric], index: str) -> list[Metric]:
    out = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type)
        for s in family.samples:
            copy.add_sample(s.name, {**s.labels, LABEL: index}, s.value)
        out.append(copy)
    return out


def _encode(families: Iterable[Metric]) -> bytes:
    return orjson.dumps(
        [
            {
                "name": f.name,
                "doc": f.documentation,
                "type": f.type,
                "samples": [[s.name, s.labels, s.value] for s in f.samples],
            }
            for f in families
        ]
    )


def _decode(raw: bytes) -> list[Metric]:
    out = []
    for item in orjson.loads(raw):
        family = Metric(item["name"], item["doc"], item["type"])
        for name, labels, value in item["samples"]:
            family.add_sample(name, labels, value)
        out.append(family)
    return out


class SharedMetrics:
    """One child's side of the shared ``/metrics``: publish its snapshot, read the siblings'."""

    def __init__(self, directory: Path, index: int, stale_s: float = STALE_S) -> None:
        self.directory = directory
        self.index = str(index)
        self.stale_s = stale_s
        self.path = directory / f"{index}.json"

    def publish(self, families: Iterable[Metric]) -> None:
        """Replace this child's snapshot atomically (readers never see half a file)."""
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(_encode(families))
        tmp.replace(self.path)

    async def publish_forever(self, ctx: Context, every_s: float = SNAPSHOT_EVERY_S) -> None:
        from gateway.metrics import local_families  # noqa: PLC0415 (metrics imports us)

        while True:
            with contextlib.suppress(OSError):
                self.publish(local_families(ctx))
            await asyncio.sleep(every_s)

    def withdraw(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def merge(self, own: list[Metric]) -> list[Metric]:
        """This child's live families and every live sibling's snapshot, each labelled with
        its process index; families of one name are merged into one."""
        by_name: dict[str, Metric] = {}
        sources = [_labelled(own, self.index)]
        now = time.time()
        for path in sorted(self.directory.glob("*.json")):
            if path == self.path:
                continue
            try:
                if now - path.stat().st_mtime > self.stale_s:
                    path.unlink()
                    continue
                sources.append(_labelled(_decode(path.read_bytes()), path.stem))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a sibling replacing its file, or a dead one's leftover
        for families in sources:
            for family in families:
                into = by_name.get(family.name)
                if into is None:
                    by_name[family.name] = family
                elif into.type == family.type:
                    into.samples.extend(family.samples)
        return list(by_name.values())


def _check(settings: Settings, gw: GatewaySettings) -> None:
    """The configuration errors a child would hit, found before N children hit them."""
    if not load_tokens(gw.tokens, gw.tokens_file) and not is_loopback(settings.gateway_host):
        raise GatewayConfigError(
            f"no tokens configured (AIIS_GATEWAY_TOKENS / AIIS_GATEWAY_TOKENS_FILE): the "
            f"gateway only binds to a loopback address then, not {settings.gateway_host!r}"
        )


def run_processes(
    settings: Settings,
    gw: GatewaySettings,
    grpc: GrpcSettings,
    processes: int,
    environ: Mapping[str, str],
    announce: Callable[[str], None] = print,
) -> int:
    """Reserve the ports, run ``processes`` gateway children (``environ`` plus what tells
    them their ports and index) until SIGTERM/SIGINT."""
    _check(settings, gw)
    host = settings.gateway_host
    held: list[socket.socket] = []
    directory = Path(tempfile.mkdtemp(prefix="aiis-gateway-metrics-"))
    try:
        http = bind_socket(host, settings.gateway_port, reuse_port=True)
        held.append(http)
        env: dict[str, Any] = {
            **environ,
            "AIIS_GATEWAY_HOST": host,
            "AIIS_GATEWAY_PORT": str(http.getsockname()[1]),
            "AIIS_GATEWAY_PROCESSES": "1",
            "AIIS_GATEWAY_REUSE_PORT": "1",
            "AIIS_GATEWAY_METRICS_DIR": str(directory),
        }
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{env['AIIS_GATEWAY_PORT']}"
        announce(f"aiis gateway: dashboard {url}/  websocket ws{url[4:]}/v1/ws")
        if grpc.enabled:
            grpc_host = grpc.host or host
            rpc = bind_socket(grpc_host, grpc.port, reuse_port=True)
            held.append(rpc)
            env["AIIS_GRPC_PORT"] = str(rpc.getsockname()[1])
            env["AIIS_GRPC_HOST"] = grpc_host
            shown = f"[{grpc_host}]" if ":" in grpc_host else grpc_host
            announce(f"aiis gateway: grpc {shown}:{env['AIIS_GRPC_PORT']}")
        announce(f"aiis gateway: {processes} processes share these ports")
        sys.stdout.flush()
        children = [
            Child(
                f"gateway-{i}",
                [sys.executable, "-m", "engine", "gateway"],
                {**env, "AIIS_GATEWAY_PROCESS_INDEX": str(i)},
                stage=0,
            )
            for i in range(processes)
        ]
        return Supervisor(children, stop_timeout=gw.shutdown_grace_s + 10).run()
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(directory, ignore_errors=True)


__all__ = ["EXIT_CONFIG", "SharedMetrics", "bind_socket", "run_processes"]
