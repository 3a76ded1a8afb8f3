"""The gRPC server (``grpc.aio``): ``aiis.v1.TaskService``, the standard health service
(``grpc.health.v1.Health``) and server reflection, on one port (``AIIS_GRPC_PORT``).

Health: the overall status (service ``""``) is SERVING while the server runs; the
``aiis.v1.TaskService`` status follows Redis (a PING every ``health_interval_s``), so a load
balancer stops sending work to a gateway that cannot reach the engine. Both go NOT_SERVING
when shutdown starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.client import Client
from engine.errors import EngineError
from engine.operations.audit import AuditLog
from engine.runtime.connection import connect_for
from engine.settings import Settings
from gateway.auth import Authenticator, is_loopback, load_tokens
from gateway.errors import GatewayConfigError
from gateway.grpc.gen import tasks_pb2_grpc
from gateway.grpc.service import SERVICE_NAME, TaskService
from gateway.grpc.settings import GrpcSettings
from gateway.settings import GatewaySettings

log = logging.getLogger("aiis.grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PROBER_STOP_S = 1.0  # how long a stop waits for a cancelled health probe


class GrpcServer:
    """One gRPC server: ``await start()`` … ``await stop()`` (or ``async with``).

    ``client`` serves the unary calls; pass the gateway's to share its pool, or ``None`` to
    own one. Watches always get a pool of their own (``max_watches`` connections), because
    each one waits in a blocking XREAD and must not starve submits.
    """

    def __init__(
        self,
        settings: Settings,
        client: Client | None,
        auth: Authenticator | None,
        config: GrpcSettings,
        *,
        gw: GatewaySettings | None = None,
        host: str | None = None,
        port: int | None = None,
        health_interval_s: float = 5.0,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: share the port with the other processes of ``aiis gateway
        --processes N`` (SO_REUSEPORT); otherwise a port in use is an error."""
        self.settings = settings
        self.reuse_port = reuse_port
        self.config = config
        self.host = host or self.config.host or settings.gateway_host
        self.port = self.config.port if port is None else port
        self.health_interval_s = health_interval_s
        self._client = client
        self._own_client = client is None
        self._auth = auth
        self._gw = gw
        self.service: TaskService | None = None
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._watch_client: Client | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """``host:port`` as a gRPC client dials it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        auth = self._auth
        if auth is None:
            if self._gw is None:
                raise GatewayConfigError("GrpcServer needs auth or gw (the gateway's settings)")
            auth = Authenticator(load_tokens(self._gw.tokens, self._gw.tokens_file))
        if auth.open and not is_loopback(self.host):
            raise GatewayConfigError(
                f"no tokens configured (AIIS_GATEWAY_TOKENS / AIIS_GATEWAY_TOKENS_FILE): the "
                f"gRPC server only binds to a loopback address then, not {self.host!r}"
            )
        cfg = self.config
        if self._client is None:
            self._client = Client(connect_for(self.settings, cfg.redis_pool), self.settings)
        self._watch_client = Client(connect_for(self.settings, cfg.max_watches), self.settings)
        self.service = TaskService(
            self._client,
            self._watch_client,
            auth,
            cfg.max_watches,
            cfg.watch_block_ms,
            cfg.stream_window,
            cfg.stream_max_batch,
            cfg.max_watches_per_tenant,
            AuditLog(
                self._client.store.redis,
                self.settings.namespace,
                max_len=self.settings.audit_max_len,
            ),
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_receive_message_bytes),
                ("grpc.max_send_message_length", cfg.max_send_message_bytes),
                ("grpc.so_reuseport", int(self.reuse_port)),
            ],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = server.add_insecure_port(f"{self.target}")
            await server.start()
        except BaseException:
            # A server that never started still owns a C-core object: stop it on this loop, or
            # its finaliser runs later on a closed loop ("AioServer.shutdown never awaited").
            with contextlib.suppress(Exception):
                await server.stop(None)
            await self._close_clients()
            raise
        self._server = server
        await self.health.set(health.OVERALL_HEALTH, SERVING)
        await self._probe()
        self._prober = asyncio.create_task(self._probe_forever(), name="grpc-health")

    async def _probe(self) -> None:
        assert self._client is not None
        try:
            async with asyncio.timeout(max(1.0, self.health_interval_s)):
                await self._client.ping()
        except (EngineError, TimeoutError):
            await self.health.set(SERVICE_NAME, NOT_SERVING)
        else:
            await self.health.set(SERVICE_NAME, SERVING)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self._probe()

    async def stop(self) -> None:
        """NOT_SERVING, then let calls in flight finish for ``shutdown_grace_s``; watches still
        open then end with UNAVAILABLE (clients resume with ``since``)."""
        if self._server is None:
            return
        prober, self._prober = self._prober, None
        if prober is not None:
            # a probe stuck in a Redis call that swallowed the cancellation (redis-py can,
            # redis/redis-py#2028) must not hold up the shutdown: closing the clients ends it
            prober.cancel()
            await asyncio.wait([prober], timeout=PROBER_STOP_S)
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.config.shutdown_grace_s)
        self._server = None
        await self._close_clients()
        if prober is not None and not prober.done():
            await asyncio.wait([prober], timeout=PROBER_STOP_S)
            if not prober.done():
                log.warning("grpc: the health probe did not stop; abandoned")

    async def _close_clients(self) -> None:
        if self._watch_client is not None:
            with contextlib.suppress(Exception):
                await self._watch_client.aclose()
            self._watch_client = None
        if self._own_client and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_grpc(
    settings: Settings,
    client: Client | None,
    stop_event: asyncio.Event,
    port: int | None = None,
    *,
    auth: Authenticator | None = None,
    config: GrpcSettings,
    gw: GatewaySettings | None = None,
    announce: bool = True,
) -> None:
    """Serve until ``stop_event`` is set, then shut down cleanly (``auth`` or ``gw``'s tokens)."""
    server = GrpcServer(settings, client, auth, config, gw=gw, port=port)
    await server.start()
    if announce:
        print(f"aiis gateway: grpc {server.target} (aiis.v1.TaskService)", flush=True)
    try:
        await stop_event.wait()
    finally:
        await server.stop()
