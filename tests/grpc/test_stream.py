"""SubmitTasks (bidi stream) through a real channel: one reply per request, in order, with the
task id or that item's own error; auth for the stream, idempotency and tenants per item."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
import pytest

from engine.client import Client
from engine.embedded import free_port
from gateway.grpc.gen import tasks_pb2 as pb
from tests.conftest import Engine, fast_settings
from tests.grpc.conftest import ACME, BETA, OPS, MakeServer, bearer
from tests.grpc.test_errors import status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def task(prompt: str = "hi", **fields: Any) -> pb.SubmitTaskRequest:
    return pb.SubmitTaskRequest(prompt=prompt, **fields)


async def submit_all(
    stub: Any, requests: Iterable[pb.SubmitTaskRequest], md: Any = ACME
) -> list[pb.SubmitTasksReply]:
    async with asyncio.timeout(30):
        return [reply async for reply in stub.SubmitTasks(iter(list(requests)), metadata=md)]


async def test_every_request_gets_its_reply_in_order(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """Many tasks over one stream: one reply per request, in request order (``index``), each
    with the id of a task the engine holds for the token's tenant, with the request's fields."""
    stub = connect(await make_server(engine.settings))
    requests = [task(f"prompt {i}", priority=pb.PRIORITY_HIGH if i % 2 else 0) for i in range(600)]
    replies = await submit_all(stub, requests)
    assert [r.index for r in replies] == list(range(600))
    assert all(r.WhichOneof("outcome") == "task_id" for r in replies)
    assert len({r.task_id for r in replies}) == 600
    for i in (0, 1, 299, 599):
        view = await engine.client.get(replies[i].task_id)
        assert (view.tenant, view.priority) == ("acme", "high" if i % 2 else "normal")


async def test_a_bad_item_fails_alone(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A bad item's reply carries its own status (INVALID_ARGUMENT naming the field, or
    PERMISSION_DENIED for another tenant); the items around it are accepted."""
    stub = connect(await make_server(engine.settings))
    replies = await submit_all(
        stub, [task("a"), task(""), task("b", tenant="beta"), task("c", deadline_s=-1), task("d")]
    )
    outcomes = [r.WhichOneof("outcome") for r in replies]
    assert outcomes == ["task_id", "error", "error", "error", "task_id"]
    assert (replies[1].error.code, replies[1].error.field) == (INVALID, "input")
    assert replies[1].error.message.startswith("input: ")
    assert replies[2].error.code == DENIED and "'acme'" in replies[2].error.message
    assert (replies[3].error.code, replies[3].error.field) == (INVALID, "deadline_s")
    assert len(await engine.log()) == 2  # nothing written for the bad ones


async def test_idempotency_keys_hold_per_item(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """The same idempotency key twice in one stream, and again in a unary SubmitTask, names
    one task; another tenant's same key is another task."""
    stub = connect(await make_server(engine.settings))
    key = "order-42"
    replies = await submit_all(stub, [task(idempotency_key=key), task(), task(idempotency_key=key)])
    assert replies[0].task_id == replies[2].task_id != replies[1].task_id
    unary = await stub.SubmitTask(task(idempotency_key=key), metadata=ACME)
    assert unary.task_id == replies[0].task_id
    (beta,) = await submit_all(stub, [task(idempotency_key=key)], md=BETA)
    assert beta.task_id and beta.task_id != replies[0].task_id


async def test_operator_names_the_tenant_per_item(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """An operator token submits each item for the tenant it names (empty: ``default``)."""
    stub = connect(await make_server(engine.settings))
    replies = await submit_all(stub, [task(tenant="acme"), task(tenant="beta"), task()], md=OPS)
    tenants = [(await engine.client.get(r.task_id)).tenant for r in replies]
    assert tenants == ["acme", "beta", "default"]


@pytest.mark.parametrize("metadata", [(), bearer("tok-nobody")], ids=["none", "unknown"])
async def test_the_stream_needs_a_token(
    engine: Engine, make_server: MakeServer, connect: Any, metadata: Any
) -> None:
    """Without a configured bearer token the whole stream is UNAUTHENTICATED before anything
    is read. (The client reads first: grpc.aio clients still writing when the server ends the
    stream may see INTERNAL "Internal error from Core" instead, grpc/grpc#36066.)"""
    stub = connect(await make_server(engine.settings))
    call = stub.SubmitTasks(metadata=metadata)
    code, details, _ = await status_of(call)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in details
    assert await engine.log() == []


async def test_queue_full_is_per_item(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """Past AIIS_QUEUE_MAX_DEPTH the items beyond the depth are RESOURCE_EXHAUSTED, alone."""
    settings = engine.settings.model_copy(update={"queue_max_depth": 3})
    stub = connect(await make_server(settings))
    replies = await submit_all(stub, [task() for _ in range(5)])
    codes = [r.error.code if r.HasField("error") else 0 for r in replies]
    assert codes.count(0) == 3 and codes.count(EXHAUSTED) == 2
    assert all("queue full" in r.error.message for r in replies if r.HasField("error"))


async def test_redis_down_is_unavailable_per_item(make_server: MakeServer, connect: Any) -> None:
    """With Redis unreachable each item's reply is UNAVAILABLE, without the address."""
    server = await make_server(fast_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    replies = await submit_all(connect(server), [task(), task()])
    assert [r.error.code for r in replies] == [UNAVAILABLE, UNAVAILABLE]
    assert all("127.0.0.1" not in r.error.message for r in replies)


async def test_a_stream_the_client_abandons_leaves_the_server_serving(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A client that goes away mid-stream (items in flight) ends its call only: the tasks it
    was told about exist, and the server keeps serving other streams."""
    stub = connect(await make_server(engine.settings, stream_window=8))

    async def endless() -> Any:
        i = 0
        while True:
            yield task(f"endless {i}")
            i += 1

    call = stub.SubmitTasks(endless(), metadata=ACME)
    got = []
    async with asyncio.timeout(15):
        async for reply in call:
            got.append(reply.task_id)
            if len(got) == 50:
                break
    call.cancel()
    for task_id in got:
        assert (await engine.client.get(task_id)).tenant == "acme"
    replies = await submit_all(stub, [task() for _ in range(20)])
    assert all(r.task_id for r in replies)


async def test_a_cancelled_submit_does_not_strand_the_others(engine: Engine) -> None:
    """gRPC cancels a handler whose client went away, possibly mid-submit: the other submits
    sharing that group commit still get their ids (engine ``Client._flush``)."""
    client: Client = engine.client
    submits = [asyncio.ensure_future(client.submit(f"t{i}")) for i in range(20)]
    for _ in range(10_000):  # until all 20 wait in one group commit (a few loop turns)
        if sum(len(v) for v in client._pending.values()) == 20:
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("the submits never queued up together")
    submits[0].cancel()
    async with asyncio.timeout(10):
        ids = await asyncio.gather(*submits[1:])
    assert len(set(ids)) == 19
