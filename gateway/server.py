"""The gateway process: Starlette routes on uvicorn, whose WebSocket side is the ``websockets``
library's sans-I/O protocol (``ws="websockets-sansio"``, via ``transport``). One port serves
WebSocket, HTTP, SSE and the dashboard. See docs/gateway.md for why this stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from engine.client import Client
from engine.errors import EngineError
from engine.operations.audit import AuditLog
from engine.runtime.connection import connect_for
from engine.runtime.workers import loop_name
from engine.settings import Settings
from gateway import dashboard, deadletters, http, openai, sse, tasks
from gateway.auth import Authenticator, is_loopback, load_tokens, token_from
from gateway.context import Context
from gateway.errors import GatewayConfigError, ProtocolError
from gateway.grpc import GrpcServer, GrpcSettings
from gateway.guard import Guard, Policy, parse_origins
from gateway.hub import Hub
from gateway.processes import SharedMetrics, bind_socket
from gateway.session import websocket_endpoint
from gateway.settings import GatewaySettings
from gateway.stats import Stats
from gateway.transport import AbortableWebSocketProtocol, SocketLimits, guarded_http
from projections.settings import ProjectionSettings

log = logging.getLogger("aiis.gateway")


class _RedactTokens(logging.Filter):
    """uvicorn logs request paths; a ``?token=`` in them must never reach a log."""

    _pattern = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                self._pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in args
            )
        record.msg = self._pattern.sub(r"\1***", str(record.msg))
        return True


for _name in ("uvicorn.error", "uvicorn.access"):
    logging.getLogger(_name).addFilter(_RedactTokens())


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the caller owns signals (run_gateway, aiis serve); uvicorn must not re-raise them
        yield


async def _dashboard(request: Request) -> Response:
    return Response(dashboard.page(), media_type="text/html; charset=utf-8")


async def _opsview_js(request: Request) -> Response:
    return Response(dashboard.opsview_js(), media_type="text/javascript; charset=utf-8")


async def _charts_js(request: Request) -> Response:
    return Response(dashboard.charts_script(), media_type="text/javascript; charset=utf-8")


async def _ws(ws: WebSocket) -> None:
    ctx: Context = ws.app.state.ctx
    if ctx.shutting_down or ctx.connections >= ctx.gw.max_connections:
        ctx.counters.rejected["limit" if not ctx.shutting_down else "shutdown"] += 1
        exc = ProtocolError("unavailable", "connection limit reached; retry later", status=503)
        await ws.send_denial_response(http.error_response(exc))
        return
    token = token_from(ws.headers.get("authorization"), ws.query_params.get("token"))
    try:
        who = ctx.auth.authenticate(token)
    except ProtocolError as exc:
        ctx.counters.rejected["unauthorized"] += 1
        await ws.send_denial_response(http.error_response(exc))
        return
    await websocket_endpoint(ws, ctx, who)


def build_app(ctx: Context, policy: Policy) -> Starlette:
    def refused(code: str) -> None:
        ctx.counters.rejected[code.removeprefix("forbidden_")] += 1

    app = Starlette(
        middleware=[Middleware(Guard, policy=lambda: policy, refused=refused)],
        routes=[
            Route("/", _dashboard),
            Route("/opsview.js", _opsview_js),
            Route("/v1/dlq", deadletters.list_dead, methods=["GET"]),
            Route("/v1/dlq/retry", deadletters.retry, methods=["POST"]),
            Route("/v1/dlq/purge", deadletters.purge, methods=["POST"]),
            Route("/charts.js", _charts_js),
            WebSocketRoute("/v1/ws", _ws),
            Route("/v1/tasks", http.create_task, methods=["POST"]),
            Route("/v1/tasks", tasks.list_tasks, methods=["GET"]),
            Route("/v1/tasks/{task_id}", http.get_task, methods=["GET"]),
            Route("/v1/tasks/{task_id}", http.cancel_task, methods=["DELETE"]),
            Route("/v1/tasks/{task_id}/events", sse.task_events, methods=["GET"]),
            Route("/healthz", http.healthz),
            Route("/readyz", http.readyz),
            Route("/metrics", http.metrics),
            *openai.routes(),
        ],
        exception_handlers={
            ProtocolError: http.on_protocol_error,
            EngineError: http.on_engine_error,
            HTTPException: http.on_http_error,
        },
    )
    app.state.ctx = ctx
    return app


class Gateway:
    """One gateway server: ``await start()`` … ``await stop()`` (or ``async with``)."""

    def __init__(
        self,
        settings: Settings,
        gw: GatewaySettings,
        *,
        proj: ProjectionSettings,
        host: str | None = None,
        port: int | None = None,
        catalog: openai.Catalog | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.gw = gw
        self.proj = proj
        self.host = host if host is not None else settings.gateway_host
        self.port = port if port is not None else settings.gateway_port
        self.ctx: Context | None = None
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] + "/v1/ws"

    async def start(self) -> None:
        auth = Authenticator(load_tokens(self.gw.tokens, self.gw.tokens_file))
        if auth.open and not is_loopback(self.host):
            raise GatewayConfigError(
                f"no tokens configured (AIIS_GATEWAY_TOKENS / AIIS_GATEWAY_TOKENS_FILE): the "
                f"gateway only binds to a loopback address then, not {self.host!r}"
            )
        pool = 16 + self.settings.partitions
        client = Client(connect_for(self.settings, pool), self.settings)
        try:
            await client.ping()
            # a gateway without AIIS_PARTITIONS reads every partition the deployment has
            self.settings = await client.adopt_deployment()
            hub = Hub(client.store, self.gw)
            stats = Stats(client.store, self.gw, self.proj)
            hub.listeners.append(stats.observe)
            await stats.seed()
            await hub.start()
        except BaseException:
            await client.aclose()
            raise
        self.ctx = Context(self.settings, self.gw, client, hub, auth, stats)
        self.ctx.catalog = self.catalog
        self.ctx.audit = AuditLog(
            client.store.redis, self.settings.namespace, max_len=self.settings.audit_max_len
        )
        self._stats_task = asyncio.create_task(stats.push_forever(), name="gateway-stats")
        if self.gw.metrics_dir is not None:
            shared = SharedMetrics(self.gw.metrics_dir, self.gw.process_index or 0)
            self.ctx.shared_metrics = shared
            self._snapshot_task = asyncio.create_task(
                shared.publish_forever(self.ctx), name="gateway-metrics"
            )
        sock = bind_socket(self.host, self.port, reuse_port=self.gw.reuse_port)
        self.port = sock.getsockname()[1]
        policy = Policy(parse_origins(self.gw.allowed_origins), auth.open, self.host, self.port)
        self.ctx.limits = SocketLimits(self.gw.max_sockets, self.gw.header_timeout_s)
        config = uvicorn.Config(
            build_app(self.ctx, policy),
            http=guarded_http(self.ctx.limits),
            ws=AbortableWebSocketProtocol,
            timeout_keep_alive=self.gw.keep_alive_timeout_s,
            ws_max_size=self.gw.max_frame_bytes,
            ws_ping_interval=self.gw.ping_interval_s,
            ws_ping_timeout=self.gw.ping_timeout_s,
            ws_per_message_deflate=False,
            lifespan="off",
            log_config=None,
            log_level="warning",  # not one INFO line per WebSocket connection
            access_log=False,
            timeout_graceful_shutdown=max(1, int(self.gw.shutdown_grace_s)),
            backlog=2048,
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serving.done():
                await self._serving  # raises what stopped it
                raise GatewayConfigError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Close every WebSocket with 1001 (going away), end SSE streams, stop serving."""
        ctx = self.ctx
        if ctx is None:
            return
        ctx.shutting_down = True
        for session in list(ctx.sessions):
            session.close(1001, "server shutting down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.gw.shutdown_grace_s):
                await asyncio.gather(*(s.ended.wait() for s in list(ctx.sessions)))
        for outbox in list(ctx.sse_outboxes):
            outbox.close()
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving
        # the stats pushes, and shared tasks' delayed cancels (which then run to their end)
        background = [t for t in (self._stats_task, self._snapshot_task) if t is not None]
        background += list(ctx.pending)
        for task in background:
            task.cancel()
        if background:
            # bounded: a Redis call that swallowed the cancellation (redis/redis-py#2028) must
            # not hold up the shutdown; closing the client below ends it
            await asyncio.wait(background, timeout=1.0)
        if ctx.shared_metrics is not None:
            ctx.shared_metrics.withdraw()
        await ctx.hub.stop()
        await ctx.client.aclose()
        self.ctx = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_gateway(
    settings: Settings,
    stop: asyncio.Event | None,
    gw: GatewaySettings,
    proj: ProjectionSettings,
    grpc_settings: GrpcSettings,
    announce: Callable[[str], None] = print,
    catalog: openai.Catalog | None = None,
) -> None:
    """Serve until ``stop`` is set (None: until SIGTERM/SIGINT), then shut down cleanly."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings, gw, proj=proj, catalog=catalog)
    await gateway.start()
    assert gateway.ctx is not None
    if gateway.ctx.auth.open and not gw.process_index:  # once per group
        announce(
            "aiis gateway: OPEN MODE — no tokens configured (AIIS_GATEWAY_TOKENS); loopback "
            "only, every client is an operator that sees every tenant"
        )
    who = "aiis gateway" if gw.process_index is None else f"aiis gateway[{gw.process_index}]"
    if gw.process_index is not None:
        frozen = gc.get_freeze_count()  # engine.runtime.workers.quiet_gc ran
        announce(f"{who}: process {os.getpid()} (event loop {loop_name()}, gc frozen {frozen})")
    else:
        announce(f"{who}: dashboard {gateway.url}/  websocket {gateway.ws_url}")
    grpc_server = None
    if grpc_settings.enabled:
        grpc_server = GrpcServer(
            settings,
            gateway.ctx.client,
            gateway.ctx.auth,
            grpc_settings,
            reuse_port=gw.reuse_port,
        )
        try:
            await grpc_server.start()
        except BaseException:
            await gateway.stop()
            raise
        if gw.process_index is None:
            announce(f"{who}: grpc {grpc_server.target}")
    try:
        await stop.wait()
    finally:
        if grpc_server is not None:
            await grpc_server.stop()
        await gateway.stop()
