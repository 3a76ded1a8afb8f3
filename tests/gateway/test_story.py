"""A task's story (``GET /v1/tasks/{id}/events`` as JSON, ``aiis get ID --events``) from a real
worker calling the sandbox through the real router: a fallback, retries, a dead letter."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from engine.runtime.cli import main
from tests.conftest import TOPOLOGIES, Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway
from tests.gateway.scripted import project, scripted_run, wait_terminal

pytestmark = pytest.mark.slow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_story_shows_fallback_retries_and_dead_letter(
    engine: Engine,
    make_gateway: MakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The JSON story names each provider call, the fallback, each retry's delay and the dead
    letter; its events are the task's log; another tenant gets 404; the CLI prints the same."""
    async with scripted_run(engine) as run:
        gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
        async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-acme")) as http:
            url = f"/v1/tasks/{run.fallback}/events"
            by_query = await http.get(url, params={"format": "json"})
            by_accept = await http.get(url, headers={"Accept": "application/json"})
            dead = (await http.get(f"/v1/tasks/{run.dead}/events?format=json")).json()
            await project(engine)
            served = {"provider": "openai", "status": "succeeded"}
            openai = await http.get("/v1/tasks", params=served)
            served_by_openai = openai.json()["tasks"]
            dead_search = (await http.get("/v1/tasks?status=dead_lettered")).json()["tasks"]
        async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-beta")) as http:
            theirs = await http.get(url, params={"format": "json"})
            beta_sees = (await http.get("/v1/tasks")).json()["tasks"]
        fallback_log = await engine.log(task_id=run.fallback)
        dead_log = await engine.log(task_id=run.dead)

        monkeypatch.setenv("AIIS_REDIS_URL", engine.settings.redis_url or "")
        monkeypatch.setenv("AIIS_NAMESPACE", engine.settings.namespace)
        monkeypatch.setenv("AIIS_PARTITIONS", str(engine.settings.partitions))
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["get", run.fallback, "--events"]) == 0
        printed = capsys.readouterr().out
        assert await asyncio.to_thread(main, ["get", run.dead, "--events", "--json"]) == 0
        dead_cli = orjson.loads(capsys.readouterr().out)

    assert by_query.status_code == 200
    assert by_query.headers["content-type"] == "application/json"
    story = by_query.json()
    assert by_accept.json() == story
    assert theirs.status_code == 404
    assert story["status"] == "succeeded" and story["tenant"] == "acme"
    assert (story["provider"], story["model"].startswith("gpt")) == ("openai", True)
    [attempt] = story["attempts"]
    calls = [(c["provider"], c["outcome"], c["error_class"]) for c in attempt["calls"]]
    assert calls == [("gemini", "error", "RateLimited"), ("openai", "ok", None)]
    assert all(c["latency_ms"] is not None and c["model"] for c in attempt["calls"])
    assert [(f["from"], f["to"], f["error_class"]) for f in story["fallbacks"]] == [
        ("gemini", "openai", "RateLimited")
    ]
    assert story["usage"]["output_tokens"] > 0 and story["cost_usd"] > 0
    assert story["result"]["text"]
    offsets = [e["offset_ms"] for e in story["events"]]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert {e["id"] for e in story["events"]} <= set(fallback_log)
    assert story["events"][0]["type"] == "TaskRequested"
    assert story["events"][-1]["type"] == "TaskSucceeded"

    assert dead["status"] == "dead_lettered" and dead["dead_reason"] == "retries_exhausted"
    assert len(dead["attempts"]) == 5
    assert [r["attempt"] for r in dead["retries"]] == [1, 2, 3, 4]
    assert all(r["delay_ms"] >= 0 and r["error_class"] for r in dead["retries"])
    assert [a["outcome"] for a in dead["attempts"]] == ["retry_scheduled"] * 4 + ["dead_lettered"]
    assert {e["id"] for e in dead["events"]} <= set(dead_log)
    started = [e for e in dead["events"] if e["type"] == "TaskStarted"]
    assert len(started) == 5
    assert dead_cli == dead

    # the search, from the task_state view the projections folded from the same run
    assert [t["task_id"] for t in served_by_openai] == [run.fallback]
    assert served_by_openai[0]["fallbacks"] == 1
    assert [(t["task_id"], t["dead_reason"]) for t in dead_search] == [
        (run.dead, "retries_exhausted")
    ]
    assert [t["task_id"] for t in beta_sees] == [run.plain[1]]

    assert "fallback gemini → openai" in printed
    assert run.fallback in printed
    assert "RateLimited" in printed


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_sse_is_still_the_default_answer(engine: Engine, make_gateway: MakeGateway) -> None:
    """Without ?format=json or an Accept naming JSON the route still streams SSE; the story is
    read from the task's partition on a Redis Cluster too."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    task_id = await engine.client.submit("hi", params={"script": ["stream:2"]})
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        r = await http.get(f"/v1/tasks/{task_id}/events", headers={"Accept": "text/event-stream"})
        assert r.headers["content-type"].startswith("text/event-stream")
        story = (await http.get(f"/v1/tasks/{task_id}/events?format=json")).json()
    # the worker coalesces deltas into progress events: the characters are what was streamed
    assert story["chars"] == len("chunk0 chunk1 ") and story["status"] == "succeeded"
    assert story["attempts"][0]["chars"] == story["chars"] and story["deltas"] >= 1


async def test_story_restores_pii_only_for_a_reader_of_the_task(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """The owner's story shows its own value in the result (restored from the vault, as GET
    does); the log holds a placeholder; another tenant gets a 404 that names no value."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-acme")) as http:
        created = await http.post("/v1/tasks", json={"input": "ping ann@example.com"})
        task_id = created.json()["task_id"]
        await wait_terminal(engine.client, task_id)
        mine = (await http.get(f"/v1/tasks/{task_id}/events?format=json")).json()
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer("tok-beta")) as http:
        theirs = await http.get(f"/v1/tasks/{task_id}/events?format=json")
    assert mine["result"]["text"].endswith("ann@example.com")
    assert theirs.status_code == 404 and "ann@" not in theirs.text
    stored = await engine.client.get(task_id, for_caller=False)
    assert (
        stored.terminal is not None and "ann@example.com" not in stored.terminal.model_dump_json()
    )
