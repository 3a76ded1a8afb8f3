"""The OpenAI-compatible API through the official ``openai`` SDK (sync and async clients,
non-streamed): a real gateway, a worker running the provider router, and the sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.core.events import TaskProgress, TaskSucceeded
from tests.gateway.openai_fixtures import Stack, make_stack

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    async for s in make_stack(redis_url):
        yield s


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow"},
]


def _client(stack: Stack, token: str = "tok-acme", **kw: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=token, base_url=stack.base_url, **kw)  # type: ignore[arg-type]


async def test_async_client_gets_the_answer_and_the_usage_and_cost_of_the_task(
    stack: Stack,
) -> None:
    """A non-streamed completion is the task's result; its usage and cost are TaskSucceeded's,
    its id and x-aiis-task-id name the task, and the task belongs to the token's tenant."""
    async with _client(stack) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=MESSAGES,
            max_tokens=64,  # type: ignore[arg-type]
        )
        completion = raw.parse()
    task_id = raw.headers["x-aiis-task-id"]
    assert completion.id == f"chatcmpl-{task_id}"
    assert completion.object == "chat.completion"
    events = await stack.events(task_id)
    done = events[-1]
    assert isinstance(done, TaskSucceeded)
    assert done.tenant == "acme"
    assert completion.choices[0].message.content == done.data.result.text
    assert completion.choices[0].message.content.startswith("Sandbox reply")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == done.data.model == "gemini-2.5-flash"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == done.data.usage.input_tokens > 0
    assert usage.completion_tokens == done.data.usage.output_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert done.data.cost_usd is not None and done.data.cost_usd > 0
    assert usage.model_extra is not None and usage.model_extra["cost"] == done.data.cost_usd
    requested = events[0]
    assert requested.type == "TaskRequested"
    assert requested.data.kind == "chat"  # type: ignore[union-attr]
    assert requested.data.params["max_tokens"] == 64  # type: ignore[union-attr]


async def test_sync_client_works_and_a_routed_model_pins_its_provider(stack: Stack) -> None:
    """The sync SDK client (in a thread) with model gpt-5-mini and provider/model: the task
    runs on that provider, the answer names the model."""

    def call(model: str) -> tuple[str, str]:
        with openai.OpenAI(api_key="tok-acme", base_url=stack.base_url) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "hello there"}]
            )
            return raw.headers["x-aiis-task-id"], raw.parse().model

    task_id, model = await asyncio.to_thread(call, "gpt-5-mini")
    done = (await stack.events(task_id))[-1]
    assert isinstance(done, TaskSucceeded)
    assert done.data.provider == "openai" and model == done.data.model
    task_id, model = await asyncio.to_thread(call, "anthropic/claude-haiku-4-5")
    done = (await stack.events(task_id))[-1]
    assert isinstance(done, TaskSucceeded)
    assert done.data.provider == "anthropic" and model.startswith("claude-haiku-4-5")


async def test_fallback_shows_in_the_events_while_the_sdk_sees_a_normal_answer(
    stack: Stack,
) -> None:
    """Gemini rate-limits: the task falls back to the next provider (a fallback notice in
    its events) and the SDK gets an ordinary completion from that provider."""
    stack.sandbox.inject("gemini", "rate_limit")
    async with _client(stack) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES
        )
        completion = raw.parse()
    events = await stack.events(raw.headers["x-aiis-task-id"])
    notices = [e.data.notice for e in events if isinstance(e, TaskProgress)]
    assert "fallback" in notices
    done = events[-1]
    assert isinstance(done, TaskSucceeded) and done.data.provider == "openai"
    assert completion.choices[0].message.content == done.data.result.text
    assert completion.model == done.data.model


async def test_models_are_listed_and_looked_up_in_openais_format(stack: Stack) -> None:
    """GET /v1/models lists auto and the routed models; /v1/models/{id} finds one, or 404s."""
    async with _client(stack) as client:
        ids = [m.id async for m in client.models.list()]
        assert {"auto", "gemini-2.5-flash", "gpt-5", "gpt-5-mini", "claude-sonnet-4-5"} <= set(ids)
        model = await client.models.retrieve("gpt-5")
        assert model.object == "model" and model.owned_by == "openai"
        assert (await client.models.retrieve("openai/gpt-4.1")).id == "openai/gpt-4.1"
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("llama-3-70b")
        assert caught.value.code == "model_not_found"


async def test_idempotency_key_and_priority_headers_reach_the_task(stack: Stack) -> None:
    """A repeated request with the same Idempotency-Key attaches to the same task (and gets
    its answer); x-aiis-priority sets the task's priority."""
    headers = {"Idempotency-Key": "order-42", "x-aiis-priority": "high"}
    async with _client(stack) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, extra_headers=headers
        )
        again = await client.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, extra_headers=headers
        )
    task_id = first.headers["x-aiis-task-id"]
    assert again.headers["x-aiis-task-id"] == task_id
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    view = await stack.client.get(task_id)
    assert view.priority == "high"
    events = await stack.events(task_id)
    key = events[0].data.idempotency_key  # type: ignore[union-attr]
    assert key is not None and key.startswith("sha256:")  # stored hashed


async def test_tenants_are_isolated(stack: Stack) -> None:
    """Another tenant's token with the same Idempotency-Key gets its own task, never the
    first tenant's; a token cannot submit as another tenant (403)."""
    headers = {"Idempotency-Key": "shared-key"}
    async with _client(stack, "tok-acme") as acme, _client(stack, "tok-beta") as beta:
        a = await acme.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, extra_headers=headers
        )
        b = await beta.chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, extra_headers=headers
        )
        assert a.headers["x-aiis-task-id"] != b.headers["x-aiis-task-id"]
        assert (await stack.client.get(b.headers["x-aiis-task-id"])).tenant == "beta"
        with pytest.raises(openai.PermissionDeniedError):
            await beta.chat.completions.create(
                model="auto", messages=MESSAGES, extra_headers={"x-aiis-tenant": "acme"}
            )
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        # the task API does not show acme's task to beta either
        other = await http.get(
            f"/v1/tasks/{a.headers['x-aiis-task-id']}",
            headers={"Authorization": "Bearer tok-beta"},
        )
        assert other.status_code == 404


async def test_overhead_metric_counts_each_answered_request(stack: Stack) -> None:
    """aiis_overhead_seconds (request duration minus provider time) has one observation per
    answered request, labelled streamed or not, and its sum stays below the durations."""
    async with _client(stack) as client:
        await client.chat.completions.create(model="auto", messages=MESSAGES)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="auto",
            messages=MESSAGES,
            stream=True,  # type: ignore[arg-type]
        )
        _ = [c async for c in stream]
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        text = (await http.get("/metrics", headers={"Authorization": "Bearer tok-ops"})).text
    samples = {
        (s.name, s.labels.get("stream")): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "aiis_overhead_seconds"
        for s in family.samples
    }
    assert samples[("aiis_overhead_seconds_count", "false")] == 1
    assert samples[("aiis_overhead_seconds_count", "true")] == 1
    assert 0 <= samples[("aiis_overhead_seconds_sum", "false")] < 5
