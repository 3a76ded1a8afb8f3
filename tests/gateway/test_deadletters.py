"""Dead letters over HTTP (the dashboard's panel): operator tokens list, retry and purge, each
audited like the CLI; tenant tokens are refused. Fed by a real worker + sandbox run."""

from __future__ import annotations

import httpx
import orjson
import pytest

from engine.operations.audit import Action, AuditLog
from tests.conftest import Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway
from tests.gateway.scripted import scripted_run

pytestmark = pytest.mark.slow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _requested(engine: Engine) -> list[dict[str, object]]:
    out = []
    for p in range(engine.settings.partitions):
        for _, f in await engine.client.store.entries(engine.client.store.keys(p).log):
            if f[b"type"] == b"TaskRequested":
                out.append({"task_id": f[b"task"].decode(), **orjson.loads(f[b"data"])})
    return out


async def test_operator_lists_retries_and_purges_tenant_is_refused(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """The dead letter is listed with reason and last error; retrying it (and a bogus id) makes
    one new TaskRequested with retry_of and an audit record; purge empties and is audited; a
    tenant token gets 403 from every dead-letter route."""
    async with scripted_run(engine) as run:
        gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
        async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-acme")) as http:
            refused = [
                await http.get("/v1/dlq"),
                await http.post("/v1/dlq/retry", json={"task_ids": [run.dead]}),
                await http.post("/v1/dlq/purge", json={}),
            ]
        async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-ops")) as http:
            listed = (await http.get("/v1/dlq")).json()["dead_letters"]
            bad = await http.post("/v1/dlq/retry", json={"task_ids": []})
            retried = (
                await http.post("/v1/dlq/retry", json={"task_ids": [run.dead, run.fallback]})
            ).json()
            again = (await http.post("/v1/dlq/retry", json={"task_ids": [run.dead]})).json()
            purged = (await http.post("/v1/dlq/purge", json={})).json()
            after = (await http.get("/v1/dlq")).json()["dead_letters"]
        requested = await _requested(engine)
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert all(r.json()["error"]["code"] == "forbidden" for r in refused)
    assert [(d["task_id"], d["reason"]) for d in listed] == [(run.dead, "retries_exhausted")]
    assert listed[0]["error"] and listed[0]["tenant"] == "acme"
    assert bad.status_code == 400
    [new] = retried["retried"]
    assert new["task_id"] == run.dead
    assert [e["task_id"] for e in retried["errors"]] == [run.fallback]
    assert again["retried"] == [] and again["errors"][0]["code"] == "not_dead_lettered"
    assert [r["task_id"] for r in requested if r.get("retry_of") == run.dead] == [
        new["new_task_id"]
    ]
    assert after == [] or [d["task_id"] for d in after] == [new["new_task_id"]]
    assert purged["purged"] >= 0
    audit = AuditLog(engine.client.store.redis, engine.settings.namespace)
    entries = await audit.read(limit=1000)
    retries = [e for e in entries if e.action == Action.DLQ_RETRY]
    assert [(e.target, e.detail["new_task"], e.token_id) for e in retries] == [
        (run.dead, new["new_task_id"], retries[0].token_id)
    ]
    assert retries[0].token_id is not None and retries[0].token_id.startswith("t:")
    purges = [e for e in entries if e.action == Action.DLQ_PURGE]
    assert [e.detail["purged"] for e in purges] == [purged["purged"]]
