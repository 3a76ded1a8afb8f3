"""Engine contract: runs on the real redis-server and on fakeredis[lua] (``make_client``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from engine.client import Client
from engine.core.events import Status
from engine.core.keys import PRIORITIES
from engine.core.worker import Worker
from engine.errors import ConfigError, QueueFull, TaskNotFound
from providers.types import ProgressSink, ProviderRequest, ProviderResult
from tests.conftest import Workers
from tests.engine.helpers import (
    events_of,
    log_events,
    terminal_counts,
    wait_for,
    wait_terminal,
)

MakeClient = Callable[..., Client]


async def test_submit_run_succeed(make_client: MakeClient, workers: Workers) -> None:
    """A submitted task runs once and ends with exactly one TaskSucceeded holding the result."""
    client = make_client()
    task_id = await client.submit("hello world", tenant="acme")
    assert (await client.get(task_id)).status is Status.QUEUED
    workers.start(client)
    await wait_terminal(client, [task_id])
    events = await events_of(client, task_id)
    assert [e["type"] for e in events] == ["TaskRequested", "TaskStarted", "TaskSucceeded"]
    assert all(e["tenant"] == "acme" for e in events)
    view = await client.get(task_id)
    assert view.status is Status.SUCCEEDED and view.attempts == 1
    assert view.terminal is not None and view.terminal.data.result.text == "hello world"


async def test_watch_streams_progress_until_terminal(
    make_client: MakeClient, workers: Workers
) -> None:
    """watch() yields the task's events from the start, deltas included, and stops at the end."""
    client = make_client()
    task_id = await client.submit("x", params={"script": ["stream:3"]})
    workers.start(client)
    seen = [e async for e in client.watch(task_id)]
    types = [e.type for e in seen]
    assert types[0] == "TaskRequested" and types[-1] == "TaskSucceeded"
    text = "".join(e.data.delta for e in seen if e.type == "TaskProgress")
    assert text == "chunk0 chunk1 chunk2 "


async def test_idempotent_submit_writes_once(make_client: MakeClient) -> None:
    """The same idempotency key returns the same task id and appends nothing the second time."""
    client = make_client()
    first = await client.submit("a", idempotency_key="order-1")
    second = await client.submit("a", idempotency_key="order-1")
    concurrent = await asyncio.gather(
        *(client.submit("a", idempotency_key="order-2") for _ in range(5))
    )
    other_tenant = await client.submit("a", idempotency_key="order-1", tenant="other")
    assert first == second
    assert len(set(concurrent)) == 1
    assert other_tenant != first
    events = await log_events(client)
    assert sum(e["type"] == "TaskRequested" for e in events) == 3


async def test_queue_full_rejects_and_writes_nothing(make_client: MakeClient) -> None:
    """Over the per-priority depth limit, submit raises QueueFull and writes nothing."""
    client = make_client(queue_max_depth=3)
    for i in range(3):
        await client.submit(f"t{i}", priority="low")
    before = await log_events(client)
    with pytest.raises(QueueFull) as info:
        await client.submit("one too many", priority="low")
    assert info.value.priority == "low" and info.value.limit == 3
    assert await log_events(client) == before
    await client.submit("other priorities still accept", priority="high")


async def test_invalid_submit_writes_nothing(make_client: MakeClient) -> None:
    """A rejected submit leaves Redis untouched."""
    client = make_client()
    with pytest.raises(Exception, match="priority"):
        await client.submit("x", priority="urgent")
    assert await client.store.redis.keys(f"{client.settings.namespace}:*") == []


async def test_priority_order_high_normal_low(make_client: MakeClient, workers: Workers) -> None:
    """With every queue loaded, one fetch starts high, then normal, then low."""
    client = make_client()
    ids: dict[str, list[str]] = {}
    for priority in ("low", "normal", "high"):
        ids[priority] = [await client.submit(f"{priority}{i}", priority=priority) for i in range(3)]
    workers.start(client, concurrency=9)
    await wait_terminal(client, [i for group in ids.values() for i in group])
    started = [e["task_id"] for e in await log_events(client) if e["type"] == "TaskStarted"]
    assert started == ids["high"] + ids["normal"] + ids["low"]


async def test_low_priority_is_not_starved(make_client: MakeClient, workers: Workers) -> None:
    """A stream of high-priority work still lets low-priority tasks start early."""
    client = make_client()
    highs = [await client.submit(f"h{i}", priority="high") for i in range(30)]
    low = await client.submit("low", priority="low")
    workers.start(client, concurrency=1)
    await wait_terminal(client, [*highs, low])
    started = [e["task_id"] for e in await log_events(client) if e["type"] == "TaskStarted"]
    assert started.index(low) < 10


@pytest.mark.parametrize(
    ("error_class", "expected_delays_ms"),
    [
        ("RateLimited", [10, 20, 40]),
        ("NetworkError", [10, 20, 40]),
        ("Overloaded", [10, 20, 40]),
        ("ProviderTimeout", [10, 20, 30]),
    ],
)
async def test_retry_shapes(
    make_client: MakeClient, workers: Workers, error_class: str, expected_delays_ms: list[int]
) -> None:
    """Retryable errors are retried with their backoff shape, then succeed."""
    client = make_client()
    task_id = await client.submit("x", params={"script": [error_class] * 3 + ["ok"]})
    workers.start(client)
    await wait_terminal(client, [task_id])
    events = await events_of(client, task_id)
    retries = [e["data"] for e in events if e["type"] == "TaskRetryScheduled"]
    assert [r["delay_ms"] for r in retries] == expected_delays_ms
    assert {r["error"]["error_class"] for r in retries} == {error_class}
    assert events[-1]["type"] == "TaskSucceeded" and events[-1]["data"]["attempt"] == 4
    assert [e["data"]["attempt"] for e in events if e["type"] == "TaskStarted"] == [1, 2, 3, 4]


async def test_retry_after_is_honoured(make_client: MakeClient, workers: Workers) -> None:
    """A RateLimited retry_after longer than the backoff sets the delay."""
    client = make_client()
    task_id = await client.submit("x", params={"script": ["RateLimited:0.3", "ok"]})
    workers.start(client)
    await wait_terminal(client, [task_id])
    events = await events_of(client, task_id)
    retry = next(e for e in events if e["type"] == "TaskRetryScheduled")
    assert retry["data"]["delay_ms"] == 300
    started = [e for e in events if e["type"] == "TaskStarted"]
    assert started[1]["ts"] >= retry["data"]["due_ms"]


@pytest.mark.parametrize("error_class", ["InvalidRequest", "InsufficientCredits", "AuthFailed"])
async def test_fatal_errors_fail_without_retry(
    make_client: MakeClient, workers: Workers, error_class: str
) -> None:
    """Non-retryable errors end the task with TaskFailed after one attempt."""
    client = make_client()
    task_id = await client.submit("x", params={"script": [error_class]})
    workers.start(client)
    await wait_terminal(client, [task_id])
    types = [e["type"] for e in await events_of(client, task_id)]
    assert types == ["TaskRequested", "TaskStarted", "TaskFailed"]
    assert (await client.get(task_id)).status is Status.FAILED


async def test_retries_exhausted_dead_letter(make_client: MakeClient, workers: Workers) -> None:
    """A task that keeps failing is dead-lettered after the delivery limit, into the DLQ too."""
    client = make_client(max_deliveries=3)
    task_id = await client.submit("x", params={"script": ["NetworkError"]})
    workers.start(client)
    await wait_terminal(client, [task_id])
    events = await events_of(client, task_id)
    assert [e["type"] for e in events].count("TaskStarted") == 3
    assert events[-1]["type"] == "TaskDeadLettered"
    assert events[-1]["data"]["reason"] == "retries_exhausted"
    dlq = await client.store.redis.xrange(client.store.keys(0).dlq)
    assert [f[b"task"].decode() for _, f in dlq] == [task_id]


async def test_stalled_worker_cannot_write_a_second_terminal_event(
    make_client: MakeClient,
) -> None:
    """After a task is reclaimed, the stalled first holder is fenced out (attempt check)."""
    client = make_client()
    store = client.store
    await store.prepare()
    task_id = await client.submit("x")
    first = (await store.fetch(0, "stalled", 10, "high,normal,low")).started[0]
    await asyncio.sleep(1.1)  # past the visibility timeout
    second = (await store.claim(0, "rescuer", "normal", "0-0", 10)).started[0]
    assert (first.attempt, second.attempt) == (1, 2)

    def op(held: Any, kind: str) -> tuple[Any, ...]:
        data = orjson.dumps(
            {"attempt": held.attempt, "error": {"error_class": "X", "message": "m"}}
        )
        return (kind, task_id, held.attempt, held.priority, held.entry_id, data, "")

    # the stalled holder wakes up first, while the rescuer still runs attempt 2
    assert await store.commit(0, "stalled", [op(first, "P")]) == [0]
    assert await store.commit(0, "stalled", [op(first, "F")]) == [0]
    assert await store.commit(0, "rescuer", [op(second, "F")]) == [1]
    assert await store.commit(0, "stalled", [op(first, "F")]) == [0]
    events = await log_events(client)
    assert terminal_counts(events) == {task_id: 1}
    assert not [e for e in events if e["type"] == "TaskProgress"]


async def test_crashed_consumer_is_reclaimed_then_dead_lettered(
    make_client: MakeClient,
) -> None:
    """Entries of a consumer that never finishes are reclaimed, then dead-lettered at the limit."""
    client = make_client(max_deliveries=2)
    store = client.store
    await store.prepare()
    task_id = await client.submit("x")
    assert len((await store.fetch(0, "crash-1", 10, "high,normal,low")).started) == 1
    await asyncio.sleep(1.1)
    assert (await store.claim(0, "crash-2", "normal", "0-0", 10)).started[0].attempt == 2
    await asyncio.sleep(1.1)
    got = await store.claim(0, "crash-3", "normal", "0-0", 10)
    assert got.started == [] and got.dead == 1
    events = await events_of(client, task_id)
    assert events[-1]["type"] == "TaskDeadLettered"
    assert events[-1]["data"]["reason"] == "max_deliveries"
    assert (await store.claim(0, "crash-4", "normal", "0-0", 10)).started == []


async def test_malformed_entries_are_dead_lettered(
    make_client: MakeClient, workers: Workers
) -> None:
    """Foreign entries written straight into a work stream are dead-lettered; work goes on."""
    client = make_client()
    await client.store.prepare()
    queue = client.store.keys(0).queue("normal")
    await client.store.redis.xadd(queue, {"garbage": "1"})
    await client.store.redis.xadd(queue, {"t": "no-such-task"})
    good = await client.submit("still works")
    workers.start(client)
    await wait_terminal(client, [good])
    dlq = await client.store.redis.xrange(client.store.keys(0).dlq)
    assert [f[b"reason"] for _, f in dlq] == [b"malformed", b"malformed"]
    assert await client.store.redis.xlen(queue) == 0


async def test_cancel_before_start(make_client: MakeClient, workers: Workers) -> None:
    """A task cancelled while queued never starts and ends with one TaskCancelled."""
    client = make_client()
    task_id = await client.submit("x")
    assert await client.cancel(task_id) is Status.CANCELLED
    assert await client.cancel(task_id) is Status.CANCELLED  # idempotent
    other = await client.submit("y")
    workers.start(client)
    await wait_terminal(client, [other])
    types = [e["type"] for e in await events_of(client, task_id)]
    assert types == ["TaskRequested", "TaskCancelled"]
    with pytest.raises(TaskNotFound):
        await client.cancel("f" * 32)


class Blocking:
    """A provider that blocks until cancelled and records that it was."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


async def test_cancel_during_call(make_client: MakeClient, workers: Workers) -> None:
    """Cancelling a running task stops the provider call; one terminal event, TaskCancelled."""
    client = make_client()
    provider = Blocking()
    worker = workers.start(client, provider)
    task_id = await client.submit("x")

    async def running() -> bool:
        return (await client.get(task_id)).status is Status.RUNNING

    await wait_for(running)
    assert await client.cancel(task_id) is Status.CANCELLED
    await asyncio.wait_for(provider.cancelled.wait(), 10)
    await wait_for(lambda: _idle(worker))
    events = await events_of(client, task_id)
    assert events[-1]["type"] == "TaskCancelled" and events[-1]["data"]["stage"] == "running"
    assert terminal_counts(events) == {task_id: 1}


async def _idle(worker: Worker) -> bool:
    return worker.in_flight == 0


async def test_stop_releases_unfinished_work(make_client: MakeClient, workers: Workers) -> None:
    """Past the drain timeout, a stopping worker releases its calls; another one finishes them."""
    client = make_client(drain_timeout_s=0.2)
    first = workers.start(client, Blocking())
    task_id = await client.submit("x")

    async def running() -> bool:
        return (await client.get(task_id)).status is Status.RUNNING

    await wait_for(running)
    await workers.stop(first)
    assert (await client.get(task_id)).status is Status.QUEUED
    workers.start(client)
    await wait_terminal(client, [task_id])
    events = await events_of(client, task_id)
    assert [e["type"] for e in events] == [
        "TaskRequested",
        "TaskStarted",
        "TaskRequeued",
        "TaskStarted",
        "TaskSucceeded",
    ]


async def test_deadline_fails_the_task(make_client: MakeClient, workers: Workers) -> None:
    """A call still running at the task's deadline is stopped and the task fails."""
    client = make_client()
    task_id = await client.submit("x", deadline_s=0.3, params={"script": ["sleep:30"]})
    workers.start(client)
    await wait_terminal(client, [task_id])
    last = (await events_of(client, task_id))[-1]
    assert last["type"] == "TaskFailed"
    assert last["data"]["error"]["error_class"] == "DeadlineExceeded"


async def test_long_call_keeps_its_lease(make_client: MakeClient, workers: Workers) -> None:
    """A call longer than the visibility timeout is renewed, never reclaimed by a peer."""
    client = make_client(visibility_timeout_s=0.6)
    task_id = await client.submit("x", params={"script": ["sleep:2"]})
    first = workers.start(client)
    await wait_for(lambda: _is_running(client, task_id))
    second = workers.start(client)
    await wait_terminal(client, [task_id])
    events = await events_of(client, task_id)
    assert [e["type"] for e in events].count("TaskStarted") == 1
    assert first.stats["reclaimed"] == second.stats["reclaimed"] == 0


async def _is_running(client: Client, task_id: str) -> bool:
    return (await client.get(task_id)).status is Status.RUNNING


class Crashing:
    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        raise ZeroDivisionError("boom")

    async def aclose(self) -> None:
        return None


async def test_unexpected_exception_is_retried_then_dead_lettered(
    make_client: MakeClient, workers: Workers
) -> None:
    """A bug in a provider never kills the worker: the task retries, then dead-letters."""
    client = make_client(max_deliveries=2)
    task_id = await client.submit("x")
    workers.start(client, Crashing())
    await wait_terminal(client, [task_id])
    last = (await events_of(client, task_id))[-1]
    assert last["type"] == "TaskDeadLettered"
    assert last["data"]["error"]["error_class"] == "InternalError"


async def test_many_tasks_each_end_exactly_once(make_client: MakeClient, workers: Workers) -> None:
    """A mixed batch through two workers: every task gets exactly one terminal event."""
    client = make_client(max_deliveries=3)
    scripts = [["ok"], ["RateLimited", "ok"], ["InvalidRequest"], ["NetworkError"], ["stream:2"]]
    ids = await asyncio.gather(
        *(
            client.submit(
                f"t{i}",
                priority=PRIORITIES[i % 3].value,
                params={"script": scripts[i % len(scripts)]},
            )
            for i in range(200)
        )
    )
    workers.start(client, concurrency=16)
    workers.start(client, concurrency=16)
    await wait_terminal(client, list(ids))
    counts = terminal_counts(await log_events(client))
    assert counts == {i: 1 for i in ids}
    for priority in PRIORITIES:
        assert await client.store.redis.xlen(client.store.keys(0).queue(priority)) == 0


async def test_partition_count_mismatch_is_refused(make_client: MakeClient) -> None:
    """A producer or worker configured with another partition count is refused, not mis-routed."""
    client = make_client(partitions=2)
    await client.submit("x")
    other = make_client(namespace=client.settings.namespace, partitions=3)
    with pytest.raises(ConfigError, match="AIIS_PARTITIONS=3"):
        await other.submit("y")
    with pytest.raises(ConfigError):
        await other.store.prepare()
    assert sum(e["type"] == "TaskRequested" for e in await log_events(client)) == 1


async def test_reclaim_acknowledges_entries_deleted_while_pending(make_client: MakeClient) -> None:
    """A pending entry deleted from its stream is dropped from the PEL, not retried forever."""
    client = make_client()
    store = client.store
    await store.prepare()
    await client.submit("x")
    held = (await store.fetch(0, "crashed", 10, "high,normal,low")).started[0]
    queue = store.keys(0).queue("normal")
    await store.redis.xdel(queue, held.entry_id)
    await asyncio.sleep(1.1)
    got = await store.claim(0, "rescuer", "normal", "0-0", 10)
    assert got.started == []
    pending = await store.redis.xpending(queue, "workers")
    assert pending["pending"] == 0


@pytest.mark.slow
async def test_a_cancelled_watch_always_ends(real_client: Callable[..., Client]) -> None:
    """Cancelling a consumer of watch() ends it, even when redis-py swallows the cancellation
    of the blocked XREAD (redis-py#2028: a few percent of cancels, depending on timing)."""
    client = real_client()
    task_id = await client.submit("never runs: no worker")
    rng = random.Random(2028)

    async def consume() -> None:
        async for _ in client.watch(task_id, block_ms=50):
            pass

    stuck = 0
    for _ in range(200):
        running = asyncio.create_task(consume())
        await asyncio.sleep(rng.uniform(0, 0.12))
        running.cancel()
        # without the check a swallowed cancel never ends; 1.5 s only absorbs a loaded machine
        done, _ = await asyncio.wait({running}, timeout=1.5)
        if not done:
            stuck += 1
            running.cancel()
            await asyncio.wait({running}, timeout=2)
    assert stuck == 0


class Counting:
    """A provider that counts the calls running at once (each 0.1 s) and keeps the peak."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.1)
        finally:
            self.now -= 1
        return ProviderResult(provider="counting", model="m", text=request.prompt)

    async def aclose(self) -> None:
        return None


async def test_a_worker_never_runs_more_calls_than_its_limit_and_reaches_it(
    real_client: Callable[..., Client], workers: Workers
) -> None:
    """DESIGN.md §3.6 (bounded in-flight calls): 40 tasks queued at once through one worker of
    concurrency 4, on the real redis-server: never more than 4 provider calls at a time, and 4
    are reached (the limit holds without starving the pool); every task succeeds."""
    client = real_client()
    await client.store.prepare()
    ids = [await client.submit(f"t{i}") for i in range(40)]
    provider = Counting()
    workers.start(client, provider, concurrency=4)
    await wait_terminal(client, ids)
    assert provider.peak == 4
    assert [(await client.get(t)).status for t in ids] == [Status.SUCCEEDED] * len(ids)
