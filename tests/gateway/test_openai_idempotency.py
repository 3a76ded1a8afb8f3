"""Issue 18: an ``Idempotency-Key`` names one request and may be shared. Reused with another
request it is refused — 422 ``idempotency_conflict`` on the task API, the WebSocket and the
OpenAI route (the SDK's ``UnprocessableEntityError``, not retried). Requests sharing a task
through their key keep it alive: one leaving early does not cancel it while another, on any
gateway process, still follows it; the last one leaving early does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from engine.admission.steps import hash_key
from engine.core.events import TaskCancelled, TaskSucceeded
from engine.core.keys import followers_key, partition_for_key
from gateway.openai.shared import Shared
from gateway.server import Gateway
from tests.conftest import TOPOLOGIES, Topology
from tests.gateway.conftest import TOKENS_ENV, MakeGateway, request
from tests.gateway.openai_fixtures import Stack, make_stack

pytestmark = pytest.mark.timeout(90)

MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow"}]
# the sandbox streams this answer a frame every 150 ms: long enough to leave mid-answer
SLOW = [{"role": "user", "content": "Tell me about the northern lights please [[pace:150]]"}]


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    """A gateway that cancels a shared task its last follower left at once (no grace)."""
    async for s in make_stack(redis_url, gateway={"shared_cancel_grace_s": 0}):
        yield s


@pytest.fixture
async def patient_stack(redis_url: str) -> AsyncIterator[Stack]:
    """A gateway with the default grace before such a cancel (2 s)."""
    async for s in make_stack(redis_url):
        yield s


def _client(base_url: str, token: str = "tok-acme") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=token, base_url=base_url, max_retries=2)


def _counters(gateway: Gateway) -> Any:
    assert gateway.ctx is not None
    return gateway.ctx.counters


async def test_a_reused_key_with_other_messages_is_a_422_the_sdk_does_not_retry(
    stack: Stack,
) -> None:
    """Same key, other messages or other parameters → ``UnprocessableEntityError`` (422,
    ``idempotency_conflict``, param ``Idempotency-Key``), sent once though the SDK may retry
    twice; the same request still attaches to the task, streamed or not."""
    key = {"Idempotency-Key": "invoice-7"}
    async with _client(stack.base_url) as client:
        create = client.chat.completions.with_raw_response.create
        first = await create(model="auto", messages=MESSAGES, extra_headers=key)  # type: ignore[arg-type]
        task_id = first.headers["x-aiis-task-id"]
        other = [{"role": "user", "content": "Name three colours of the sea"}]
        for kwargs in ({"messages": other}, {"messages": MESSAGES, "temperature": 0.2}):
            with pytest.raises(openai.UnprocessableEntityError) as refused:
                await client.chat.completions.create(model="auto", extra_headers=key, **kwargs)  # type: ignore[call-overload]
            error = refused.value
            assert error.status_code == 422 and error.code == "idempotency_conflict"
            assert error.param == "Idempotency-Key" and error.type == "invalid_request_error"
            assert task_id in error.message
        again = await create(model="auto", messages=MESSAGES, extra_headers=key)  # type: ignore[arg-type]
        streamed = await create(model="auto", messages=MESSAGES, extra_headers=key, stream=True)  # type: ignore[arg-type]
        text = "".join(
            [c.choices[0].delta.content or "" async for c in streamed.parse() if c.choices]
        )
    assert again.headers["x-aiis-task-id"] == streamed.headers["x-aiis-task-id"] == task_id
    assert text == first.parse().choices[0].message.content  # the same answer, streamed
    assert _counters(stack.gateway).submits[("openai", "idempotency_conflict")] == 2
    assert isinstance((await stack.events(task_id))[-1], TaskSucceeded)


async def test_task_api_and_websocket_refuse_a_reused_key_with_422(stack: Stack) -> None:
    """``POST /v1/tasks``: the same body again is the same task (202); another input under the
    key is a 422 naming the field and the task the key holds; a WebSocket submit gets the same
    code."""
    headers = {"Authorization": "Bearer tok-acme"}
    body = {"input": "summarise the report", "idempotency_key": "report-1"}
    async with httpx.AsyncClient(base_url=stack.gateway.url, headers=headers) as http:
        first = await http.post("/v1/tasks", json=body)
        same = await http.post("/v1/tasks", json={**body, "priority": "high"})
        other = await http.post("/v1/tasks", json={**body, "input": "translate the report"})
    assert first.status_code == same.status_code == 202
    task_id = first.json()["task_id"]
    assert same.json()["task_id"] == task_id
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert other.json()["error"]["field"] == "idempotency_key"
    assert other.json()["error"]["task_id"] == task_id
    async with connect(stack.gateway.ws_url, additional_headers=headers) as ws:
        reply = await request(ws, op="submit", task={**body, "input": "something else"})
    assert reply["op"] == "error" and reply["code"] == "idempotency_conflict"


async def _first_token(stream: Any) -> str:
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return str(chunk.choices[0].delta.content)
    raise AssertionError("the stream ended before its first token")


async def _open(client: openai.AsyncOpenAI, key: str) -> tuple[str, Any]:
    raw = await client.chat.completions.with_raw_response.create(
        model="auto",
        messages=SLOW,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"Idempotency-Key": key},
    )
    return raw.headers["x-aiis-task-id"], raw.parse()


async def _followers(stack: Stack, key: str) -> tuple[bytes | None, int]:
    """The followers counter of acme's ``key`` and its TTL (s)."""
    stored = hash_key("acme", key)
    store = stack.client.store
    tag = store.keys(partition_for_key("acme", stored, stack.settings.partitions)).tag
    name = followers_key(tag, "acme", stored)
    value: bytes | None = await store.redis.get(name)
    return value, int(await store.redis.ttl(name))


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_the_creator_leaving_does_not_cancel_a_task_another_gateway_still_streams(
    topology: Topology, make_gateway: MakeGateway
) -> None:
    """Request A creates the task through one gateway and closes its stream mid-answer while
    request B, with the same key, follows it through another gateway: the task is not
    cancelled and B gets the whole answer; the followers counter is back at 0 and expires. On a
    standalone Redis and on a 3-master cluster with 4 partitions."""
    overrides = {"redis_cluster": True, "partitions": 4} if topology.cluster else {}
    async for stack in make_stack(topology.url, **overrides):
        await _creator_leaves(stack, make_gateway)


async def _creator_leaves(stack: Stack, make_gateway: MakeGateway) -> None:
    other = await make_gateway(stack.settings, tokens=TOKENS_ENV)
    async with (
        _client(stack.base_url) as a_client,
        _client(other.url + "/v1") as b_client,
    ):
        task_a, stream_a = await _open(a_client, "northern-1")
        await _first_token(stream_a)
        task_b, stream_b = await _open(b_client, "northern-1")
        assert task_b == task_a
        text = await _first_token(stream_b)
        await stream_a.close()  # A leaves mid-answer
        async with asyncio.timeout(30):
            async for chunk in stream_b:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    events = await stack.events(task_a)
    assert not any(isinstance(e, TaskCancelled) for e in events)
    done = events[-1]
    assert isinstance(done, TaskSucceeded)
    assert text == done.data.result.text and text.startswith("Sandbox reply")
    count, ttl = await _followers(stack, "northern-1")
    assert count == b"0" and 0 < ttl <= stack.settings.task_deadline_s + 60  # never kept for good


async def test_the_last_follower_leaving_early_cancels_the_task(stack: Stack) -> None:
    """Two requests share a task through their key; when both have closed their streams
    mid-answer the task is cancelled, not left to run for nobody."""
    async with _client(stack.base_url) as client:
        task_a, stream_a = await _open(client, "northern-2")
        await _first_token(stream_a)
        task_b, stream_b = await _open(client, "northern-2")
        assert task_b == task_a
        await _first_token(stream_b)
        await stream_a.close()
        await stream_b.close()
    events = await stack.events(task_a)
    assert isinstance(events[-1], TaskCancelled)


async def test_a_retry_within_the_grace_attaches_to_the_task_its_only_follower_left(
    patient_stack: Stack,
) -> None:
    """The only request following a task closes its stream mid-answer (a broken connection);
    its caller retries with the same key within AIIS_GATEWAY_SHARED_CANCEL_GRACE_S: the retry
    attaches to the still-running task and gets the whole answer — nothing was cancelled."""
    stack = patient_stack
    async with _client(stack.base_url) as client:
        task_a, stream_a = await _open(client, "northern-3")
        await _first_token(stream_a)
        await stream_a.close()
        await asyncio.sleep(0.2)  # the gateway saw the close; the grace (2 s) is running
        task_b, stream_b = await _open(client, "northern-3")
        assert task_b == task_a
        text = "".join([c.choices[0].delta.content or "" async for c in stream_b if c.choices])
    events = await stack.events(task_a)
    assert isinstance(events[-1], TaskSucceeded)
    assert not any(isinstance(e, TaskCancelled) for e in events)
    assert text == events[-1].data.result.text


async def test_a_counter_that_expired_under_its_followers_is_not_left_behind(
    stack: Stack,
) -> None:
    """A follower leaving after its counter expired (a request outliving the TTL) counts as the
    last; the counter its DECR re-created is put back at 0 with a TTL, so the next requests
    are counted right and nothing is kept for good."""
    assert stack.gateway.ctx is not None
    shared = Shared(stack.gateway.ctx, "acme", "long-1")
    await shared.join()
    assert await _followers(stack, "long-1") == (b"1", shared.ttl_s)
    await stack.client.store.redis.delete(shared.key)  # what the TTL does
    assert await shared.leave() is True
    count, ttl = await _followers(stack, "long-1")
    assert count == b"0" and 0 < ttl <= shared.ttl_s
    again = Shared(stack.gateway.ctx, "acme", "long-1")
    other = Shared(stack.gateway.ctx, "acme", "long-1")
    await again.join()
    await other.join()
    assert await again.leave() is False  # `other` still follows
    assert await other.leave() is True
