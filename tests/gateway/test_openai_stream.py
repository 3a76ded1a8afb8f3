"""Streamed chat completions through the official ``openai`` SDK: chunks as the provider sends
them, a final usage chunk, the first token without the progress flusher's window, a closed
stream cancelling its task, and ``aiis gateway --processes 2``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

from engine.core import outbox
from engine.core.events import TaskCancelled, TaskProgress, TaskSucceeded
from tests.conftest import TOPOLOGIES, Engine, Topology
from tests.gateway.openai_fixtures import Stack, make_stack
from tests.gateway.test_processes import gateway_group

pytestmark = pytest.mark.timeout(90)

USER = [{"role": "user", "content": "Tell me about the northern lights please"}]


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    async for s in make_stack(redis_url):
        yield s


async def test_async_stream_carries_the_deltas_and_a_final_usage_chunk(stack: Stack) -> None:
    """The chunks' contents are the task's TaskProgress deltas, in order, and add up to its
    result; the last chunk (include_usage) holds TaskSucceeded's usage and cost."""
    async with openai.AsyncOpenAI(api_key="tok-acme", base_url=stack.base_url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=USER,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        task_id = raw.headers["x-aiis-task-id"]
        chunks = [chunk async for chunk in raw.parse()]
    events = await stack.events(task_id)
    done = events[-1]
    assert isinstance(done, TaskSucceeded)
    deltas = [e.data.delta for e in events if isinstance(e, TaskProgress) and e.data.delta]
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert contents[0] == "" and chunks[0].choices[0].delta.role == "assistant"
    assert [c for c in contents if c] == deltas
    assert "".join(c or "" for c in contents) == done.data.result.text
    assert all(c.id == f"chatcmpl-{task_id}" for c in chunks)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == done.data.usage.input_tokens
    assert last.usage.completion_tokens == done.data.usage.output_tokens
    assert last.usage.model_extra is not None
    assert last.usage.model_extra["cost"] == done.data.cost_usd


async def test_sync_stream_gets_the_whole_answer(stack: Stack) -> None:
    """The sync client's stream (in a thread) ends normally with the task's text."""

    def read() -> tuple[str, str]:
        client = openai.OpenAI(api_key="tok-beta", base_url=stack.base_url)
        with (
            client,
            client.chat.completions.with_streaming_response.create(
                model="gpt-5",
                messages=USER,
                stream=True,  # type: ignore[arg-type]
            ) as response,
        ):
            task_id = response.headers["x-aiis-task-id"]
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        return task_id, text

    task_id, text = await asyncio.to_thread(read)
    done = (await stack.events(task_id))[-1]
    assert isinstance(done, TaskSucceeded) and done.data.provider == "openai"
    assert text == done.data.result.text and done.tenant == "beta"


async def test_first_token_does_not_wait_and_a_closed_stream_cancels_the_task(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the progress flusher's window at 60 s, the provider's first delta still reaches
    the SDK while the provider's stream stalls; closing the stream then cancels the task
    (TaskCancelled) and the worker's provider call ends long before the stall would."""
    monkeypatch.setattr(outbox, "PROGRESS_FLUSH_S", 60.0)
    stalled = [{"role": "user", "content": "count slowly to ten [[fault:stall@gemini]]"}]
    async with openai.AsyncOpenAI(api_key="tok-acme", base_url=stack.base_url) as client:
        async with asyncio.timeout(15):  # far below the 60 s window
            raw = await client.chat.completions.with_raw_response.create(
                model="auto",
                messages=stalled,  # type: ignore[arg-type]
                stream=True,
            )
            task_id = raw.headers["x-aiis-task-id"]
            stream = raw.parse()
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break  # a token arrived while the provider stalls
        await stream.close()
    events = await stack.events(task_id)
    assert isinstance(events[-1], TaskCancelled)
    assert events[-1].data.stage == "running"
    worker = stack.workers.running[0][0]
    async with asyncio.timeout(10):  # the stalled call was cancelled, not left to time out
        while worker.in_flight:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_two_gateway_processes_serve_streams_and_unary_calls(redis_url: str) -> None:
    """``aiis gateway --processes 2``: streamed and non-streamed completions through the
    shared port all finish with their task's answer."""
    async for stack in make_stack(redis_url):
        engine = Engine(stack.settings, stack.client, stack.workers)
        async with gateway_group(engine) as group:
            base = group.http_url + "/v1"
            async with openai.AsyncOpenAI(api_key="any", base_url=base, max_retries=0) as client:

                async def one(i: int) -> tuple[str, str]:
                    messages = [{"role": "user", "content": f"question {i}"}]
                    if i % 2:
                        raw = await client.chat.completions.with_raw_response.create(
                            model="auto",
                            messages=messages,  # type: ignore[arg-type]
                        )
                        return raw.headers["x-aiis-task-id"], raw.parse().choices[
                            0
                        ].message.content or ""
                    raw_stream = await client.chat.completions.with_raw_response.create(
                        model="auto",
                        messages=messages,
                        stream=True,  # type: ignore[arg-type]
                    )
                    text = "".join(
                        [
                            c.choices[0].delta.content or ""
                            async for c in raw_stream.parse()
                            if c.choices
                        ]
                    )
                    return raw_stream.headers["x-aiis-task-id"], text

                results = await asyncio.gather(*(one(i) for i in range(12)))
            for task_id, text in results:
                done = (await stack.events(task_id))[-1]
                assert isinstance(done, TaskSucceeded) and done.data.result.text == text


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_streams_and_answers_on_every_topology(topology: Topology) -> None:
    """On a standalone Redis and on a 3-master cluster with 4 partitions, streamed and
    non-streamed completions (several, so several partitions) carry their task's text."""
    overrides = {"redis_cluster": True, "partitions": 4} if topology.cluster else {}
    async for stack in make_stack(topology.url, **overrides):
        async with openai.AsyncOpenAI(api_key="tok-acme", base_url=stack.base_url) as client:

            async def one(i: int) -> tuple[str, str]:
                messages = [{"role": "user", "content": f"topology question {i}"}]
                raw = await client.chat.completions.with_raw_response.create(
                    model="auto",
                    messages=messages,  # type: ignore[arg-type]
                    stream=bool(i % 2),
                )
                if i % 2:
                    text = "".join(
                        [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
                    )
                else:
                    text = raw.parse().choices[0].message.content or ""  # type: ignore[union-attr]
                return raw.headers["x-aiis-task-id"], text

            results = await asyncio.gather(*(one(i) for i in range(8)))
        for task_id, text in results:
            done = (await stack.events(task_id))[-1]
            assert isinstance(done, TaskSucceeded) and done.data.result.text == text
