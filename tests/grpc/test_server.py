"""The server around the service: health, reflection, open mode, ports, shutdown, codegen."""

from __future__ import annotations

import asyncio
import filecmp
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.auth import Authenticator
from gateway.errors import GatewayConfigError
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.server import GrpcServer, serve_grpc
from gateway.grpc.settings import GrpcSettings
from tests.conftest import Engine
from tests.grpc.conftest import MakeServer

ROOT = Path(__file__).resolve().parents[2]
OPEN = Authenticator({})


async def test_health_and_reflection(server: GrpcServer) -> None:
    """The standard health service answers SERVING overall and for aiis.v1.TaskService, and
    reflection lists the task, health and reflection services."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aiis.v1.TaskService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async with asyncio.timeout(10):
            replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert names == {
            "aiis.v1.TaskService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="aiis.v1.Event")
        async with asyncio.timeout(10):
            replies = [r async for r in stub.ServerReflectionInfo(iter([symbol]))]
        assert replies[0].file_descriptor_response.file_descriptor_proto  # grpcurl needs it


async def test_open_mode_serves_everyone_on_loopback_only(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """With no tokens configured a loopback server treats every caller as operator, and a
    server on a non-loopback address refuses to start."""
    stub = connect(await make_server(engine.settings, auth=OPEN))
    reply = await stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi", tenant="zeta"))
    assert (await stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id))).tenant == "zeta"
    exposed = GrpcServer(engine.settings, None, OPEN, GrpcSettings(), host="0.0.0.0", port=0)
    with pytest.raises(GatewayConfigError, match="loopback"):
        await exposed.start()


async def test_a_port_in_use_is_an_error(
    engine: Engine, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second server on a port already served fails to start instead of sharing it, and
    the half-built server is stopped on this loop (left to its finaliser, it fails later on a
    closed loop, inside some other test: "AioServer.shutdown was never awaited")."""
    first = await make_server(engine.settings)
    built: list[Any] = []
    stopped: list[Any] = []
    real_server = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> Any:
        server = real_server(*args, **kwargs)
        real_stop = server.stop

        async def stop(grace: float | None) -> None:
            stopped.append(server)
            await real_stop(grace)

        server.stop = stop
        built.append(server)
        return server

    monkeypatch.setattr(grpc.aio, "server", spy)
    second = GrpcServer(engine.settings, None, OPEN, GrpcSettings(), host="127.0.0.1")
    second.port = first.port
    with pytest.raises(RuntimeError):
        await second.start()
    assert len(built) == 1
    assert stopped == built


async def test_serve_grpc_runs_until_the_stop_event(engine: Engine) -> None:
    """``serve_grpc`` serves on the given port until its stop event is set, then returns and
    the port is closed."""
    stop = asyncio.Event()
    port = _free_port()
    config = GrpcSettings(host="127.0.0.1", shutdown_grace_s=0.2)
    serving = asyncio.create_task(
        serve_grpc(engine.settings, None, stop, port, auth=OPEN, config=config, announce=False)
    )
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stop.set()
    await asyncio.wait_for(serving, 10)
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _free_port() -> int:
    from engine.runtime.embedded import free_port

    return free_port()


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    """gateway/grpc/gen/ is exactly what scripts/gen-proto makes from the proto now (run it
    after editing proto/aiis/v1/tasks.proto)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-proto"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    committed = ROOT / "gateway" / "grpc" / "gen"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in committed.iterdir() if p.is_file()) == names
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, committed, names, shallow=False)
    assert (mismatch, errors) == ([], []), "stale generated code: run scripts/gen-proto"


async def test_stop_does_not_wait_for_a_probe_stuck_in_redis(
    engine: Engine, make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A health probe stuck in a Redis call that swallowed its cancellation (redis-py can,
    redis/redis-py#2028) does not hold up the shutdown; it ends once the clients close."""
    server = await make_server(engine.settings)
    assert server._client is not None
    released = asyncio.Event()
    stuck = asyncio.Event()

    async def ping_that_ignores_cancel() -> None:
        stuck.set()
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue  # what a swallowed cancellation looks like from outside

    monkeypatch.setattr(server._client, "ping", ping_that_ignores_cancel)
    await stuck.wait()
    async with asyncio.timeout(30):  # a hang guard, not a timing: stop used to never return
        await server.stop()
    released.set()
    await asyncio.sleep(0)
