"""The gateway's side of issue 7: error codes for refused submits, audit records naming the
tenant and token id (never the token), PII restored on reads for the caller."""

from __future__ import annotations

import httpx

from engine.admission.policy import set_config
from engine.operations.audit import AuditLog
from gateway.auth import hash_token, token_id
from tests.conftest import Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway


async def test_refused_submits_have_codes_and_every_submit_is_audited(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """pii_blocked, bad_callback_url, template_error (400), budget_exceeded (429); submits
    and cancels are audited with the token id, which is not the token."""
    redis, ns = engine.client.store.redis, engine.settings.namespace
    await set_config(redis, ns, "pii_policy", '{"tenants": {"acme": "block"}}')
    await set_config(redis, ns, "budgets", '{"tenants": {"beta": 0}}')
    gw = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    acme = {"Authorization": "Bearer tok-acme"}
    cases = [
        (acme, {"input": "call +81 90 1234 5678"}, 400, "pii_blocked"),
        (acme, {"input": "x", "params": {"callback_url": "gopher://x"}}, 400, "bad_callback_url"),
        (acme, {"input": "", "params": {"template": "missing"}}, 400, "template_error"),
        ({"Authorization": "Bearer tok-beta"}, {"input": "x"}, 429, "budget_exceeded"),
    ]
    async with httpx.AsyncClient(base_url=gw.url) as http:
        for headers, body, status, code in cases:
            r = await http.post("/v1/tasks", json=body, headers=headers)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
            assert "1234 5678" not in r.text
        ok = await http.post("/v1/tasks", json={"input": "fine"}, headers=acme)
        task_id = ok.json()["task_id"]
        await http.delete(f"/v1/tasks/{task_id}", headers=acme)
    entries = await AuditLog(redis, ns).read()
    acme_id = token_id(hash_token("tok-acme"))
    assert [(e.action.value, e.outcome) for e in entries if e.tenant == "acme"] == [
        ("submit", "denied"),
        ("submit", "denied"),
        ("submit", "denied"),
        ("submit", "ok"),
        ("cancel", "ok"),
    ]
    assert all(e.token_id == acme_id for e in entries if e.tenant == "acme")
    assert "tok-acme" not in str([e.model_dump() for e in entries])


async def test_get_restores_pii_for_the_caller(engine: Engine, make_gateway: MakeGateway) -> None:
    """GET /v1/tasks/ID answers with the caller's own values in place of placeholders."""
    engine.start_worker()
    gw = await make_gateway(engine.settings)
    async with httpx.AsyncClient(base_url=gw.url) as http:
        r = await http.post("/v1/tasks", json={"input": "ping ann@example.com", "params": {}})
        task_id = r.json()["task_id"]
        for _ in range(200):
            body = (await http.get(f"/v1/tasks/{task_id}")).json()
            if body["terminal"]:
                break
            import asyncio

            await asyncio.sleep(0.05)
    assert body["terminal"]["data"]["result"]["text"].endswith("ann@example.com")
