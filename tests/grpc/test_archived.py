"""gRPC on an archived task (DESIGN.md §3 invariant 10): after the log was archived and
trimmed, GetTask has the terminal event and WatchTask replays the whole story and ends, from
the start and with `since`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.grpc.gen import tasks_pb2 as pb
from tests.archived import archive_now
from tests.conftest import Engine
from tests.grpc.conftest import ACME
from tests.grpc.test_flow import text_task, watch_all


async def test_watch_and_get_an_archived_task(stub: Any, engine: Engine, tmp_path: Path) -> None:
    """WatchTask from the start and after `since`, and GetTask, after `archive --min-age 0`."""
    reply = await stub.SubmitTask(text_task("hi", script=["stream:5"]), metadata=ACME)
    story = [e.id for e in await watch_all(stub, reply.task_id)]
    await archive_now(engine.client.store.redis, engine.settings, tmp_path)
    assert await engine.log(task_id=reply.task_id) == []  # really trimmed
    async with asyncio.timeout(15):
        assert [e.id for e in await watch_all(stub, reply.task_id)] == story
        for k in (0, 2):
            tail = await watch_all(stub, reply.task_id, since=story[k])
            assert [e.id for e in tail] == story[k + 1 :]
        got = await stub.GetTask(pb.GetTaskRequest(task_id=reply.task_id), metadata=ACME)
    assert got.status == pb.TASK_STATUS_SUCCEEDED
    assert got.terminal.id == story[-1]
