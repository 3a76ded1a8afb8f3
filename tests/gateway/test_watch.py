"""`aiis watch` follows a task through the gateway and resumes with --since."""

from __future__ import annotations

import io

from gateway.watch import Watcher
from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway


async def test_watch_prints_a_tasks_events_and_resumes_after_since(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Watching a task prints each event once; --since prints only what came after it."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    task_id = await engine.client.submit("hi", params={"script": ["stream:4"]})
    out = io.StringIO()
    assert await Watcher(gateway.ws_url, None, task_id, None, None, out=out).run() == 0
    ids = [line.split()[0] for line in out.getvalue().splitlines()]
    assert ids == await engine.log(task_id=task_id)
    out = io.StringIO()
    assert await Watcher(gateway.ws_url, None, task_id, None, ids[1], out=out).run() == 0
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ids[2:]
