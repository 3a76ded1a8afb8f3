"""Tenant isolation: a token sees and touches only its own tenant's tasks and events."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect

from engine.client import Client
from projections.settings import ProjectionSettings
from tests.conftest import Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway, events_until_terminal, request

STREAM = {"script": ["stream:3"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _finish(client: Client, task_ids: list[str]) -> None:
    for task_id in task_ids:
        async for _ in client.watch(task_id):
            pass


async def test_a_token_never_receives_another_tenants_events(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """acme's subscriber gets every acme event and not one of beta's, though both run."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    async with connect(gateway.ws_url, additional_headers=bearer("tok-acme")) as ws:
        for target in ({"tenant": "beta"}, {"tenant": "*"}):
            reply = await request(ws, op="subscribe", **target)
            assert reply["code"] == "forbidden"
        assert (await request(ws, op="subscribe", tenant="acme"))["op"] == "subscribed"
        beta = [await engine.client.submit("b", tenant="beta", params=STREAM) for _ in range(3)]
        acme = [await engine.client.submit("a", tenant="acme", params=STREAM) for _ in range(3)]
        await _finish(engine.client, beta)
        got = await events_until_terminal(ws, set(acme))
    assert {e["tenant"] for e in got} == {"acme"}
    assert [e["id"] for e in got] == await engine.log(tenant="acme")


async def test_guessed_task_ids_look_like_missing_ones(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Another tenant's task id is answered exactly like an id that does not exist."""
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    theirs = await engine.client.submit("secret", tenant="beta")
    missing = "0" * 32
    async with connect(gateway.ws_url, additional_headers=bearer("tok-acme")) as ws:
        a = await request(ws, op="subscribe", task_id=theirs)
        b = await request(ws, op="subscribe", task_id=missing)
        assert a["code"] == b["code"] == "not_found"
        assert a["message"].replace(theirs, missing) == b["message"]
        forbidden = await request(ws, op="submit", task={"input": "x", "tenant": "beta"})
        assert forbidden["code"] == "forbidden"
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-acme")) as http:
        for method in ("GET", "DELETE"):
            r1 = await http.request(method, f"/v1/tasks/{theirs}")
            r2 = await http.request(method, f"/v1/tasks/{missing}")
            assert r1.status_code == r2.status_code == 404
            assert r1.json()["error"]["code"] == "not_found"
        sse = await http.get(f"/v1/tasks/{theirs}/events")
        assert sse.status_code == 404
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-beta")) as http:
        assert (await http.get(f"/v1/tasks/{theirs}")).json()["tenant"] == "beta"
    assert (await engine.client.get(theirs)).status.value == "queued"  # acme's DELETE did nothing


async def test_operator_token_and_submit_tenant_forcing(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """A tenant token's submits land in its tenant; an operator token may read every tenant."""
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    async with connect(gateway.ws_url, additional_headers=bearer("tok-acme")) as ws:
        accepted = await request(ws, op="submit", task={"input": "mine"})
    assert (await engine.client.get(accepted["task_id"])).tenant == "acme"
    async with connect(gateway.ws_url + "?token=tok-ops") as ws:
        assert (await request(ws, op="subscribe", tenant="*"))["op"] == "subscribed"
        assert (await request(ws, op="subscribe", task_id=accepted["task_id"]))["op"] == (
            "subscribed"
        )


async def test_open_mode_refuses_a_non_loopback_address(engine: Engine) -> None:
    """Without tokens the gateway will not listen beyond loopback."""
    from gateway.errors import GatewayConfigError
    from gateway.server import Gateway
    from gateway.settings import GatewaySettings

    gateway = Gateway(
        engine.settings,
        GatewaySettings(tokens=""),
        proj=ProjectionSettings(),
        host="0.0.0.0",
        port=0,
    )
    with pytest.raises(GatewayConfigError, match="loopback"):
        await gateway.start()
