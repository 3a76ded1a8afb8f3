"""gRPC fixtures: an engine (client + in-process worker) on the session's real redis-server, a
factory of gRPC servers on a free loopback port that are always stopped, and channels to them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from engine.client import Client
from engine.settings import Settings
from gateway.auth import Authenticator, hash_token
from gateway.grpc.gen import tasks_pb2_grpc
from gateway.grpc.server import GrpcServer
from gateway.grpc.settings import GrpcSettings
from tests.conftest import Engine

TOKENS = {"tok-acme": "acme", "tok-beta": "beta", "tok-ops": "*"}
AUTH = Authenticator({hash_token(t): tenant for t, tenant in TOKENS.items()})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


ACME = bearer("tok-acme")
BETA = bearer("tok-beta")
OPS = bearer("tok-ops")


MakeServer = Callable[..., Awaitable[GrpcServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """Factory: ``await make(settings, auth=AUTH, **GrpcSettings fields)`` on 127.0.0.1:0."""
    made: list[GrpcServer] = []

    async def make(
        settings: Settings, auth: Authenticator = AUTH, client: Client | None = None, **cfg: Any
    ) -> GrpcServer:
        config = GrpcSettings(**{"shutdown_grace_s": 0.5, **cfg})
        server = GrpcServer(
            settings, client, auth, config, host="127.0.0.1", port=0, health_interval_s=0.1
        )
        await server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


@pytest.fixture
async def server(engine: Engine, make_server: MakeServer) -> GrpcServer:
    """A server with the test tokens over the ``engine`` fixture's namespace, worker running."""
    engine.start_worker()
    return await make_server(engine.settings)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[GrpcServer], Any]]:
    """Factory of ``TaskService`` stubs on real channels; the channels are closed afterwards."""
    channels: list[grpc.aio.Channel] = []

    def make(target: GrpcServer | str) -> Any:
        address = target if isinstance(target, str) else target.target
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        return tasks_pb2_grpc.TaskServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()


@pytest.fixture
async def stub(server: GrpcServer, connect: Callable[[GrpcServer], Any]) -> Any:
    return connect(server)
