"""GetTask through a real channel: the ``task_state`` projection's record for a finished task,
the engine's state (the log) when the projection has not got the task or may lag behind it."""

from __future__ import annotations

import time
from typing import Any

import grpc
import orjson
from google.protobuf import json_format

from engine.core.keys import partition_of
from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.server import GrpcServer
from projections.keys import ShardKeys
from projections.registry import PROJECTIONS
from projections.runner import PartitionRunner
from projections.storage import ShardStore
from projections.view import ViewConfig
from tests.conftest import Engine
from tests.grpc.conftest import ACME, BETA, OPS, MakeServer
from tests.grpc.test_flow import text_task, watch_all


async def catch_up(engine: Engine) -> None:
    """Run the ``task_state`` projection over everything logged so far."""
    settings = engine.settings
    store = ShardStore(
        engine.client.store.redis, settings.namespace, ViewConfig(partitions=settings.partitions)
    )
    for p in range(settings.partitions):
        runner = PartitionRunner(store, p, [PROJECTIONS["task_state"]], batch=1000)
        while await runner.step():
            pass


async def get(stub: Any, task_id: str, md: Any = ACME) -> pb.Task:
    task: pb.Task = await stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=md)
    return task


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_finished_task_is_served_from_the_projection(stub: Any, engine: Engine) -> None:
    """Once the projection has a finished task's record, GetTask answers from it: source
    PROJECTION, the record's own fields (started/finished times, fallbacks, latency) in
    ``record``, and the terminal event (with the result) from the log."""
    reply = await stub.SubmitTask(text_task("from the projection"), metadata=ACME)
    events = await watch_all(stub, reply.task_id)
    await catch_up(engine)
    task = await get(stub, reply.task_id)
    assert task.source == pb.TASK_SOURCE_PROJECTION
    assert task.status == pb.TASK_STATUS_SUCCEEDED
    assert (task.tenant, task.kind) == ("acme", pb.TASK_KIND_TEXT)
    assert task.priority == pb.PRIORITY_NORMAL
    assert task.attempts == 1
    record = json_format.MessageToDict(task.record)
    assert record["status"] == "succeeded" and record["last_event"] == events[-1].id
    assert record["fallbacks"] == 0 and record["finished_ts"] >= record["started_ts"] > 0
    assert task.created_ms == record["requested_ts"] == events[0].ts
    assert task.terminal.id == events[-1].id
    assert json_format.MessageToDict(task.terminal.data)["result"]["text"] == "from the projection"
    assert task.deadline_ms > task.created_ms


async def test_the_projection_record_is_what_is_read(stub: Any, engine: Engine) -> None:
    """The projection path really reads the stored ``task_state`` record (a field written into
    it, and only there, reaches the client)."""
    reply = await stub.SubmitTask(text_task(), metadata=ACME)
    await watch_all(stub, reply.task_id)
    await catch_up(engine)
    settings = engine.settings
    key = ShardKeys(
        settings.namespace, partition_of(reply.task_id, settings.partitions), "task_state"
    ).view
    redis = engine.client.store.redis
    stored = orjson.loads(await redis.hget(key, reply.task_id))
    await redis.hset(key, reply.task_id, orjson.dumps({**stored, "fallbacks": 7}))
    task = await get(stub, reply.task_id)
    assert task.source == pb.TASK_SOURCE_PROJECTION
    assert json_format.MessageToDict(task.record)["fallbacks"] == 7


async def test_a_task_the_projection_has_not_seen_is_read_from_the_log(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A task just submitted (projections behind, or not running at all) is never NOT_FOUND:
    GetTask falls back to the engine's state and says so (source LOG, no record)."""
    stub = connect(await make_server(engine.settings))  # no worker: the task stays queued
    reply = await stub.SubmitTask(text_task(), metadata=ACME)
    task = await get(stub, reply.task_id)
    assert task.source == pb.TASK_SOURCE_LOG and not task.HasField("record")
    assert task.status == pb.TASK_STATUS_QUEUED and task.tenant == "acme"
    assert task.deadline_ms > task.created_ms > 0


async def test_a_lagging_projection_never_hides_a_newer_state(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A projection record of a task still in progress may be behind the log: GetTask then
    reports the engine's state (here: cancelled after the projection last saw it queued)."""
    stub = connect(await make_server(engine.settings))
    reply = await stub.SubmitTask(text_task(), metadata=ACME)
    await catch_up(engine)  # the record says "queued"
    cancelled = await stub.CancelTask(pb.CancelTaskRequest(task_id=reply.task_id), metadata=ACME)
    assert cancelled.status == pb.TASK_STATUS_CANCELLED
    task = await get(stub, reply.task_id)
    assert task.source == pb.TASK_SOURCE_LOG and task.status == pb.TASK_STATUS_CANCELLED
    assert task.terminal.type == "TaskCancelled"
    await catch_up(engine)
    task = await get(stub, reply.task_id)
    assert task.source == pb.TASK_SOURCE_PROJECTION and task.status == pb.TASK_STATUS_CANCELLED
    assert json_format.MessageToDict(task.record)["cancelled_stage"]


async def test_another_tenants_task_is_not_found_on_both_paths(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """NOT_FOUND (like a missing id) for another tenant's task whether the answer would come
    from the log or from the projection; its own tenant and the operator read it on both."""
    engine.start_worker()
    server: GrpcServer = await make_server(engine.settings)
    stub = connect(server)
    reply = await stub.SubmitTask(text_task(), metadata=ACME)
    await watch_all(stub, reply.task_id)
    for source in (pb.TASK_SOURCE_LOG, pb.TASK_SOURCE_PROJECTION):
        if source == pb.TASK_SOURCE_PROJECTION:
            await catch_up(engine)
        call = stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), metadata=BETA)
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
        for md in (ACME, OPS):
            task = await get(stub, reply.task_id, md)
            assert (task.source, task.tenant) == (source, "acme")


async def test_a_task_the_engine_has_forgotten_is_still_served_from_the_projection(
    stub: Any, engine: Engine
) -> None:
    """Past the engine's retention (its janitor forgets finished tasks) the projection still
    holds the finished task's record: GetTask answers from it alone, tenant check included."""
    reply = await stub.SubmitTask(text_task(), metadata=ACME)
    await watch_all(stub, reply.task_id)
    await catch_up(engine)
    store = engine.client.store
    cutoff = int(time.time() * 1000) + 60_000  # everything finished so far is "old"
    for p in range(engine.settings.partitions):
        await store.janitor(p, cutoff)
    assert await engine.client.state_word(reply.task_id) is None
    task = await get(stub, reply.task_id)
    assert task.source == pb.TASK_SOURCE_PROJECTION
    assert task.status == pb.TASK_STATUS_SUCCEEDED and task.tenant == "acme"
    assert not task.HasField("terminal") and task.deadline_ms == 0
    call = stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), metadata=BETA)
    assert await code_of(call) == grpc.StatusCode.NOT_FOUND
