"""Events written by the Lua scripts are the events the Python mapper writes: one definition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from engine.client import Client
from engine.core import mapper
from engine.core.events import Event
from tests.conftest import Workers
from tests.engine.helpers import wait_terminal

MakeClient = Callable[..., Client]
# every event type a script writes (submit, fetch, commit, cancel); TaskStarted/TaskRequeued from
# fetch.lua, the outcomes from commit.lua, TaskCancelled from cancel.lua
LUA_WRITTEN = {
    "TaskRequested",
    "TaskStarted",
    "TaskProgress",
    "TaskSucceeded",
    "TaskFailed",
    "TaskRetryScheduled",
    "TaskRequeued",
    "TaskDeadLettered",
    "TaskCancelled",
}


def _plain(fields: dict[Any, Any]) -> dict[str, Any]:
    out = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    out["data"] = orjson.loads(out["data"])
    return out


def _within(written: Any, python: Any) -> bool:
    """Every key of ``written`` (recursively) is in ``python`` with the same value."""
    if isinstance(written, dict) and isinstance(python, dict):
        return all(k in python and _within(v, python[k]) for k, v in written.items())
    return bool(written == python)


def python_twin(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[Event, Event]:
    """The event a script wrote, and the same event written by the Python mapper, both decoded."""
    lua = mapper.decode(entry_id, fields)
    python_fields = mapper.encode(lua)
    python, written = _plain(python_fields), _plain(fields)
    python_data, written_data = python.pop("data"), written.pop("data")
    assert python == written, lua.type  # the same envelope: type, task, tenant, ts, schema version
    # every field the script wrote is the model's, with the model's value (fields left at their
    # default are omitted by the worker's outbox; the decoded models below must still be equal)
    assert _within(written_data, python_data), (lua.type, written_data, python_data)
    return lua, mapper.decode(entry_id, python_fields)


async def test_lua_written_events_decode_like_python_written_ones(
    make_client: MakeClient, workers: Workers
) -> None:
    """For every event type a Lua script writes (fed by the real client, worker and scripts), the
    entry decodes to the model the Python mapper's entry of that model decodes to, field for
    field."""
    client = make_client(max_deliveries=2)
    cancelled = await client.submit("c")
    assert await client.cancel(cancelled)
    ids = [
        await client.submit("ok"),
        await client.submit("x", params={"script": ["stream:2"]}),
        await client.submit("x", params={"script": ["NetworkError", "ok"]}),
        await client.submit("x", params={"script": ["InvalidRequest"]}),
        await client.submit("x", params={"script": ["NetworkError", "NetworkError"]}),
    ]
    workers.start(client)
    await wait_terminal(client, ids)
    seen: set[str] = set()
    for keys in client.store.partitions:
        for eid, fields in await client.store.redis.xrange(keys.log):
            lua, python = python_twin(eid, fields)
            assert lua == python
            seen.add(lua.type)
    assert seen >= LUA_WRITTEN


async def test_fetch_written_dead_letter_decodes_like_python_written_one(
    make_client: MakeClient,
) -> None:
    """fetch.lua's own TaskDeadLettered (max_deliveries, on reclaiming a crashed consumer's
    entry) and its TaskStarted on a reclaim decode like the Python mapper's entries of them."""
    client = make_client(max_deliveries=2)
    store = client.store
    await store.prepare()
    task_id = await client.submit("x")
    assert len((await store.fetch(0, "crash-1", 10, "high,normal,low")).started) == 1
    await asyncio.sleep(1.1)
    assert (await store.claim(0, "crash-2", "normal", "0-0", 10)).started[0].attempt == 2
    await asyncio.sleep(1.1)
    assert (await store.claim(0, "crash-3", "normal", "0-0", 10)).dead == 1
    seen = []
    for eid, fields in await store.redis.xrange(store.keys(0).log):
        lua, python = python_twin(eid, fields)
        assert lua == python and lua.task_id == task_id
        seen.append((lua.type, getattr(lua.data, "reason", None)))
    assert seen[-1] == ("TaskDeadLettered", "max_deliveries")
    assert [t for t, _ in seen].count("TaskStarted") == 2
