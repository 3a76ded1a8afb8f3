"""Issue 15 item 4: params are validated at submit against the documented set, so one
tenant's bad params fail at the door (naming the field) instead of inside a shared adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from engine.client import Client
from engine.errors import InvalidTask
from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway

pytestmark = pytest.mark.timeout(60)

BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": "abc"}, "params.max_tokens"),
    ({"max_tokens": -5}, "params.max_tokens"),
    ({"max_tokens": True}, "params.max_tokens"),
    ({"temperature": 7}, "params.temperature"),
    ({"stop": [1, 2]}, "params.stop"),
    ({"stream": "yes"}, "params.stream"),
    ({"max_tokenz": 10}, "params.max_tokenz"),
    ({"system": 42}, "params.system"),
    ({"model": "ask jane@example.com"}, "params.model"),
]


@pytest.mark.parametrize(("params", "field"), BAD)
async def test_bad_params_refused_by_client_naming_the_field(
    make_client: Callable[..., Client], params: dict[str, Any], field: str
) -> None:
    """A wrong type, an out-of-range value or an unknown key is refused at submit, naming it."""
    client = make_client()
    with pytest.raises(InvalidTask) as err:
        await client.submit("hello", params=params)
    assert err.value.field == field
    assert await client.store.redis.hlen(client.store.keys(0).task) == 0


async def test_documented_params_accepted_and_stop_string_becomes_a_list(
    make_client: Callable[..., Client],
) -> None:
    """Every documented param of the right type passes; ``x_*`` keys are the caller's own;
    a single ``stop`` string is stored as a one-item list (adapters send a list)."""
    client = make_client()
    params = {
        "max_tokens": 100,
        "temperature": 1,
        "top_p": 0.5,
        "stop": "END",
        "seed": 7,
        "system": "be brief",
        "x_trace": {"any": ["thing"]},
    }
    task_id = await client.submit("hello", params=params)
    rec = orjson.loads(await client.store.redis.hget(client.store.keys(0).task, task_id))
    assert rec["params"]["stop"] == ["END"] and rec["params"]["x_trace"] == {"any": ["thing"]}


async def test_bad_params_refused_over_http_naming_the_field(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """``POST /v1/tasks`` answers 400 invalid_task with the bad param's field, writes nothing."""
    gateway = await make_gateway(engine.settings)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for params, field in BAD[:3] + BAD[6:7]:
            r = await http.post("/v1/tasks", json={"input": "x", "params": params})
            assert r.status_code == 400, params
            assert r.json()["error"]["code"] == "invalid_task"
            assert r.json()["error"]["field"] == field
    assert await engine.log() == []
