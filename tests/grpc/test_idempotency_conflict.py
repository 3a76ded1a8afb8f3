"""Issue 18 on gRPC: an idempotency key reused with another request is ALREADY_EXISTS naming
the field, on SubmitTask and per item of SubmitTasks; the same request still gets its task."""

from __future__ import annotations

from typing import Any

import grpc

from gateway.grpc.gen import tasks_pb2 as pb
from tests.conftest import Engine
from tests.grpc.conftest import ACME
from tests.grpc.test_errors import status_of
from tests.grpc.test_stream import batch, results, submit_all, task


async def test_a_reused_key_with_another_prompt_is_already_exists(
    stub: Any, engine: Engine
) -> None:
    """SubmitTask: same key + same prompt → the same task; another prompt → ALREADY_EXISTS
    with the ``aiis-field`` trailer ``idempotency_key`` and the task named, nothing written.
    SubmitTasks: the conflicting item fails alone, with the same code."""
    first = await stub.SubmitTask(task("hello", idempotency_key="k-1"), metadata=ACME)
    again = await stub.SubmitTask(task("hello", idempotency_key="k-1"), metadata=ACME)
    assert again.task_id == first.task_id
    logged = await engine.log()
    code, details, trailer = await status_of(
        stub.SubmitTask(task("goodbye", idempotency_key="k-1"), metadata=ACME)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert trailer.get("aiis-field") == "idempotency_key" and first.task_id in details
    assert await engine.log() == logged
    items = results(
        await submit_all(
            stub, [batch(task("hello", idempotency_key="k-1"), task("bye", idempotency_key="k-1"))]
        )
    )
    assert items[0].task_id == first.task_id
    assert items[1].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert items[1].error.field == "idempotency_key"
    assert isinstance(items[1], pb.SubmitTaskResult)
