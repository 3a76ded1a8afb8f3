"""SubmitTasks (bidi stream of batches) through a real channel: one reply per batch, in order,
with one result per task (its stream-wide index, and the task id or that item's own error);
auth once per stream, idempotency and tenants per item, a bounded batch size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest

from engine.client import Client
from engine.runtime.embedded import free_port
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.server import GrpcServer
from gateway.grpc.settings import GrpcSettings
from tests.conftest import Engine, fast_settings
from tests.grpc.conftest import ACME, BETA, OPS, MakeServer, bearer
from tests.grpc.test_errors import status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def task(prompt: str = "hi", **fields: Any) -> pb.SubmitTaskRequest:
    return pb.SubmitTaskRequest(prompt=prompt, **fields)


def batch(*tasks: pb.SubmitTaskRequest) -> pb.SubmitTasksRequest:
    return pb.SubmitTasksRequest(tasks=tasks)


async def submit_all(
    stub: Any, batches: Iterable[pb.SubmitTasksRequest], md: Any = ACME
) -> list[pb.SubmitTasksReply]:
    async with asyncio.timeout(30):
        return [reply async for reply in stub.SubmitTasks(iter(list(batches)), metadata=md)]


def results(replies: Iterable[pb.SubmitTasksReply]) -> list[pb.SubmitTaskResult]:
    return [r for reply in replies for r in reply.results]


async def settled(server: GrpcServer) -> None:
    """Wait (bounded) until the server holds no SubmitTasks stream and no item in flight."""
    assert server.service is not None
    streams = server.service.streams
    async with asyncio.timeout(10):
        while streams.active or streams.items:  # noqa: ASYNC110 - the server's counters
            await asyncio.sleep(0.02)


async def test_every_task_gets_its_result_in_order_across_batches(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """Batches of different sizes over one stream: one reply per batch, in order, one result
    per task with its index counted over the whole stream, each naming a task the engine
    holds for the token's tenant, with the request's fields."""
    server = await make_server(engine.settings)
    stub = connect(server)
    sizes = [1, 7, 250, 1, 41, 300]
    tasks = [task(f"prompt {i}", priority=pb.PRIORITY_HIGH if i % 2 else 0) for i in range(600)]
    batches, start = [], 0
    for size in sizes:
        batches.append(batch(*tasks[start : start + size]))
        start += size
    replies = await submit_all(stub, batches)
    assert [len(r.results) for r in replies] == sizes
    flat = results(replies)
    assert [r.index for r in flat] == list(range(600))
    assert all(r.WhichOneof("outcome") == "task_id" for r in flat)
    assert len({r.task_id for r in flat}) == 600
    for i in (0, 1, 8, 299, 599):
        view = await engine.client.get(flat[i].task_id)
        assert (view.tenant, view.priority) == ("acme", "high" if i % 2 else "normal")
        watch = stub.WatchTask(pb.WatchTaskRequest(task_id=flat[i].task_id), metadata=ACME)
        async with asyncio.timeout(10):
            requested = await watch.read()
        watch.cancel()
        assert requested.data["input"] == f"prompt {i}"
    await settled(server)


async def test_bad_items_fail_alone_within_a_batch(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """In a batch, a bad item's result carries its own status (INVALID_ARGUMENT naming the
    field, or PERMISSION_DENIED for another tenant); the items around it, and the next batch,
    are accepted, with indexes that go on counting."""
    stub = connect(await make_server(engine.settings))
    first = batch(
        task("a"), task(""), task("b", tenant="beta"), task("c", deadline_s=-1), task("d")
    )
    replies = await submit_all(stub, [first, batch(task("e"), task(""))])
    flat = results(replies)
    assert [r.index for r in flat] == list(range(7))
    outcomes = [r.WhichOneof("outcome") for r in flat]
    assert outcomes == ["task_id", "error", "error", "error", "task_id", "task_id", "error"]
    assert (flat[1].error.code, flat[1].error.field) == (INVALID, "input")
    assert flat[1].error.message.startswith("input: ")
    assert flat[2].error.code == DENIED and "'acme'" in flat[2].error.message
    assert (flat[3].error.code, flat[3].error.field) == (INVALID, "deadline_s")
    assert (flat[6].error.code, flat[6].error.field) == (INVALID, "input")
    assert len(await engine.log()) == 3  # nothing written for the bad ones


async def test_a_batch_over_the_limit_ends_the_stream_after_the_earlier_replies(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A batch of more than ``stream_max_batch`` tasks ends the stream with INVALID_ARGUMENT
    naming the field ``tasks``, after the replies to the batches before it; none of its tasks
    is submitted."""
    stub = connect(await make_server(engine.settings, stream_max_batch=5))
    call = stub.SubmitTasks(metadata=ACME)
    await call.write(batch(task("a"), task("b")))
    async with asyncio.timeout(10):
        reply = await call.read()
    assert [r.index for r in reply.results] == [0, 1]
    await call.write(batch(*(task(f"x{i}") for i in range(6))))
    code, details, trailers = await status_of(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers.get("aiis-field") == "tasks"
    assert details.startswith("tasks: ") and "5" in details and "6" in details
    assert len(await engine.log()) == 2


async def test_the_default_batch_limit_is_1000(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """1,000 tasks in one message are accepted; 1,001 are INVALID_ARGUMENT (``tasks``)."""
    assert GrpcSettings().stream_max_batch == 1000
    stub = connect(await make_server(engine.settings))
    (reply,) = await submit_all(stub, [batch(*(task() for _ in range(1000)))])
    assert len(reply.results) == 1000 and all(r.task_id for r in reply.results)
    call = stub.SubmitTasks(iter([batch(*(task() for _ in range(1001)))]), metadata=ACME)
    code, _, trailers = await status_of(call)
    assert (code, trailers.get("aiis-field")) == (grpc.StatusCode.INVALID_ARGUMENT, "tasks")
    assert len(await engine.log()) == 1000


async def test_an_empty_batch_gets_an_empty_reply(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """An empty batch is answered in its place by a reply without results; it takes no
    index."""
    stub = connect(await make_server(engine.settings))
    replies = await submit_all(stub, [batch(), batch(task("a")), batch(), batch(task("b"))])
    assert [[r.index for r in reply.results] for reply in replies] == [[], [0], [], [1]]
    assert len(await engine.log()) == 2


async def test_a_batch_bigger_than_the_window_goes_alone(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """The window counts items: a batch bigger than it is still admitted (alone, once nothing
    else is in flight), so no batch size the limit allows can stall a stream."""
    server = await make_server(engine.settings, stream_window=4)
    stub = connect(server)
    sizes = [3, 10, 1, 4, 9]
    replies = await submit_all(stub, [batch(*(task() for _ in range(n))) for n in sizes])
    assert [len(r.results) for r in replies] == sizes
    assert [r.index for r in results(replies)] == list(range(27))
    await settled(server)


async def test_idempotency_keys_hold_per_item(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """The same idempotency key twice in one batch, again in a later batch and in a unary
    SubmitTask, names one task; another tenant's same key is another task."""
    stub = connect(await make_server(engine.settings))
    key = "order-42"
    replies = await submit_all(
        stub,
        [
            batch(task(idempotency_key=key), task(), task(idempotency_key=key)),
            batch(task(idempotency_key=key)),
        ],
    )
    flat = results(replies)
    assert flat[0].task_id == flat[2].task_id == flat[3].task_id != flat[1].task_id
    unary = await stub.SubmitTask(task(idempotency_key=key), metadata=ACME)
    assert unary.task_id == flat[0].task_id
    (beta,) = results(await submit_all(stub, [batch(task(idempotency_key=key))], md=BETA))
    assert beta.task_id and beta.task_id != flat[0].task_id
    assert len(await engine.log()) == 3


async def test_operator_names_the_tenant_per_item(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """An operator token submits each item for the tenant it names (empty: ``default``)."""
    stub = connect(await make_server(engine.settings))
    replies = await submit_all(
        stub, [batch(task(tenant="acme"), task(tenant="beta"), task())], md=OPS
    )
    tenants = [(await engine.client.get(r.task_id)).tenant for r in results(replies)]
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
    flat = results(await submit_all(stub, [batch(*(task() for _ in range(5)))]))
    codes = [r.error.code if r.HasField("error") else 0 for r in flat]
    assert codes.count(0) == 3 and codes.count(EXHAUSTED) == 2
    assert all("queue full" in r.error.message for r in flat if r.HasField("error"))


async def test_redis_down_is_unavailable_per_item(make_server: MakeServer, connect: Any) -> None:
    """With Redis unreachable each item's result is UNAVAILABLE, without the address."""
    server = await make_server(fast_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    flat = results(await submit_all(connect(server), [batch(task(), task())]))
    assert [r.error.code for r in flat] == [UNAVAILABLE, UNAVAILABLE]
    assert all("127.0.0.1" not in r.error.message for r in flat)


async def test_a_stream_the_client_abandons_leaves_nothing_behind(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A client that goes away mid-stream (batches in flight) ends its call only: the tasks it
    was told about exist, the server's stream and in-flight items return to zero, and it keeps
    serving other streams."""
    server = await make_server(engine.settings, stream_window=8)
    stub = connect(server)

    async def endless() -> AsyncIterator[pb.SubmitTasksRequest]:
        i = 0
        while True:
            yield batch(*(task(f"endless {i}.{j}") for j in range(10)))
            i += 1

    call = stub.SubmitTasks(endless(), metadata=ACME)
    got: list[str] = []
    async with asyncio.timeout(15):
        async for reply in call:
            got += [r.task_id for r in reply.results]
            if len(got) >= 50:
                break
    assert server.service is not None and server.service.streams.active == 1
    call.cancel()
    await settled(server)
    for task_id in got:
        assert (await engine.client.get(task_id)).tenant == "acme"
    flat = results(await submit_all(stub, [batch(*(task() for _ in range(20)))]))
    assert all(r.task_id for r in flat)
    await settled(server)


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
