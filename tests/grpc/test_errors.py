"""Every failure is a gRPC status code through a real channel, never a crash or a hang."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from engine.client import Client
from engine.runtime.embedded import free_port
from gateway.grpc.gen import tasks_pb2 as pb
from tests.conftest import Engine, fast_settings
from tests.grpc.conftest import ACME, BETA, OPS, MakeServer, bearer

UNKNOWN_ID = "0" * 32


async def status_of(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, details and trailing metadata a failing call ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(15):
            if hasattr(call, "read"):  # a stream: read to its end
                while await call.read() is not grpc.aio.EOF:
                    pass
            else:
                await call
            raise AssertionError("the call succeeded")
    exc = info.value
    return exc.code(), exc.details() or "", dict(exc.trailing_metadata() or ())


def invalid(**fields: Any) -> pb.SubmitTaskRequest:
    return pb.SubmitTaskRequest(**fields)


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (invalid(prompt=""), "input", "prompt is empty"),
        (invalid(prompt="x" * 2000), "input", "limit is 1000"),
        (invalid(kind=pb.TASK_KIND_CHAT, prompt="hi"), "input", "non-empty list"),
        (
            invalid(
                kind=pb.TASK_KIND_CHAT,
                chat=pb.ChatInput(messages=[pb.ChatMessage(role="robot", content="hi")]),
            ),
            "input.0.role",
            "",
        ),
        (invalid(prompt="hi", deadline_s=-1), "deadline_s", "greater than 0"),
        (invalid(prompt="hi", kind=99), "kind", "unknown kind"),  # type: ignore[arg-type]
        (invalid(prompt="hi", priority=7), "priority", "unknown priority"),  # type: ignore[arg-type]
        (invalid(prompt="hi", idempotency_key="k" * 201), "idempotency_key", ""),
    ],
)
async def test_invalid_submit_names_the_field(
    engine: Engine, make_server: MakeServer, connect: Any, request_: Any, field: str, words: str
) -> None:
    """A bad task is INVALID_ARGUMENT; the details and the ``aiis-field`` trailer name the
    field, and nothing is written."""
    settings = engine.settings.model_copy(update={"max_prompt_chars": 1000})
    stub = connect(await make_server(settings))
    code, details, trailer = await status_of(stub.SubmitTask(request_, metadata=ACME))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer.get("aiis-field") == field
    assert details.startswith(f"{field}: ") and words in details
    assert await engine.client.store.entries(engine.client.store.keys(0).log) == []


async def test_bad_ids_and_since_are_invalid_or_out_of_range(stub: Any) -> None:
    """An empty task id and a malformed ``since`` are INVALID_ARGUMENT naming the field; a
    ``since`` ahead of the log is OUT_OF_RANGE."""
    code, _, trailer = await status_of(stub.GetTask(pb.GetTaskRequest(task_id=""), metadata=ACME))
    assert (code, trailer.get("aiis-field")) == (grpc.StatusCode.INVALID_ARGUMENT, "task_id")
    task_id = (await stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME)).task_id
    watch = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id, since="yesterday"), metadata=ACME)
    code, _, trailer = await status_of(watch)
    assert (code, trailer.get("aiis-field")) == (grpc.StatusCode.INVALID_ARGUMENT, "since")
    ahead = pb.WatchTaskRequest(task_id=task_id, since="99999999999999-0")
    code, details, _ = await status_of(stub.WatchTask(ahead, metadata=ACME))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "ahead of the log" in details


async def test_queue_full_is_resource_exhausted(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """Past AIIS_QUEUE_MAX_DEPTH a submit is RESOURCE_EXHAUSTED (no worker drains the queue)."""
    settings = engine.settings.model_copy(update={"queue_max_depth": 2})
    stub = connect(await make_server(settings))
    for _ in range(2):
        await stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME)
    code, details, _ = await status_of(
        stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in details


async def test_spent_budget_is_resource_exhausted(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A tenant whose daily budget is spent gets RESOURCE_EXHAUSTED, saying so."""
    settings = engine.settings.model_copy(update={"budgets": '{"tenants": {"acme": 0.0}}'})
    stub = connect(await make_server(settings))
    code, details, _ = await status_of(
        stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "budget exceeded" in details


async def test_too_many_watches_and_too_big_messages_are_resource_exhausted(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """One watch over ``max_watches`` and a request over ``max_receive_message_bytes`` are
    RESOURCE_EXHAUSTED; the open watch is unaffected."""
    server = await make_server(engine.settings, max_watches=1, max_receive_message_bytes=4096)
    stub = connect(server)
    task_id = (await stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME)).task_id
    first = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=ACME)
    assert (await first.read()).type == "TaskRequested"
    code, details, _ = await status_of(
        stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=ACME)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "watches" in details
    big = pb.SubmitTaskRequest(prompt="x" * 5000)
    code, _, _ = await status_of(stub.SubmitTask(big, metadata=ACME))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()


async def test_unknown_task_is_not_found(stub: Any) -> None:
    """GetTask, CancelTask and WatchTask of a task that does not exist are NOT_FOUND."""
    for call in (
        stub.GetTask(pb.GetTaskRequest(task_id=UNKNOWN_ID), metadata=ACME),
        stub.CancelTask(pb.CancelTaskRequest(task_id=UNKNOWN_ID), metadata=ACME),
        stub.WatchTask(pb.WatchTaskRequest(task_id=UNKNOWN_ID), metadata=ACME),
    ):
        code, details, _ = await status_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and UNKNOWN_ID in details


@pytest.mark.parametrize(
    "metadata",
    [(), bearer("tok-nobody"), (("authorization", "Basic dG9rLWFjbWU="),)],
    ids=["none", "unknown-token", "not-bearer"],
)
async def test_missing_or_unknown_token_is_unauthenticated(stub: Any, metadata: Any) -> None:
    """Without a configured bearer token every RPC is UNAUTHENTICATED."""
    for call in (
        stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=metadata),
        stub.GetTask(pb.GetTaskRequest(task_id=UNKNOWN_ID), metadata=metadata),
        stub.CancelTask(pb.CancelTaskRequest(task_id=UNKNOWN_ID), metadata=metadata),
        stub.WatchTask(pb.WatchTaskRequest(task_id=UNKNOWN_ID), metadata=metadata),
    ):
        code, _, _ = await status_of(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_another_tenants_task_is_not_found(stub: Any, engine: Engine) -> None:
    """A tenant cannot read, watch or cancel another tenant's tasks (NOT_FOUND, like a missing
    id) nor submit for it (PERMISSION_DENIED); the task is untouched and its own tenant and the
    operator still can."""
    task_id = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(prompt="hi", params={"script": ["sleep:30"]}), metadata=ACME
        )
    ).task_id
    for call in (
        stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=BETA),
        stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), metadata=BETA),
        stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=BETA),
    ):
        code, details, _ = await status_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "beta" not in details
    call = stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi", tenant="acme"), metadata=BETA)
    code, details, _ = await status_of(call)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'beta'" in details
    view = await engine.client.get(task_id)
    assert view.status.value in ("queued", "running")
    assert (await stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=OPS)).tenant == "acme"
    cancelled = await stub.CancelTask(pb.CancelTaskRequest(task_id=task_id), metadata=ACME)
    assert cancelled.status == pb.TASK_STATUS_CANCELLED


async def test_redis_down_is_unavailable(make_server: MakeServer, connect: Any) -> None:
    """With nothing listening on the Redis port every RPC is UNAVAILABLE (without the address
    in the reply), and the health of aiis.v1.TaskService is NOT_SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    url = f"redis://127.0.0.1:{free_port()}/0"
    server = await make_server(fast_settings(redis_url=url))
    stub = connect(server)
    for call in (
        stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME),
        stub.GetTask(pb.GetTaskRequest(task_id=UNKNOWN_ID), metadata=ACME),
        stub.CancelTask(pb.CancelTaskRequest(task_id=UNKNOWN_ID), metadata=ACME),
        stub.WatchTask(pb.WatchTaskRequest(task_id=UNKNOWN_ID), metadata=ACME),
    ):
        code, details, _ = await status_of(call)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1" not in details
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="aiis.v1.TaskService"))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_redis_stopping_mid_watch_ends_it_with_unavailable(
    make_server: MakeServer, connect: Any, tmp_path: Any
) -> None:
    """A watch whose Redis goes away ends with UNAVAILABLE instead of hanging."""
    from engine.runtime.embedded import EmbeddedRedis

    redis = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    redis.start()
    settings = fast_settings(redis_url=redis.url)
    client = Client.from_url(redis.url, settings)
    try:
        await client.store.prepare()
        stub = connect(await make_server(settings, client=client))
        request = pb.SubmitTaskRequest(prompt="hi", params={"script": ["sleep:30"]})
        task_id = (await stub.SubmitTask(request, metadata=ACME)).task_id
        call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), metadata=ACME)
        assert (await call.read()).type == "TaskRequested"
        redis.stop()
        code, _, _ = await status_of(call)
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        redis.stop()
        await client.aclose()


async def test_unexpected_errors_are_internal_without_details(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A Redis error the engine does not translate (here WRONGTYPE on the state hash) is
    INTERNAL "internal error": the Redis message does not reach the client."""
    stub = connect(await make_server(engine.settings))
    await engine.client.store.redis.set(engine.client.store.keys(0).state, "not a hash")
    code, details, _ = await status_of(
        stub.GetTask(pb.GetTaskRequest(task_id=UNKNOWN_ID), metadata=ACME)
    )
    assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error")


async def test_partition_mismatch_is_failed_precondition(
    engine: Engine, make_server: MakeServer, connect: Any
) -> None:
    """A server configured with another partition count than the deployment's refuses to
    submit with FAILED_PRECONDITION naming AIIS_PARTITIONS."""
    stub = connect(await make_server(engine.settings.model_copy(update={"partitions": 2})))
    code, details, _ = await status_of(
        stub.SubmitTask(pb.SubmitTaskRequest(prompt="hi"), metadata=ACME)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "AIIS_PARTITIONS" in details
