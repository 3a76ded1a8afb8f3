"""Issue 15 item 5 / DESIGN.md §3 invariant 9: the deployment's limits live in Redis and are
the same for every producer, whatever its own environment says."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import openai
import pytest
from websockets.asyncio.client import connect as ws_connect

from engine.admission.budget import BudgetExceeded
from engine.admission.policy import set_config
from engine.client import Client
from engine.core.events import TERMINAL_EVENTS
from engine.errors import ConfigError, InvalidTask, QueueFull
from tests.conftest import Engine, Workers
from tests.gateway.conftest import MakeGateway, request
from tests.gateway.openai_fixtures import make_stack

pytestmark = pytest.mark.timeout(60)


async def _fill(client: Client, tries: int = 10) -> tuple[int, QueueFull]:
    for i in range(tries):
        try:
            await client.submit(f"task {i}")
        except QueueFull as exc:
            return i, exc
    raise AssertionError(f"{tries} tasks accepted: no depth limit")


async def test_depth_limit_of_a_client_without_the_variable_is_the_deployments(
    make_client: Callable[..., Client],
) -> None:
    """A deployment whose worker started with AIIS_QUEUE_MAX_DEPTH=3 (seeded at its start): a
    client without the variable is held to 3 as well; ``aiis config set`` changes it for
    both."""
    deployment = make_client(queue_max_depth=3)
    await deployment.store.prepare()  # what a worker does at start
    bare = make_client(namespace=deployment.settings.namespace)
    assert "queue_max_depth" not in bare.settings.model_fields_set
    accepted, full = await _fill(bare)
    assert accepted == 3 and full.limit == 3
    await set_config(bare.store.redis, bare.settings.namespace, "queue_max_depth", "5")
    for client in (deployment, bare):
        await client.admission.live.refresh()
    accepted, full = await _fill(bare)
    assert accepted == 2 and full.limit == 5
    with pytest.raises(QueueFull):
        await deployment.submit("the deployment's own client is held to it too")


async def test_a_client_whose_env_disagrees_uses_the_deployments_limit(
    make_client: Callable[..., Client],
) -> None:
    """A stored limit wins over a producer's explicit, different environment value."""
    first = make_client()
    ns = first.settings.namespace
    await set_config(first.store.redis, ns, "max_prompt_chars", "10")
    loose = make_client(namespace=ns, max_prompt_chars=100_000)
    with pytest.raises(InvalidTask, match="the limit is 10"):
        await loose.submit("x" * 50)
    strict = make_client(namespace=ns, max_prompt_chars=5)
    await strict.submit("x" * 8)  # under the deployment's 10, over this env's 5


async def test_budgets_and_pii_policy_of_a_client_without_the_variables_are_the_deployments(
    make_client: Callable[..., Client],
) -> None:
    """The deployment's AIIS_BUDGETS and AIIS_PII_POLICY (seeded by its first component) hold
    for a producer whose environment sets neither."""
    deployment = make_client(budgets='{"tenants": {"acme": 0}}', pii_policy="block")
    await deployment.submit("seeds the deployment's documents", tenant="other")
    bare = make_client(namespace=deployment.settings.namespace)
    with pytest.raises(BudgetExceeded, match=r"\$0\.00 daily budget"):
        await bare.submit("y", tenant="acme")
    with pytest.raises(InvalidTask, match="personal data"):
        await bare.submit("mail jane@example.com", tenant="other")


async def test_prompt_limit_enforced_over_http_from_redis(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """The gateway (whose settings allow 200,000 characters) refuses what the deployment's
    stored limit refuses."""
    await set_config(engine.client.store.redis, engine.settings.namespace, "max_prompt_chars", "10")
    gateway = await make_gateway(engine.settings)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/v1/tasks", json={"input": "x" * 50})
        assert r.status_code == 400 and r.json()["error"]["field"] == "input"
        assert (await http.post("/v1/tasks", json={"input": "short"})).status_code == 202


async def test_producer_without_partition_env_writes_where_workers_read(
    real_client: Callable[..., Client], workers: Workers
) -> None:
    """A producer without AIIS_PARTITIONS against a 2-partition deployment adopts 2: every
    task it submits is run by the deployment's worker; one whose environment says 4 is refused
    and writes nothing."""
    deployment = real_client(partitions=2)
    await deployment.store.prepare()
    workers.start(deployment)
    ns = deployment.settings.namespace
    producer = real_client(namespace=ns)
    assert "partitions" not in producer.settings.model_fields_set
    ids = [await producer.submit(f"t{i}") for i in range(12)]
    assert producer.settings.partitions == 2
    async with asyncio.timeout(30):
        for task_id in ids:
            async for event in producer.watch(task_id):
                if event.type in TERMINAL_EVENTS:
                    assert event.type == "TaskSucceeded"
                    break
    with pytest.raises(ConfigError, match="AIIS_PARTITIONS=4"):
        await real_client(namespace=ns, partitions=4).submit("refused")


async def test_every_gateway_door_uses_the_deployments_size_limit_not_its_own_env(
    redis_url: str,
) -> None:
    """A gateway whose environment says 20 characters, in a deployment raised to 1,000 by
    ``aiis config set``: HTTP, WebSocket and the OpenAI route accept a 50-character prompt
    (the task succeeds through the real worker and sandbox); lowered to 10, all three refuse
    it, the OpenAI route with its 413."""
    async for stack in make_stack(redis_url, max_prompt_chars=20):
        ctx = stack.gateway.ctx
        assert ctx is not None
        redis, ns = stack.client.store.redis, stack.settings.namespace
        prompt = "a fifty character prompt for the limit test......."
        assert len(prompt) == 50
        headers = {"Authorization": "Bearer tok-acme"}
        sdk = openai.AsyncOpenAI(api_key="tok-acme", base_url=stack.base_url, max_retries=0)
        chat = sdk.chat.completions.create
        messages = [{"role": "user", "content": prompt}]
        async with sdk, httpx.AsyncClient(base_url=stack.gateway.url, headers=headers) as http:
            for limit in ("1000", "10"):
                await set_config(redis, ns, "max_prompt_chars", limit)
                await ctx.client.admission.live.refresh()
                posted = await http.post("/v1/tasks", json={"input": prompt})
                async with ws_connect(
                    f"ws://127.0.0.1:{stack.gateway.port}/v1/ws", additional_headers=headers
                ) as ws:
                    sent = await request(ws, op="submit", ref="r1", task={"input": prompt})
                if limit == "1000":
                    assert posted.status_code == 202, posted.text
                    assert sent["op"] == "accepted", sent
                    answer = await chat(model="auto", messages=messages)  # type: ignore[arg-type]
                    assert answer.choices[0].message.content
                else:
                    assert posted.status_code == 400 and "limit is 10" in posted.text
                    assert sent["op"] == "error" and "limit is 10" in sent["message"]
                    with pytest.raises(openai.APIStatusError) as large:
                        await chat(model="auto", messages=messages)  # type: ignore[arg-type]
                    assert large.value.status_code == 413 and "limit is 10" in large.value.message
