"""Provider health through the real composition: the sandbox's faults, the real router (breakers
on the real redis-server), a real worker, the projections, ``aiis stats --json``, the gateway's
``/metrics`` and the ops reader's alert — each must agree with the calls the sandbox received."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from engine.client import Client
from engine.core.keys import ops_key
from engine.operations.ops import Ops
from engine.runtime.cli import main
from engine.runtime.workers import new_worker
from engine.settings import Settings
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from projections.fold import Position, apply_batch
from projections.registry import PROJECTIONS
from projections.replay import verify
from projections.settings import ProjectionSettings
from projections.source import history
from projections.stats import gather
from projections.storage import ShardStore
from projections.views.cost import day_name, to_nanos
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox import Sandbox, start_sandbox
from tests.faulty_run import catch_up, until_status, worker_at_sandbox

from .conftest import Log, requested, succeeded

TASKS = 14


async def _run(settings: Settings, sandbox: Sandbox, tasks: int) -> list[str]:
    """``tasks`` text tasks through a real worker calling the real router at the sandbox."""
    async with worker_at_sandbox(settings, sandbox) as client:
        ids = [
            await client.submit(kind="text", input=f"health {i}", tenant="acme")
            for i in range(tasks)
        ]
        await until_status(client, ids, "succeeded")
    return ids


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start!r}")


async def test_health_agrees_with_what_the_sandbox_received(
    redis: aioredis.Redis,
    settings: Settings,
    proj: ProjectionSettings,
    store: ShardStore,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Gemini answers 503 to every call, OpenAI one 500 then healthy: the view, `aiis stats
    --json`, /metrics and the error-rate alert count exactly the calls the sandbox received, by
    outcome and class, skips of the open breaker apart, with OpenAI's latency percentiles."""
    settings = settings.model_copy(update={"alert_error_min_calls": 3})
    async with start_sandbox() as sandbox:
        sandbox.inject("gemini", "unavailable", times=10_000)
        sandbox.inject("openai", "server_error", times=1)
        await _run(settings, sandbox, TASKS)
        received: dict[str, Any] = sandbox.stats()
    calls = received["requests"]
    faults = received["faults_by_provider"]
    gemini_calls, openai_calls = calls["gemini"], calls["openai"]
    assert faults["gemini"] == {"unavailable": gemini_calls}
    assert faults["openai"] == {"server_error": 1}
    # the breaker (threshold 5) opened: gemini was not called for every task
    assert 5 <= gemini_calls < TASKS

    await catch_up(redis, store, settings, proj)
    now = int(time.time() * 1000)
    report = await gather(store, settings.partitions, now, day_name(now // 86_400_000))
    gemini, openai = report["providers"]["gemini"], report["providers"]["openai"]
    # one gemini call or skip per attempt: TASKS, plus the retry of the task whose openai call
    # failed (plus any reclaim a loaded machine may cause), as the log says
    attempts = 0
    for p in range(settings.partitions):
        for _, f in await redis.xrange(f"{settings.namespace}:{{p{p}}}:log"):
            attempts += f[b"type"] == b"TaskStarted"
    assert attempts >= TASKS + 1
    assert (gemini["ok"], gemini["fail"]) == (0, gemini_calls)
    assert gemini["errors"] == {"Overloaded": gemini_calls}
    assert gemini["skipped_open"] == attempts - gemini_calls
    assert gemini["window"]["success_rate"] == 0.0
    assert (openai["ok"], openai["fail"]) == (openai_calls - 1, 1)
    assert openai["errors"] == {"Overloaded": 1}
    assert openai["skipped_open"] == 0
    assert all(openai["latency_ms"][q] is not None for q in ("p50", "p95", "p99"))
    assert gemini["breaker"] == "opened"
    assert await verify(store, settings.partitions, list(PROJECTIONS.values()), None) == []

    # `aiis stats --json` says the same
    monkeypatch.setenv("AIIS_REDIS_URL", redis_url)
    monkeypatch.setenv("AIIS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("AIIS_PARTITIONS", str(settings.partitions))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stats", "--json"]) == 0
    cli = orjson.loads(capsys.readouterr().out)["providers"]
    for name, want in (("gemini", gemini), ("openai", openai)):
        got = cli[name]
        assert (got["ok"], got["fail"], got["skipped_open"]) == (
            want["ok"],
            want["fail"],
            want["skipped_open"],
        )

    # /metrics says the same
    gateway = Gateway(
        settings,
        GatewaySettings(tokens="", tokens_file=None),
        proj=ProjectionSettings(),
        host="127.0.0.1",
        port=0,
    )
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            text = (await http.get("/metrics")).text
    finally:
        await gateway.stop()
    ok = 'aiis_provider_calls_total{outcome="ok",provider="%s"}'
    failed = 'aiis_provider_calls_total{outcome="failed",provider="%s"}'
    assert _metric(text, ok % "gemini") == 0
    assert _metric(text, failed % "gemini") == gemini_calls
    assert _metric(text, ok % "openai") == openai_calls - 1
    assert _metric(text, failed % "openai") == 1
    skipped = 'aiis_provider_skipped_total{provider="gemini",reason="open"}'
    assert _metric(text, skipped) == attempts - gemini_calls
    assert _metric(text, 'aiis_provider_latency_ms{provider="openai",quantile="p95"}') > 0

    # the ops reader sees the same calls: gemini's error-rate alert is raised (its failures
    # behind openai's successful fallback count), openai's is not (or no longer)
    client = Client.from_url(redis_url, settings)
    ops = Ops(client)
    try:
        await ops.load()
        while await ops.step():
            pass
        st = ops.alerts._calls  # (rule, provider) -> window of calls
        window = {p: (len(c.samples), c.failures) for (_, p), c in st.items()}
        assert window["gemini"] == (gemini_calls, gemini_calls)
        assert window["openai"] == (openai_calls, 1)
        last: dict[str, str] = {}  # alert id -> its latest record type
        for _, fields in await redis.xrange(ops_key(settings.namespace)):
            if fields[b"type"] in (b"AlertRaised", b"AlertResolved"):
                last[orjson.loads(fields[b"data"])["alert_id"]] = fields[b"type"].decode()
        assert last["provider_error_rate:gemini"] == "AlertRaised"
        # openai's one failure in 15 calls is under the clear threshold by the end
        assert last.get("provider_error_rate:openai", "AlertResolved") == "AlertResolved"
    finally:
        await ops.aclose()
        await client.aclose()


async def test_a_failed_call_that_reported_usage_is_billed(
    redis: aioredis.Redis,
    settings: Settings,
    proj: ProjectionSettings,
    store: ShardStore,
    redis_url: str,
) -> None:
    """An Anthropic stream that fails after `message_start` (which carries the billed usage):
    the router's notice carries that usage and cost, the cost view counts it (`failed_billed`),
    and the ops reader adds it to the tenant's spend — with the successful retry's cost."""
    async with start_sandbox() as sandbox:
        sandbox.inject("anthropic", "midstream_error", times=1)
        client = Client.from_url(redis_url, settings)
        await client.store.prepare()
        provider_settings = ProviderSettings(
            AIIS_PROVIDERS_PREFIX=settings.namespace, AIIS_TEXT_CHAIN="anthropic"
        )
        router = build_processor(client.store.redis, provider_settings, sandbox.url)
        worker = new_worker(client.store, router, concurrency=2)
        run = asyncio.create_task(worker.run())
        tid = await client.submit(kind="text", input="bill me", tenant="acme")
        try:
            async with asyncio.timeout(30):
                while (await client.get(tid)).status.value != "succeeded":  # noqa: ASYNC110 - polls Redis
                    await asyncio.sleep(0.02)
        finally:
            worker.stop()
            await run
            await router.aclose()
        assert sandbox.stats()["requests"] == {"anthropic": 2}
    failed = [
        d["detail"]
        for t, d in await _task_events(redis, settings, tid)
        if t == "TaskProgress" and d.get("notice") == "attempt"
    ]
    assert [n["outcome"] for n in failed] == ["error", "ok"]
    billed = failed[0]
    assert billed["usage"]["input_tokens"] > 0 and billed["cost_usd"] > 0
    succeeded = next(d for t, d in await _task_events(redis, settings, tid) if t == "TaskSucceeded")

    await catch_up(redis, store, settings, proj)
    now = int(time.time() * 1000)
    day = day_name(now // 86_400_000)
    report = await gather(store, settings.partitions, now, day)
    cost = report["cost_today"]["by_provider"]["anthropic"]
    assert (cost["requests"], cost["failed_billed"]) == (1, 1)
    assert (
        cost["input_tokens"] == billed["usage"]["input_tokens"] + succeeded["usage"]["input_tokens"]
    )
    want = to_nanos(billed["cost_usd"]) + to_nanos(succeeded["cost_usd"])
    assert cost["usd_nanos"] == want

    ops = Ops(client)
    try:
        await ops.load()
        while await ops.step():
            pass
        spent = await ops.budgets.spent("acme")
    finally:
        await ops.aclose()
        await client.aclose()
    assert spent == pytest.approx(billed["cost_usd"] + succeeded["cost_usd"])


async def _task_events(
    redis: aioredis.Redis, settings: Settings, task_id: str
) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in range(settings.partitions):
        for _, fields in await redis.xrange(f"{settings.namespace}:{{p{p}}}:log"):
            if fields[b"task"] == task_id.encode():
                out.append((fields[b"type"].decode(), orjson.loads(fields[b"data"])))
    return out


async def test_malformed_call_notices_are_data(
    store: ShardStore, log: Log, settings: Settings, redis_url: str
) -> None:
    """Attempt notices with nonsense in them (a list as error class, usage that is not a
    mapping of numbers, a cost that is text) neither stop the views nor the ops reader; the
    call still counts once, as a failure of an unknown class."""
    await log.add("TaskRequested", "t1", requested())
    await log.add("TaskStarted", "t1", {"attempt": 1, "worker": "w"})
    bad: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-5-mini",
        "outcome": "error",
        "error_class": ["x"],
        "latency_ms": "soon",
        "usage": {"input_tokens": "many", "output_tokens": None},
        "cost_usd": "abc",
    }
    await log.add("TaskProgress", "t1", {"attempt": 1, "notice": "attempt", "detail": bad})
    await log.add(
        "TaskProgress",
        "t1",
        {"attempt": 1, "notice": "attempt", "detail": {**bad, "usage": "lots"}},
    )
    await log.add("TaskSucceeded", "t1", succeeded(provider="gemini"))
    positions = [Position(p, p.new(store.config)) for p in PROJECTIONS.values()]
    async for page in history(store.redis, store.namespace, 0, None):
        apply_batch(0, positions, page)
    health = next(p for p in positions if p.projection.name == "provider_health").shard.entries
    assert (health["openai"]["fail"], health["openai"]["errors"]) == (2, {"unknown": 2})
    cost = next(p for p in positions if p.projection.name == "cost").shard.entries
    billed = [v for k, v in cost.items() if "openai" in k]
    assert [(v["failed_billed"], v["input_tokens"], v["usd_nanos"]) for v in billed] == [(1, 0, 0)]

    client = Client.from_url(redis_url, settings)
    ops = Ops(client)
    try:
        await ops.load()
        assert await ops.step() == 5
        window = {p: (len(c.samples), c.failures) for (_, p), c in ops.alerts._calls.items()}
    finally:
        await ops.aclose()
        await client.aclose()
    assert window == {"openai": (2, 2), "gemini": (1, 0)}
