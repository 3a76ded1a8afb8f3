"""Issue 15 item 10: a hard budget reserves each task's estimated cost at submit and settles
it at the terminal event, so tasks submitted together cannot overspend it; a task on a model
without a price is refused for a budgeted tenant; refusals show the real amounts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from engine.admission.budget import BudgetExceeded, estimate_usd
from engine.client import Client
from engine.core.events import TERMINAL_EVENTS
from engine.errors import InvalidTask
from engine.operations.ops import Ops
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox import start_sandbox
from tests.conftest import Workers, fast_settings

pytestmark = pytest.mark.timeout(90)

BUDGET = 0.0005
PROMPT = "summarise the quarterly report [[reasoning:100]]"
PARAMS = {"model": "gpt-5-mini", "max_tokens": 150, "stream": False}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Client]:
    c = Client.from_url(
        redis_url,
        fast_settings(redis_url=redis_url, budgets=f'{{"tenants": {{"tiny": {BUDGET}}}}}'),
    )
    yield c
    await c.aclose()


async def _settle_all(client: Client, task_ids: list[str]) -> None:
    async with asyncio.timeout(30):
        for task_id in task_ids:
            async for event in client.watch(task_id):
                if event.type in TERMINAL_EVENTS:
                    assert event.type == "TaskSucceeded", event
                    break
    ops = Ops(client)
    await ops.load()
    while await ops.step():
        pass
    await ops.aclose()


async def test_ten_concurrent_submits_never_overspend_by_more_than_one_estimate(
    client: Client, workers: Workers
) -> None:
    """Ten tasks submitted together by a tenant with a $0.0005 budget, run by the real router
    against the sandbox and settled by ``aiis ops``: the settled spend stays within the budget
    plus one task's estimate, nothing stays reserved, and the refusals say "$0.0005"."""
    async with start_sandbox() as sandbox:
        router = build_processor(None, ProviderSettings(), sandbox_url=sandbox.url)
        workers.start(client, router)
        try:
            results: list[Any] = await asyncio.gather(
                *(client.submit(PROMPT, tenant="tiny", params=PARAMS) for _ in range(10)),
                return_exceptions=True,
            )
            accepted = [r for r in results if isinstance(r, str)]
            refused = [r for r in results if isinstance(r, BudgetExceeded)]
            assert len(accepted) + len(refused) == 10 and accepted and refused
            assert all("$0.0005 daily budget" in str(r) for r in refused)
            await _settle_all(client, accepted)
        finally:
            await workers.stop_all()
            await router.aclose()
    budgets = client.admission.budgets
    spent = await budgets.spent("tiny")
    one = estimate_usd([PROMPT], PARAMS["model"], PARAMS["max_tokens"])  # type: ignore[arg-type]
    assert one is not None and spent > 0
    assert spent <= BUDGET + one, (spent, len(accepted))
    assert await budgets.held("tiny") == 0


async def test_unpriced_model_refused_for_a_budgeted_tenant_only(client: Client) -> None:
    """A budgeted tenant's task on a model without a price is refused naming ``params.model``;
    a tenant without a budget may use it."""
    with pytest.raises(InvalidTask) as err:
        await client.submit("hi", tenant="tiny", params={"model": "gpt-unpriced-9"})
    assert err.value.field == "params.model"
    assert await client.admission.budgets.held("tiny") == 0
    await client.submit("hi", tenant="free", params={"model": "gpt-unpriced-9"})


async def test_refused_and_duplicate_submits_give_their_reservation_back(
    make_client: Callable[..., Client],
) -> None:
    """A repeat of an idempotency key and a submit refused by a full queue hold nothing."""
    client = make_client(budgets='{"tenants": {"t": 1.0}}', queue_max_depth=1)
    await client.submit("one", tenant="t", idempotency_key="k", params=PARAMS)
    first = await client.admission.budgets.held("t")
    assert first > 0
    await client.submit("one", tenant="t", idempotency_key="k", params=PARAMS)
    with pytest.raises(Exception, match="queue"):
        await client.submit("two", tenant="t", params=PARAMS)
    assert await client.admission.budgets.held("t") == pytest.approx(first)


async def test_settle_is_exactly_once_and_unknown_cost_charges_the_reservation(
    make_client: Callable[..., Client],
) -> None:
    """Settling a task twice counts it once; a success of unknown cost is charged its hold."""
    client = make_client(budgets='{"tenants": {"t": 1.0}}')
    budgets = client.admission.budgets
    await budgets.reserve("t", "task-a", 0.002)
    await budgets.reserve("t", "task-b", 0.003)
    assert await budgets.settle("t", "task-a", 0.0001) == pytest.approx(0.0001)
    assert await budgets.settle("t", "task-a", 0.0001) == pytest.approx(0.0001)
    assert await budgets.settle("t", "task-b", None) == pytest.approx(0.0031)
    assert await budgets.held("t") == 0


async def test_a_reservation_settled_on_a_later_day_is_given_back_to_its_own_day(
    make_client: Callable[..., Client],
) -> None:
    """The hold records the name of its day's counter (built in Python, not by the script):
    a task reserved before midnight and settled after gives back what it held that day and is
    charged to the day it finished."""
    client = make_client(budgets='{"tenants": {"t": 1.0}}')
    budgets = client.admission.budgets
    await budgets.reserve("t", "task-late", 0.004, day="20261205")
    assert await budgets.held("t", "20261205") == pytest.approx(0.004)
    assert await budgets.settle("t", "task-late", 0.001, day="20261206") == pytest.approx(0.001)
    assert await budgets.held("t", "20261205") == 0
    assert await budgets.held("t", "20261206") == 0
    assert await budgets.spent("t", "20261205") == 0
