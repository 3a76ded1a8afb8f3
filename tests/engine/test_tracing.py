"""OpenTelemetry traces through the real composition: a producer's ``traceparent`` on submit,
the real router calling the sandbox (Gemini rate-limited → OpenAI, and a retry), a real worker,
and the ops reader turning the log into spans — one trace per task, joined to the producer's,
with the GenAI attributes and no prompt, result or key anywhere in what is exported."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import httpx
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import connect

from engine.client import Client
from engine.core.keys import partition_of
from engine.errors import InvalidTask
from engine.operations.ops import Ops
from engine.operations.tracing import TaskTracer
from engine.runtime.workers import new_worker
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from projections.settings import ProjectionSettings
from providers.config import ProviderSettings
from providers.echo import ScriptedProvider
from providers.factory import build_processor
from providers.sandbox import start_sandbox
from tests.conftest import TOPOLOGIES, Topology
from tests.gateway.conftest import request

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _provider() -> Iterator[None]:
    """One SDK provider for the process (OpenTelemetry allows one), exporting in memory."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    yield


@pytest.fixture(autouse=True)
def _clean() -> None:
    EXPORTER.clear()


def _producer_span() -> tuple[str, int, int]:
    trace_id, span_id = secrets.randbits(128) | 1, secrets.randbits(64) | 1
    return f"00-{trace_id:032x}-{span_id:016x}-01", trace_id, span_id


async def _drain_ops(ops: Ops, task_ids: list[str]) -> None:
    """Step the ops reader until every task's terminal event went through it."""
    async with asyncio.timeout(30):
        while {s.attributes.get("aiis.task.id") for s in _named("aiis.task")} < set(task_ids):
            await ops.step(block_ms=50)


def _named(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_one_trace_per_task_joined_to_the_producer_with_fallback_and_retry(
    topology: Topology,
) -> None:
    """Each task: its spans under the producer's span, admission from the submit's start; the
    fallback shows as a failed Gemini call and an OK OpenAI call with tokens; the retry as
    ``aiis.retry``; no prompt text in any exported span."""
    settings = topology.settings(tracing=True)
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    prompt = "the secret prompt 7f3a"
    async with start_sandbox() as sandbox:
        sandbox.inject("gemini", "rate_limit", times=10_000)
        sandbox.inject("openai", "server_error", times=1)  # one attempt fails both: a retry
        provider_settings = ProviderSettings(
            AIIS_PROVIDERS_PREFIX=settings.namespace,
            AIIS_TEXT_CHAIN="gemini,openai",
            AIIS_CALL_TIMEOUT_S=5.0,
        )
        router = build_processor(client.store.redis, provider_settings, sandbox.url)
        worker = new_worker(client.store, router, concurrency=2)
        run = asyncio.create_task(worker.run())
        producers = [_producer_span() for _ in range(3)]
        ops = Ops(client, tracer=TaskTracer(trace.get_tracer("aiis")))
        try:
            await ops.load()
            ids = [await client.submit(prompt, traceparent=tp) for tp, _, _ in producers]
            await _drain_ops(ops, ids)
        finally:
            worker.stop()
            await run
            await ops.aclose()
            await router.aclose()
            await client.aclose()
    spans = EXPORTER.get_finished_spans()
    for task_id, (_, trace_id, span_id) in zip(ids, producers, strict=True):
        mine = [s for s in spans if s.context.trace_id == trace_id]
        (task,) = [s for s in mine if s.name == "aiis.task"]
        assert task.parent is not None and task.parent.span_id == span_id
        assert task.attributes["aiis.task.id"] == task_id
        assert task.attributes["aiis.task.outcome"] == "TaskSucceeded"
        (admission,) = [s for s in mine if s.name == "aiis.admission"]
        assert admission.parent is not None and admission.parent.span_id == task.context.span_id
        # the log's times are in ms: admission may round to an instant
        assert task.start_time == admission.start_time <= admission.end_time <= task.end_time
        assert {s.name for s in mine} >= {"aiis.queued", "aiis.attempt", "aiis.commit"}
        calls = [s for s in mine if s.attributes and "gen_ai.system" in s.attributes]
        gemini = [c for c in calls if c.attributes["gen_ai.system"] == "gcp.gemini"]
        openai_ok = [
            c
            for c in calls
            if c.attributes["gen_ai.system"] == "openai" and "error.type" not in c.attributes
        ]
        assert gemini and all(c.attributes["error.type"] == "RateLimited" for c in gemini)
        (ok,) = openai_ok
        assert ok.name.startswith("chat ") and ok.attributes["gen_ai.request.model"]
        assert ok.attributes["gen_ai.usage.output_tokens"] > 0
        attempts = {s.context.span_id for s in mine if s.name == "aiis.attempt"}
        assert all(c.parent is not None and c.parent.span_id in attempts for c in calls)
    retries = _named("aiis.retry")
    assert len(retries) == 1  # the one task whose first attempt failed on both providers
    exported = b"".join(s.to_json().encode() for s in spans)
    assert prompt.encode() not in exported
    assert b"Sandbox reply" not in exported  # the sandbox's results
    assert b"sk-" not in exported and b"key" not in exported.lower().replace(b"keys", b"")


async def test_a_task_without_a_producer_trace_gets_its_own_and_ops_without_sdk_is_silent(
    topology: Topology,
) -> None:
    """No ``traceparent``: the task's spans make a trace of their own."""
    settings = topology.settings(tracing=True)
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    worker = new_worker(client.store, ScriptedProvider(), concurrency=2)
    run = asyncio.create_task(worker.run())
    ops = Ops(client, tracer=TaskTracer(trace.get_tracer("aiis")))
    try:
        await ops.load()
        task_id = await client.submit("hi")
        await _drain_ops(ops, [task_id])
    finally:
        worker.stop()
        await run
        await ops.aclose()
        await client.aclose()
    (admission,) = _named("aiis.admission")
    (task,) = _named("aiis.task")
    assert task.parent is None
    assert admission.context.trace_id == task.context.trace_id


async def test_traceparent_is_validated_and_carried_by_the_gateway(topology: Topology) -> None:
    """An invalid ``traceparent`` field is refused naming it; the HTTP header and the WebSocket
    task field are carried into ``TaskRequested`` (an invalid header is ignored, as W3C
    recommends)."""
    settings = topology.settings()
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    try:
        with pytest.raises(InvalidTask) as bad:
            await client.submit("x", traceparent="00-zz-yy-01")
        assert "traceparent" in str(bad.value)
        (tp, _, _), (tp2, _, _) = _producer_span(), _producer_span()
        gateway = Gateway(
            settings,
            GatewaySettings(tokens=""),
            proj=ProjectionSettings(),
            host="127.0.0.1",
            port=0,
        )
        await gateway.start()
        try:
            async with httpx.AsyncClient(base_url=gateway.url) as http:
                good = await http.post(
                    "/v1/tasks", json={"input": "a"}, headers={"traceparent": tp}
                )
                junk = await http.post(
                    "/v1/tasks", json={"input": "b"}, headers={"traceparent": "garbage"}
                )
            async with connect(gateway.ws_url) as ws:
                sent = await request(ws, op="submit", task={"input": "c", "traceparent": tp2})
        finally:
            await gateway.stop()
        assert good.status_code == junk.status_code == 202
        carried = {}
        for task_id in (good.json()["task_id"], junk.json()["task_id"], sent["task_id"]):
            store = client.store
            for _, fields in await store.entries(
                store.keys(partition_of(task_id, settings.partitions)).log
            ):
                if fields[b"task"].decode() == task_id and fields[b"type"] == b"TaskRequested":
                    carried[task_id] = orjson.loads(fields[b"data"]).get("traceparent")
        assert list(carried.values()) == [tp, None, tp2]
    finally:
        await client.aclose()


async def test_a_trace_the_producer_did_not_sample_makes_no_span(topology: Topology) -> None:
    """A ``traceparent`` whose sampled flag is off: no span of the task is recorded (the SDK's
    parent-based sampler decides at its first event) and ops keeps none of its events."""
    settings = topology.settings(tracing=True)
    client = Client.from_url(settings.redis_url or "", settings)
    await client.store.prepare()
    worker = new_worker(client.store, ScriptedProvider(), concurrency=2)
    run = asyncio.create_task(worker.run())
    tracer = TaskTracer(trace.get_tracer("aiis"))
    ops = Ops(client, tracer=tracer)
    tp, trace_id, _ = _producer_span()
    try:
        await ops.load()
        unsampled = await client.submit("quiet", traceparent=tp[:-2] + "00")
        sampled = await client.submit("loud")
        await _drain_ops(ops, [sampled])
        async with asyncio.timeout(30):
            while tracer.stats["unsampled"] < 1:
                await ops.step(block_ms=50)
    finally:
        worker.stop()
        await run
        await ops.aclose()
        await client.aclose()
    spans = EXPORTER.get_finished_spans()
    assert not [s for s in spans if s.context.trace_id == trace_id]
    assert unsampled not in {s.attributes.get("aiis.task.id") for s in spans}
    assert tracer.stats["traces"] == 1
