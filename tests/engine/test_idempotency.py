"""Issue 18: an idempotency key names one request. Repeating it with the same request attaches
to the task it names; reusing it with another request (kind, input or params) is refused with
``IdempotencyConflict`` and writes nothing. Runs on the real redis-server and on fakeredis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from engine.client import Client
from engine.core.keys import partition_of
from engine.core.task import validate_task
from engine.errors import IdempotencyConflict
from tests.engine.helpers import log_events

MakeClient = Callable[..., Client]
PARAMS = {"model": "gpt-5-mini", "max_tokens": 150, "stream": False}


async def test_same_key_other_input_is_a_conflict_naming_the_task(
    make_client: MakeClient,
) -> None:
    """Same key + same input → the same task; same key + another input, kind or params →
    ``IdempotencyConflict`` naming the first task, and nothing more is written."""
    client = make_client()
    first = await client.submit("write a haiku", idempotency_key="order-1")
    assert await client.submit("write a haiku", idempotency_key="order-1") == first
    before = await log_events(client)
    refused: list[Any] = [
        dict(input="write a limerick"),
        dict(input=[{"role": "user", "content": "write a haiku"}], kind="chat"),
        dict(input="write a haiku", params={"temperature": 0.5}),
    ]
    for other in refused:
        with pytest.raises(IdempotencyConflict) as err:
            await client.submit(**other, idempotency_key="order-1")
        assert err.value.task_id == first and err.value.field == "idempotency_key"
    assert await log_events(client) == before
    # another tenant's same key is its own task
    assert await client.submit("write a limerick", idempotency_key="order-1", tenant="b") != first


async def test_priority_deadline_and_trace_are_not_part_of_the_request(
    make_client: MakeClient,
) -> None:
    """A retry that changes only the priority, deadline or traceparent still attaches."""
    client = make_client()
    first = await client.submit("hello", idempotency_key="k", priority="low")
    again = await client.submit(
        "hello",
        idempotency_key="k",
        priority="high",
        deadline_s=30,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert again == first


async def test_conflict_inside_one_group_committed_batch(make_client: MakeClient) -> None:
    """Concurrent submits of one key land in one script call: the first creates the task, a
    different request after it is refused, the same one attaches."""
    client = make_client()
    results: list[Any] = await asyncio.gather(
        client.submit("a", idempotency_key="race"),
        client.submit("b", idempotency_key="race"),
        client.submit("a", idempotency_key="race"),
        return_exceptions=True,
    )
    first, conflict, same = results
    assert isinstance(first, str) and same == first
    assert isinstance(conflict, IdempotencyConflict) and conflict.task_id == first
    assert sum(e["type"] == "TaskRequested" for e in await log_events(client)) == 1


async def test_fingerprint_is_of_the_request_before_pii_redaction(
    make_client: MakeClient,
) -> None:
    """Under the ``redact`` policy two prompts that differ only in an e-mail address are stored
    alike (``<EMAIL_1>``) yet are two requests: the key conflicts; the same original text
    attaches. The fingerprint holds no text of the prompt."""
    client = make_client(pii_policy="redact")
    first = await client.submit("mail ann@example.com the invoice", idempotency_key="pii")
    assert await client.submit("mail ann@example.com the invoice", idempotency_key="pii") == first
    with pytest.raises(IdempotencyConflict):
        await client.submit("mail bob@example.com the invoice", idempotency_key="pii")
    keys = client.store.keys(partition_of(first, client.settings.partitions))
    record = orjson.loads(await client.store.redis.hget(keys.task, first))
    assert "<EMAIL_1>" in record["input"] and "ann@" not in orjson.dumps(record).decode()
    assert len(record["fp"]) == 64


async def test_records_without_a_fingerprint_still_deduplicate(make_client: MakeClient) -> None:
    """A task written before fingerprints (its record has no ``fp``) still attaches a repeat of
    its key, whatever the request: there is nothing to compare."""
    client = make_client()
    first = await client.submit("old", idempotency_key="legacy")
    keys = client.store.keys(partition_of(first, client.settings.partitions))
    record = orjson.loads(await client.store.redis.hget(keys.task, first))
    del record["fp"]
    await client.store.redis.hset(keys.task, first, orjson.dumps(record))
    assert await client.submit("new", idempotency_key="legacy") == first


async def test_submit_outcome_tells_created_from_attached(make_client: MakeClient) -> None:
    """``submit_outcome`` says whether the submit created the task or its key attached it."""
    client = make_client()
    spec = validate_task({"input": "x", "idempotency_key": "o"}, client.settings)
    made = await client.submit_outcome(spec)
    again = await client.submit_outcome(spec)
    assert made.created and not again.created and again.task_id == made.task_id
    plain = await client.submit_outcome(validate_task({"input": "x"}, client.settings))
    assert plain.created and plain.task_id != made.task_id


async def test_a_conflict_gives_its_budget_reservation_back(make_client: MakeClient) -> None:
    """A refused reuse of a key holds nothing of the tenant's budget."""
    client = make_client(budgets='{"tenants": {"t": 1.0}}')
    await client.submit("one", tenant="t", idempotency_key="k", params=PARAMS)
    held = await client.admission.budgets.held("t")
    assert held > 0
    with pytest.raises(IdempotencyConflict):
        await client.submit("two", tenant="t", idempotency_key="k", params=PARAMS)
    assert await client.admission.budgets.held("t") == pytest.approx(held)
