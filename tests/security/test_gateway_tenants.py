"""Issue 15 items 6 and 7 and issue 14 item 5 across tenants: per-tenant gRPC watch caps, gRPC
submits and cancels in the audit log, and another tenant's task answered exactly like a missing
one on every interface (HTTP, SSE, WebSocket, gRPC)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from engine.operations.audit import AuditLog
from engine.settings import Settings
from gateway.auth import Authenticator, hash_token, token_id
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.gen import tasks_pb2_grpc
from gateway.grpc.server import GrpcServer
from gateway.grpc.settings import GrpcSettings
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from projections.settings import ProjectionSettings
from tests.conftest import Engine
from tests.gateway.conftest import request

TOKENS = {"tok-acme": "acme", "tok-beta": "beta", "tok-ops": "*"}
TOKENS_ENV = ",".join(f"{hash_token(t)}={tenant}" for t, tenant in TOKENS.items())
AUTH = Authenticator({hash_token(t): tenant for t, tenant in TOKENS.items()})
MISSING = "0" * 32


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def grpc_server(engine: Engine) -> AsyncIterator[Any]:
    """Factory of gRPC servers (test tokens, 127.0.0.1:0) and stubs; all closed afterwards."""
    servers: list[GrpcServer] = []
    channels: list[grpc.aio.Channel] = []

    async def make(settings: Settings, **cfg: Any) -> Any:
        config = GrpcSettings(**{"shutdown_grace_s": 0.5, **cfg})
        server = GrpcServer(settings, None, AUTH, config, host="127.0.0.1", port=0)
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(server.target)
        channels.append(channel)
        return tasks_pb2_grpc.TaskServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop()


async def failure(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details a failing call (unary or stream) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(15):
            if hasattr(call, "read"):
                while await call.read() is not grpc.aio.EOF:
                    pass
            else:
                await call
    return info.value.code(), info.value.details() or ""


async def test_the_grpc_watch_cap_is_per_tenant(engine: Engine, grpc_server: Any) -> None:
    """Tenant A holding max_watches_per_tenant watches is refused one more (RESOURCE_EXHAUSTED)
    while tenant B is still served; when A closes one, A may watch again."""
    stub = await grpc_server(engine.settings, max_watches=8, max_watches_per_tenant=3)
    slow = pb.SubmitTaskRequest(prompt="hi")
    a_task = (await stub.SubmitTask(slow, metadata=md("tok-acme"))).task_id
    b_task = (await stub.SubmitTask(slow, metadata=md("tok-beta"))).task_id
    held = []
    for _ in range(3):
        call = stub.WatchTask(pb.WatchTaskRequest(task_id=a_task), metadata=md("tok-acme"))
        assert (await call.read()).type == "TaskRequested"
        held.append(call)
    code, details = await failure(
        stub.WatchTask(pb.WatchTaskRequest(task_id=a_task), metadata=md("tok-acme"))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "tenant" in details
    b_call = stub.WatchTask(pb.WatchTaskRequest(task_id=b_task), metadata=md("tok-beta"))
    assert (await b_call.read()).type == "TaskRequested"
    held[0].cancel()
    for _ in range(100):  # the server notices the cancelled call
        again = stub.WatchTask(pb.WatchTaskRequest(task_id=a_task), metadata=md("tok-acme"))
        try:
            assert (await again.read()).type == "TaskRequested"
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the cancelled watch was never released")
    for call in (*held[1:], b_call, again):
        call.cancel()


async def test_grpc_submits_and_cancels_are_audited(engine: Engine, grpc_server: Any) -> None:
    """SubmitTask (accepted and refused), SubmitTasks items and CancelTask over gRPC write audit
    records naming the tenant and the token id, never the token."""
    stub = await grpc_server(engine.settings)
    acme = md("tok-acme")
    task_id = (await stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=acme)).task_id
    await failure(stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi", tenant="beta"), metadata=acme))
    await failure(stub.SubmitTask(pb.SubmitTaskRequest(prompt=""), metadata=acme))
    await stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), metadata=acme)

    async def batch() -> AsyncIterator[pb.SubmitTasksRequest]:
        yield pb.SubmitTasksRequest(tasks=[pb.SubmitTaskRequest(prompt="streamed")])

    replies = [r async for r in stub.SubmitTasks(batch(), metadata=acme)]
    streamed = replies[0].results[0].task_id
    entries = await AuditLog(engine.client.store.redis, engine.settings.namespace).read()
    got = [(e.action.value, e.outcome, e.tenant, e.target) for e in entries]
    assert got == [
        ("submit", "ok", "acme", task_id),
        ("submit", "denied", "acme", None),
        ("submit", "denied", "acme", None),
        ("cancel", "ok", "acme", task_id),
        ("submit", "ok", "acme", streamed),
    ]
    assert {e.token_id for e in entries} == {token_id(hash_token("tok-acme"))}
    assert all(e.detail.get("transport") == "grpc" for e in entries)
    assert "tok-acme" not in str([e.model_dump() for e in entries])


async def test_another_tenants_task_is_not_found_on_every_interface(
    engine: Engine, grpc_server: Any
) -> None:
    """HTTP GET/DELETE, SSE, a WebSocket subscribe and gRPC GetTask/CancelTask/WatchTask answer
    another tenant's task id exactly as they answer an id that does not exist (NOT_FOUND, the
    same message but for the id), and the task is untouched."""
    theirs = await engine.client.submit("secret", tenant="beta")
    gateway = Gateway(
        engine.settings,
        GatewaySettings(tokens=TOKENS_ENV, tokens_file=None),
        proj=ProjectionSettings(),
        host="127.0.0.1",
        port=0,
    )
    await gateway.start()
    try:
        acme = {"Authorization": "Bearer tok-acme"}
        async with httpx.AsyncClient(base_url=gateway.url, headers=acme) as http:
            for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
                a = await http.request(method, f"/v1/tasks/{theirs}{path}")
                b = await http.request(method, f"/v1/tasks/{MISSING}{path}")
                assert a.status_code == b.status_code == 404
                assert a.text.replace(theirs, MISSING) == b.text
        async with ws_connect(gateway.ws_url, additional_headers=acme) as ws:
            a_msg = await request(ws, op="subscribe", task_id=theirs)
            b_msg = await request(ws, op="subscribe", task_id=MISSING)
            assert a_msg["code"] == b_msg["code"] == "not_found"
            assert a_msg["message"].replace(theirs, MISSING) == b_msg["message"]
    finally:
        await gateway.stop()
    stub = await grpc_server(engine.settings)
    for make in (
        lambda t: stub.GetTask(pb.GetTaskRequest(task_id=t), metadata=md("tok-acme")),
        lambda t: stub.CancelTask(pb.CancelTaskRequest(task_id=t), metadata=md("tok-acme")),
        lambda t: stub.WatchTask(pb.WatchTaskRequest(task_id=t), metadata=md("tok-acme")),
    ):
        a_code, a_details = await failure(make(theirs))
        b_code, b_details = await failure(make(MISSING))
        assert a_code == b_code == grpc.StatusCode.NOT_FOUND
        assert a_details.replace(theirs, MISSING) == b_details
    assert (await engine.client.get(theirs)).status.value == "queued"
    view = await stub.GetTask(pb.GetTaskRequest(task_id=theirs), metadata=md("tok-beta"))
    assert view.tenant == "beta"


async def test_a_grpc_chat_over_the_message_limit_is_refused_before_it_is_copied(
    engine: Engine, grpc_server: Any
) -> None:
    """SubmitTask with 1,001 chat messages is INVALID_ARGUMENT naming ``input`` (the limit is
    1,000), and nothing is written."""
    stub = await grpc_server(engine.settings)
    messages = [pb.ChatMessage(role="user", content="")] * 1001
    big = pb.SubmitTaskRequest(kind=pb.TASK_KIND_CHAT, chat=pb.ChatInput(messages=messages))
    code, details = await failure(stub.SubmitTask(big, metadata=md("tok-acme")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("input: 1001 chat")
    assert await engine.log() == []
