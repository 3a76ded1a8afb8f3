"""One deployment as ``aiis serve`` composes it, on a Redis Cluster: the provider sandbox (with
latency, so a task is in flight long enough to SIGKILL its worker) and ``aiis serve`` itself —
its workers, projections, ops and gateway (WebSocket, HTTP, gRPC) — plus the CLI commands an
operator runs against it. Used by ``tests/test_cluster_e2e.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from engine.client import Client
from engine.core import mapper
from engine.core.events import TERMINAL_EVENTS
from engine.runtime.embedded import free_port
from engine.settings import Settings

PARTITIONS = 4


class Deployment:
    def __init__(self, root: Path, redis_url: str, namespace: str, latency_s: float) -> None:
        self.root = root
        self.redis_url = redis_url
        self.namespace = namespace
        self.latency_s = latency_s
        self.sandbox_port = free_port()
        self.gateway_port = free_port()
        self.grpc_port = free_port()
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.autoscaled: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIIS_REDIS_URL": self.redis_url,
            "AIIS_REDIS_CLUSTER": "1",
            "AIIS_PARTITIONS": str(PARTITIONS),
            "AIIS_NAMESPACE": self.namespace,
            "AIIS_DATA_DIR": str(self.root / "data"),
            "AIIS_SANDBOX_URL": f"http://127.0.0.1:{self.sandbox_port}",
            "AIIS_GATEWAY_PORT": str(self.gateway_port),
            "AIIS_GRPC_PORT": str(self.grpc_port),
            "AIIS_VISIBILITY_TIMEOUT_S": "2",
            "AIIS_CONTROL_INTERVAL_S": "0.1",
            "AIIS_RETRY_BASE_S": "0.05",
            "AIIS_RETRY_MAX_S": "0.2",
            "AIIS_MAX_DELIVERIES": "2",
            "AIIS_DRAIN_TIMEOUT_S": "2",
            "AIIS_CONNECT_TIMEOUT_S": "1",
            "AIIS_READ_TIMEOUT_S": "5",
            "AIIS_BREAKER_OPEN_S": "1",
            "AIIS_RATE_MAX_WAIT_S": "1",
        }

    @property
    def settings(self) -> Settings:
        return Settings(
            redis_url=self.redis_url,
            redis_cluster=True,
            partitions=PARTITIONS,
            namespace=self.namespace,
        )

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start(self, workers: int = 2) -> None:
        self.sandbox = self._spawn(
            "sandbox",
            [
                sys.executable, "-m", "providers.sandbox",
                "--port", str(self.sandbox_port), "--latency", str(self.latency_s),
            ],
        )  # fmt: skip
        self.serve = self._spawn(
            "serve", [sys.executable, "-m", "engine", "serve", "--workers", str(workers)]
        )
        # the autoscaler is not part of serve: run it beside, 1 worker that may grow to 2
        self.autoscaled = self._spawn(
            "autoscale", [sys.executable, "-m", "engine", "worker", "--autoscale", "1:2"]
        )

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the gateway answers /readyz and the gRPC port accepts connections."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.gateway_port}/readyz"
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                assert self.serve is not None and self.serve.poll() is None, self.log("serve")
                try:
                    if (await http.get(url)).status_code == 200:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.grpc_port)
                        writer.close()
                        return
                except (httpx.HTTPError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"gateway not ready:\n{self.log('serve')}")
                await asyncio.sleep(0.3)

    def log(self, name: str, tail: int | None = 6000) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text

    def serve_children(self) -> dict[int, str]:
        """pid → command line of every live child of ``aiis serve``."""
        assert self.serve is not None
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.serve.pid:
                    found[int(entry.name)] = (
                        (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    )
            except (OSError, ValueError, IndexError):
                continue
        return found

    def aiis(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    async def aiis_async(
        self, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.aiis, *args, timeout=timeout)

    def stop(self) -> int | None:
        """SIGTERM ``aiis serve`` (it stops its children in order); returns its exit code."""
        code = None
        for proc in (self.autoscaled, self.serve, self.sandbox):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.serve is not None:
            code = self.serve.returncode
        return code


async def log_events(client: Client) -> list[dict[str, Any]]:
    """Every event of every partition's log (one partition per command)."""
    out: list[dict[str, Any]] = []
    for keys in client.store.partitions:
        cursor = "-"
        while True:
            rows = await client.store.entries(keys.log, cursor, "+", count=2000)
            out += [mapper.envelope(eid, f) for eid, f in rows]
            if len(rows) < 2000:
                break
            cursor = "(" + rows[-1][0].decode()
    return out


def by_task(events: Sequence[dict[str, Any]], tasks: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        if e["task_id"] in tasks:
            out.setdefault(e["task_id"], []).append(e["id"])
    return out


def terminal_counts(events: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        if e["type"] in TERMINAL_EVENTS:
            counts[e["task_id"]] = counts.get(e["task_id"], 0) + 1
    return counts


async def wait_terminal(client: Client, tasks: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = set(terminal_counts(await log_events(client)))
        if tasks <= done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(tasks - done)} tasks without a terminal event")
        await asyncio.sleep(0.2)
