"""The HTTP side: task API errors, SSE with Last-Event-ID resume, health and metrics."""

from __future__ import annotations

import httpx

from engine.core.keys import autoscale_key
from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway


async def _sse_ids(response: httpx.Response, limit: int | None = None) -> list[str]:
    ids: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            ids.append(line[4:])
            if limit is not None and len(ids) == limit:
                break
    return ids


JSON = "application/json"


async def test_sse_resumes_with_last_event_id_without_gap_or_duplicate(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Read part of a task's SSE stream, reconnect with Last-Event-ID: together = its log."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        created = await http.post(
            "/v1/tasks", json={"input": "hi", "params": {"script": ["stream:12"]}}
        )
        assert created.status_code == 202
        task_id = created.json()["task_id"]
        url = f"/v1/tasks/{task_id}/events"
        async with http.stream("GET", url) as first:
            assert first.headers["content-type"].startswith("text/event-stream")
            seen = await _sse_ids(first, limit=3)
        async with http.stream("GET", url, headers={"Last-Event-ID": seen[-1]}) as second:
            seen += await _sse_ids(second)  # returns because the stream ends after the terminal
        assert seen == await engine.log(task_id=task_id)
        done = await http.get(url, headers={"Last-Event-ID": seen[-1]})
        assert done.status_code == 204  # the client already has the terminal event
        view = (await http.get(f"/v1/tasks/{task_id}")).json()
        assert view["status"] == "succeeded" and view["terminal"]["id"] == seen[-1]


async def test_http_errors_are_json_with_a_code(engine: Engine, make_gateway: MakeGateway) -> None:
    """400 names the field, 429 on a full queue, 404/405/413 and bad JSON: JSON error bodies."""
    settings = engine.settings.model_copy(update={"queue_max_depth": 1})
    gateway = await make_gateway(settings, max_body_bytes=2048)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        bad = await http.post("/v1/tasks", json={"input": "x", "priority": "urgent"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_task"
        assert bad.json()["error"]["field"] == "priority"
        broken = await http.post("/v1/tasks", content=b"{", headers={"Content-Type": JSON})
        assert broken.json()["error"]["code"] == "bad_json"
        assert (await http.post("/v1/tasks", json={"input": "y"})).status_code == 202
        full = await http.post("/v1/tasks", json={"input": "z"})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"] == "1"
        big = await http.post("/v1/tasks", json={"input": "x" * 5000})
        assert big.status_code == 413
        for method, path, status in (
            ("GET", "/v1/nothing", 404),
            ("PUT", "/v1/tasks", 405),
            ("GET", "/v1/tasks/" + "a" * 32, 404),
        ):
            r = await http.request(method, path)
            assert r.status_code == status
            assert set(r.json()["error"]) >= {"code", "message"}


async def test_cancel_health_ready_and_metrics(engine: Engine, make_gateway: MakeGateway) -> None:
    """DELETE cancels; /healthz, /readyz answer; /metrics counts submits and queue lengths."""
    gateway = await make_gateway(engine.settings)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        task_id = (await http.post("/v1/tasks", json={"input": "wait"})).json()["task_id"]
        await http.post("/v1/tasks", json={"input": "wait too", "priority": "high"})
        metrics = (await http.get("/metrics")).text
        assert 'aiis_queue_length{partition="0",queue="normal"} 1.0' in metrics
        assert 'aiis_queue_length{partition="0",queue="high"} 1.0' in metrics
        assert 'aiis_gateway_submits_total{outcome="accepted",transport="http"} 2.0' in metrics
        cancelled = await http.delete(f"/v1/tasks/{task_id}")
        assert cancelled.json()["status"] == "cancelled"
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/readyz")).json()["status"] == "ready"
        metrics = (await http.get("/metrics")).text
        assert 'aiis_queue_length{partition="0",queue="normal"} 0.0' in metrics


async def test_metrics_for_autoscalers(engine: Engine, make_gateway: MakeGateway) -> None:
    """/metrics exports in-flight counts per queue and the autoscaled pools' sizes."""
    gateway = await make_gateway(engine.settings)
    client = engine.client
    await client.store.prepare()
    await client.submit("held")
    await client.store.fetch(0, "someone", 10, "high,normal,low")
    pool = autoscale_key(engine.settings.namespace, "host-42")
    await client.store.redis.hset(pool, mapping={"current": 2, "target": 3, "max": 4})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'aiis_queue_in_flight{partition="0",queue="normal"} 1.0' in metrics
    assert 'aiis_worker_pool_processes{pool="host-42"} 2.0' in metrics
    assert 'aiis_worker_pool_target{pool="host-42"} 3.0' in metrics
    assert 'aiis_worker_pool_max{pool="host-42"} 4.0' in metrics
