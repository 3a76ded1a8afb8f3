"""Task search (``GET /v1/tasks``, gRPC ``ListTasks``) over the ``task_state`` view, on a
standalone server and on a Redis Cluster: filters, tenant scoping, pages and bad input."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import httpx
import pytest

from gateway.grpc.gen import tasks_pb2 as pb
from tests.conftest import TOPOLOGIES, Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway
from tests.gateway.scripted import project, wait_terminal
from tests.grpc import conftest as grpc_fixtures
from tests.grpc.conftest import ACME, BETA, OPS, MakeServer

pytestmark = pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
make_server = grpc_fixtures.make_server  # the gRPC suite's fixtures, here too
connect = grpc_fixtures.connect


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _tasks(engine: Engine) -> dict[str, list[str]]:
    """acme: 5 text successes, 1 chat success, 1 failure; beta: 2 successes; all finished."""
    client = engine.client
    made: dict[str, list[str]] = {"acme_ok": [], "acme_chat": [], "acme_failed": [], "beta": []}
    for i in range(5):
        made["acme_ok"].append(await client.submit(f"a{i}", tenant="acme"))
    made["acme_chat"].append(
        await client.submit(kind="chat", input=[{"role": "user", "content": "c"}], tenant="acme")
    )
    made["acme_failed"].append(
        await client.submit("bad", tenant="acme", params={"script": ["InvalidRequest"]})
    )
    for i in range(2):
        made["beta"].append(await client.submit(f"b{i}", tenant="beta"))
    for ids in made.values():
        for task_id in ids:
            await wait_terminal(client, task_id)
    await project(engine)
    return made


async def _all_pages(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(20):
        r = await http.get("/v1/tasks", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["tasks"]) <= int(params.get("limit", 50))
        rows += body["tasks"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("more pages than tasks")


async def test_search_filters_scopes_and_pages(
    engine: Engine, make_gateway: MakeGateway, make_server: MakeServer, connect: Any
) -> None:
    """Filters select from the view, a tenant token sees its tenant only, pages of 2 walk every
    task once newest first, bad input is a 400 naming the field; gRPC ListTasks agrees."""
    engine.start_worker()
    made = await _tasks(engine)
    acme = set(made["acme_ok"] + made["acme_chat"] + made["acme_failed"])
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-acme")) as http:
        rows = await _all_pages(http, limit="2")
        assert [r["task_id"] for r in rows if r["task_id"] in acme] == [r["task_id"] for r in rows]
        assert {r["task_id"] for r in rows} == acme and len(rows) == len(acme)
        order = [(r["requested_ts"], r["task_id"]) for r in rows]
        assert order == sorted(order, reverse=True)
        failed = (await http.get("/v1/tasks?status=failed")).json()["tasks"]
        assert [r["task_id"] for r in failed] == made["acme_failed"]
        chats = (await http.get("/v1/tasks?kind=chat")).json()["tasks"]
        assert [r["task_id"] for r in chats] == made["acme_chat"]
        newest = rows[0]["requested_ts"]
        recent = (await http.get(f"/v1/tasks?since={newest}")).json()["tasks"]
        assert {r["requested_ts"] for r in recent} == {newest}
        older = (await http.get(f"/v1/tasks?until={newest - 1}")).json()["tasks"]
        assert all(r["requested_ts"] < newest for r in older)
        assert (await http.get("/v1/tasks?tenant=beta")).status_code == 403
        assert (await http.get("/v1/tasks?tenant=acme")).status_code == 200

        page = (await http.get("/v1/tasks?limit=2")).json()
        cursor = page["next_cursor"]
        body, mac = cursor.split(".")
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        forged_raw = raw.replace(b'"', b'"', 1).replace(b"[", b"[9", 1)
        forged = base64.urlsafe_b64encode(forged_raw).rstrip(b"=").decode() + "." + mac
        bad = {
            "status=finished": "status",
            "kind=video": "kind",
            "limit=0": "limit",
            "limit=501": "limit",
            "limit=ten": "limit",
            "since=yesterday": "since",
            "since=2000&until=1000": "until",
            "cursor=garbage": "cursor",
            f"cursor={forged}": "cursor",
            f"cursor={cursor}&status=failed": "cursor",
        }
        for query, field in bad.items():
            r = await http.get(f"/v1/tasks?{query}")
            assert r.status_code == 400, query
            assert r.json()["error"]["code"] == "bad_query"
            assert r.json()["error"]["field"] == field, query
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-ops")) as http:
        everyone = await _all_pages(http, limit="3")
        assert {r["task_id"] for r in everyone} == acme | set(made["beta"])
        only_beta = (await http.get("/v1/tasks?tenant=beta")).json()["tasks"]
        assert {r["task_id"] for r in only_beta} == set(made["beta"])
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/v1/tasks")).status_code == 401

    stub = connect(await make_server(engine.settings))
    reply = await stub.ListTasks(pb.ListTasksRequest(limit=50), metadata=ACME)
    assert [t.task_id for t in reply.tasks] == [r["task_id"] for r in rows]
    assert all(t.source == pb.TASK_SOURCE_PROJECTION for t in reply.tasks)
    assert reply.next_cursor == ""
    first = await stub.ListTasks(pb.ListTasksRequest(limit=2), metadata=ACME)
    second = await stub.ListTasks(
        pb.ListTasksRequest(limit=2, cursor=first.next_cursor), metadata=ACME
    )
    assert [t.task_id for t in [*first.tasks, *second.tasks]] == [r["task_id"] for r in rows[:4]]
    failed_rpc = await stub.ListTasks(pb.ListTasksRequest(status="failed"), metadata=ACME)
    assert [t.task_id for t in failed_rpc.tasks] == made["acme_failed"]
    assert failed_rpc.tasks[0].status == pb.TASK_STATUS_FAILED
    beta_rpc = await stub.ListTasks(pb.ListTasksRequest(tenant="beta"), metadata=OPS)
    assert {t.task_id for t in beta_rpc.tasks} == set(made["beta"])
    mine = await stub.ListTasks(pb.ListTasksRequest(), metadata=BETA)
    assert {t.task_id for t in mine.tasks} == set(made["beta"])
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ListTasks(pb.ListTasksRequest(tenant="beta"), metadata=ACME)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for request, field in (
        (pb.ListTasksRequest(status="nope"), "status"),
        (pb.ListTasksRequest(limit=501), "limit"),
        (pb.ListTasksRequest(since="2000", until="1000"), "until"),
        (pb.ListTasksRequest(cursor=forged), "cursor"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad_rpc:
            await stub.ListTasks(request, metadata=ACME)
        assert bad_rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(bad_rpc.value.trailing_metadata() or ())["aiis-field"] == field
