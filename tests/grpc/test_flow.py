"""TaskService end to end through a real channel: submit, watch, resume, get, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import orjson
from google.protobuf import json_format

from gateway.grpc.gen import tasks_pb2 as pb
from gateway.grpc.server import GrpcServer
from tests.conftest import Engine
from tests.grpc.conftest import ACME, OPS

TERMINAL = {"TaskSucceeded", "TaskFailed", "TaskDeadLettered", "TaskCancelled"}


def text_task(prompt: str = "hello", **params: Any) -> pb.SubmitTaskRequest:
    request = pb.SubmitTaskRequest(kind=pb.TASK_KIND_TEXT, prompt=prompt)
    if params:
        request.params.update(params)
    return request


async def watch_all(
    stub: Any, task_id: str, since: str = "", md: Any = ACME, timeout: float = 15
) -> list[pb.Event]:
    """Every event the stream yields, until the server ends it."""
    async with asyncio.timeout(timeout):
        call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id, since=since), metadata=md)
        return [event async for event in call]


async def test_submit_then_watch_until_terminal(stub: Any, engine: Engine) -> None:
    """A submitted task streams its events in log order, the stream ends after the terminal one,
    and GetTask then reports it succeeded with that terminal event."""
    reply = await stub.SubmitTask(text_task("hi there", script=["stream:3"]), metadata=ACME)
    events = await watch_all(stub, reply.task_id)
    types = [e.type for e in events]
    assert types[:2] == ["TaskRequested", "TaskStarted"] and types[-1] == "TaskSucceeded"
    assert set(types[2:-1]) == {"TaskProgress"}  # deltas are coalesced: one event or more
    assert [e.id for e in events] == await engine.log(task_id=reply.task_id)
    assert {(e.task_id, e.tenant, e.v) for e in events} == {(reply.task_id, "acme", 1)}
    done = json_format.MessageToDict(events[-1].data)
    assert done["result"]["text"] == "hi there"
    deltas = "".join(json_format.MessageToDict(e.data)["delta"] for e in events[2:-1])
    assert deltas == "chunk0 chunk1 chunk2 "
    task = await stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), metadata=ACME)
    assert task.status == pb.TASK_STATUS_SUCCEEDED
    assert (task.tenant, task.kind) == ("acme", pb.TASK_KIND_TEXT)
    assert task.priority == pb.PRIORITY_NORMAL
    assert task.attempts == 1 and task.deadline_ms > task.created_ms > 0
    assert task.terminal.id == events[-1].id and task.terminal.type == "TaskSucceeded"


async def test_resume_from_since_has_no_gap_and_no_duplicate(stub: Any, engine: Engine) -> None:
    """A watch cut off mid-task and resumed with ``since`` = the last id received yields exactly
    the rest of the task's log; resuming after the terminal event ends at once, empty."""
    reply = await stub.SubmitTask(text_task(script=["stream:40"]), metadata=ACME)
    first: list[pb.Event] = []
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=reply.task_id), metadata=ACME)
    async with asyncio.timeout(15):
        async for event in call:
            first.append(event)
            if event.type == "TaskProgress":
                break  # mid-stream: more progress is still being written
    call.cancel()
    rest = await watch_all(stub, reply.task_id, since=first[-1].id)
    assert rest[-1].type == "TaskSucceeded"
    assert [e.id for e in first + rest] == await engine.log(task_id=reply.task_id)
    for k in (0, 3):  # from the finished log too
        tail = await watch_all(stub, reply.task_id, since=(first + rest)[k].id)
        assert [e.id for e in tail] == [e.id for e in (first + rest)[k + 1 :]]
    assert await watch_all(stub, reply.task_id, since=rest[-1].id, timeout=3) == []


async def test_cancel_a_running_task(stub: Any) -> None:
    """CancelTask stops a running task: it answers CANCELLED, the watch ends with TaskCancelled,
    and a second cancel reports the same terminal status."""
    reply = await stub.SubmitTask(text_task(script=["sleep:30"]), metadata=ACME)
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=reply.task_id), metadata=ACME)
    seen: list[str] = []
    async with asyncio.timeout(15):
        async for event in call:
            seen.append(event.type)
            if event.type == "TaskStarted":
                cancel = await stub.CancelTask(
                    pb.CancelTaskRequest(task_id=reply.task_id), metadata=ACME
                )
                assert cancel.status == pb.TASK_STATUS_CANCELLED
    assert seen == ["TaskRequested", "TaskStarted", "TaskCancelled"]
    again = await stub.CancelTask(pb.CancelTaskRequest(task_id=reply.task_id), metadata=ACME)
    assert again.status == pb.TASK_STATUS_CANCELLED
    task = await stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), metadata=ACME)
    assert task.status == pb.TASK_STATUS_CANCELLED and task.terminal.type == "TaskCancelled"


async def test_idempotency_key_returns_the_same_task(stub: Any) -> None:
    """Two submits with one idempotency key get one task id; another key gets another."""
    request = text_task()
    request.idempotency_key = "order-17"
    a = await stub.SubmitTask(request, metadata=ACME)
    b = await stub.SubmitTask(request, metadata=ACME)
    request.idempotency_key = "order-18"
    c = await stub.SubmitTask(request, metadata=ACME)
    assert a.task_id == b.task_id != c.task_id


async def test_chat_priority_params_deadline_reach_the_engine(stub: Any, engine: Engine) -> None:
    """Chat messages, priority, deadline and params (integral numbers as ints) arrive intact."""
    request = pb.SubmitTaskRequest(
        kind=pb.TASK_KIND_CHAT,
        chat=pb.ChatInput(
            messages=[
                pb.ChatMessage(role="system", content="be brief"),
                pb.ChatMessage(role="user", content="what is 2+2?"),
            ]
        ),
        priority=pb.PRIORITY_HIGH,
        deadline_s=60,
    )
    request.params.update({"max_tokens": 100, "temperature": 0.5, "script": ["ok"]})
    reply = await stub.SubmitTask(request, metadata=OPS)
    events = [e async for e in engine.client.watch(reply.task_id)]
    requested = events[0]
    assert requested.type == "TaskRequested"
    data = requested.data.model_dump(mode="json")
    assert data["kind"] == "chat" and data["priority"] == "high"
    assert data["input"][1] == {"role": "user", "content": "what is 2+2?"}
    assert data["params"] == {"max_tokens": 100, "temperature": 0.5, "script": ["ok"]}
    assert type(data["params"]["max_tokens"]) is int
    assert 59_000 <= data["deadline_ms"] - requested.ts <= 61_000
    assert requested.tenant == "default"  # an operator token without a tenant
    assert events[-1].type == "TaskSucceeded"


async def test_operator_submits_for_a_tenant(stub: Any) -> None:
    """An operator token may name the tenant; a tenant token's tasks are its own tenant's."""
    request = text_task()
    request.tenant = "beta"
    by_ops = await stub.SubmitTask(request, metadata=OPS)
    by_acme = await stub.SubmitTask(text_task(), metadata=ACME)
    got_ops = await stub.GetTask(pb.GetTaskRequest(task_id=by_ops.task_id), metadata=OPS)
    got_acme = await stub.GetTask(pb.GetTaskRequest(task_id=by_acme.task_id), metadata=OPS)
    assert (got_ops.tenant, got_acme.tenant) == ("beta", "acme")


async def test_watch_ends_on_server_side_when_the_client_goes_away(
    server: GrpcServer, stub: Any
) -> None:
    """Cancelling a watch call mid-task ends the server's stream (the active-watch count drops
    back to 0) and the server keeps serving new watches."""
    assert server.service is not None
    reply = await stub.SubmitTask(text_task(script=["sleep:30"]), metadata=ACME)
    calls = [
        stub.WatchTask(pb.WatchTaskRequest(task_id=reply.task_id), metadata=ACME) for _ in range(8)
    ]
    for call in calls:
        async with asyncio.timeout(10):
            assert (await call.read()).type == "TaskRequested"
    assert server.service.active_watches == 8
    for call in calls:
        call.cancel()
    async with asyncio.timeout(5):
        while server.service.active_watches:  # noqa: ASYNC110 - the server's counter
            await asyncio.sleep(0.02)
    assert all(call.cancelled() for call in calls)
    await stub.CancelTask(pb.CancelTaskRequest(task_id=reply.task_id), metadata=ACME)
    events = await _watch_types(stub, reply.task_id)
    assert events[-1] == "TaskCancelled"
    assert server.service.active_watches == 0


async def _watch_types(stub: Any, task_id: str) -> list[str]:
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=ACME)
    async with asyncio.timeout(10):
        return [e.type async for e in call]


async def test_stopping_the_server_ends_open_watches_with_unavailable(
    server: GrpcServer, stub: Any, engine: Engine
) -> None:
    """A watch still open when the server stops ends with UNAVAILABLE after the grace period
    (the client resumes elsewhere with ``since``); it does not hang."""
    reply = await stub.SubmitTask(text_task(script=["sleep:30"]), metadata=ACME)
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=reply.task_id), metadata=ACME)
    async with asyncio.timeout(10):
        assert (await call.read()).type == "TaskRequested"
    await server.stop()
    async with asyncio.timeout(5):
        try:
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("the watch ended without an error status")
    await engine.client.cancel(reply.task_id)  # the worker need not drain a 30 s call


async def test_traceparent_metadata_is_carried_into_the_task(stub: Any, engine: Engine) -> None:
    """A valid ``traceparent`` in the call's metadata reaches TaskRequested; an invalid one is
    ignored (W3C: a new trace starts) and the submit still succeeds."""
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    carried = []
    for value in (tp, "not-a-traceparent"):
        reply = await stub.SubmitTask(text_task("t"), metadata=(*ACME, ("traceparent", value)))
        got = await stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), metadata=ACME)
        assert got.task_id == reply.task_id
        store = engine.client.store
        for p in range(engine.settings.partitions):
            for _, fields in await store.entries(store.keys(p).log):
                if (
                    fields[b"task"].decode() == reply.task_id
                    and fields[b"type"] == b"TaskRequested"
                ):
                    carried.append(orjson.loads(fields[b"data"]).get("traceparent"))
    assert carried == [tp, None]
