"""OpenAI's error shape and status codes, as the official SDK raises and retries them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from engine.runtime.embedded import EmbeddedRedis
from tests.gateway.openai_fixtures import Stack, make_stack

pytestmark = pytest.mark.timeout(90)

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    # one delivery: a retryable failure ends the task at once (no engine retries)
    async for s in make_stack(redis_url, gateway={"max_body_bytes": 4096}, max_deliveries=1):
        yield s


def _client(stack: Stack, token: str = "tok-acme", retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=token, base_url=stack.base_url, max_retries=retries)


async def test_refusals_name_their_param_and_map_to_the_sdks_exceptions(stack: Stack) -> None:
    """400 with param for what we cannot honour, 401, 403, 404 model_not_found, 413."""
    async with _client(stack) as client:
        create = client.chat.completions.create
        with pytest.raises(openai.BadRequestError) as bad:
            await create(model="auto", messages=USER, n=2)  # type: ignore[arg-type]
        assert bad.value.param == "n" and bad.value.type == "invalid_request_error"
        image = [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]
        with pytest.raises(openai.BadRequestError) as bad:
            await create(model="auto", messages=[{"role": "user", "content": image}])  # type: ignore[list-item]
        assert bad.value.param == "messages[0].content[0].type"
        with pytest.raises(openai.BadRequestError) as bad:
            await create(
                model="auto", messages=USER, tools=[{"type": "function", "function": {"name": "f"}}]
            )  # type: ignore[list-item]
        assert bad.value.param == "tools"
        with pytest.raises(openai.BadRequestError) as bad:
            await create(model="auto", messages=USER, temperature=3)  # type: ignore[arg-type]
        assert bad.value.param == "temperature"
        with pytest.raises(openai.BadRequestError) as bad:
            await create(model="auto", messages=[{"role": "system", "content": "only me"}])  # type: ignore[list-item]
        assert bad.value.param == "messages"
        with pytest.raises(openai.NotFoundError) as missing:
            await create(model="llama-3-70b", messages=USER)  # type: ignore[arg-type]
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        with pytest.raises(openai.APIStatusError) as large:
            await create(model="auto", messages=[{"role": "user", "content": "x" * 8000}])  # type: ignore[list-item]
        assert large.value.status_code == 413
        with pytest.raises(openai.PermissionDeniedError):
            await create(model="auto", messages=USER, extra_headers={"x-aiis-tenant": "beta"})  # type: ignore[arg-type]
    async with _client(stack, "not-a-token") as stranger:
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            await stranger.chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
        assert unauthorized.value.code == "invalid_api_key"
    assert stack.sandbox.stats()["requests"] == {}  # none of them reached a provider


async def test_every_provider_rate_limited_is_a_429_the_sdk_retries(stack: Stack) -> None:
    """Every provider answers 429: RateLimitError with Retry-After, after the SDK retried
    once (max_retries=1): two requests, two tasks, each with its own id."""
    prompt = [{"role": "user", "content": "hi [[fault:rate_limit]]"}]
    async with _client(stack, retries=1) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="auto", messages=prompt)  # type: ignore[arg-type]
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["x-aiis-task-id"]
    assert stack.sandbox.stats()["requests"]["gemini"] == 2  # the SDK's retry was a new task


async def test_every_provider_down_is_a_503_and_a_provider_refusal_a_400(stack: Stack) -> None:
    """Every provider unavailable → InternalServerError (503), retried by the SDK; a request
    the provider refuses → BadRequestError, not retried."""
    async with _client(stack, retries=1) as client:
        down = [{"role": "user", "content": "hi [[fault:unavailable]]"}]
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.chat.completions.create(model="auto", messages=down)  # type: ignore[arg-type]
        assert unavailable.value.status_code == 503
        assert unavailable.value.code == "providers_unavailable"
        assert stack.sandbox.stats()["requests"]["gemini"] == 2
        refused = [{"role": "user", "content": "hi [[fault:invalid]]"}]
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.chat.completions.create(model="auto", messages=refused)  # type: ignore[arg-type]
        assert invalid.value.code == "provider_invalid_request"
        assert stack.sandbox.stats()["requests"]["gemini"] == 3  # not retried


async def test_a_full_queue_is_a_429_and_a_cancelled_task_a_500(redis_url: str) -> None:
    """Queue at its depth limit → RateLimitError (queue_full); a task cancelled through the
    task API while its request waits → InternalServerError, which the SDK does not retry."""
    async for stack in make_stack(redis_url, queue_max_depth=1):
        await stack.workers.stop_all()  # nothing drains the queue
        async with _client(stack, retries=0) as client:
            create = client.chat.completions.with_raw_response.create
            waiting = asyncio.create_task(create(model="auto", messages=USER))  # type: ignore[arg-type]
            task_id = await _waiting_task(stack)
            with pytest.raises(openai.RateLimitError) as full:
                await create(model="auto", messages=USER)  # type: ignore[arg-type]
            assert full.value.code == "queue_full"
            await stack.client.cancel(task_id)
            with pytest.raises(openai.InternalServerError) as cancelled:
                await waiting
            assert cancelled.value.code == "task_cancelled"
            assert cancelled.value.response.headers["x-should-retry"] == "false"


async def _waiting_task(stack: Stack) -> str:
    """The id of the first task in the log (the one request in flight)."""
    log = stack.client.store.keys(0).log
    async with asyncio.timeout(10):
        while not (entries := await stack.client.store.entries(log, count=1)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return str(entries[0][1][b"task"].decode())


async def test_redis_unreachable_is_a_503(tmp_path: Path) -> None:
    """With its Redis gone, the gateway answers 503 service_unavailable in OpenAI's shape,
    which the SDK raises as InternalServerError (after its retries)."""
    server = EmbeddedRedis(tmp_path, appendonly=False)
    url = server.start()
    try:
        async for stack in make_stack(url):
            server.stop()
            async with _client(stack, retries=1) as client:
                with pytest.raises(openai.InternalServerError) as down:
                    await client.chat.completions.create(model="auto", messages=USER)  # type: ignore[arg-type]
            assert down.value.status_code == 503
            assert down.value.code == "service_unavailable"
    finally:
        server.stop()


async def test_pii_blocked_by_the_tenants_policy_is_a_403(redis_url: str) -> None:
    """Under the ``block`` PII policy a message holding an e-mail address is refused with
    PermissionDeniedError (pii_blocked, param messages), never submitted."""
    async for stack in make_stack(redis_url, pii_policy="block"):
        leaky = [{"role": "user", "content": "mail jane.doe@example.com the report"}]
        async with _client(stack) as client:
            with pytest.raises(openai.PermissionDeniedError) as blocked:
                await client.chat.completions.create(model="auto", messages=leaky)  # type: ignore[arg-type]
        assert blocked.value.code == "pii_blocked" and blocked.value.param == "messages"
        assert "jane.doe" not in blocked.value.message
        assert stack.sandbox.stats()["requests"] == {}
