"""Pacing by the provider's hints, keys that are not condemned by one 401, replies that echo a
key, and our own errors: none of them may open a provider's breaker for every tenant, fail
tasks that could succeed, or put a key into the log."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from engine.core.retry import RetryPolicy, Verdict, decide
from providers import keys
from providers.config import ProviderSettings
from providers.credentials.keyring import Key, KeyRejected, Keyring, NoUsableKey, default_loader
from providers.errors import AuthFailed, OwnFailure, RateLimited
from providers.factory import build_router, sandbox_settings
from providers.sandbox import Sandbox, start_sandbox
from providers.types import ProviderRequest
from tests.conftest import Engine

OPENAI_KEY = "sk-test-pacing-0123456789abcdef"


class Notices:
    """A ProgressSink that keeps what it is told."""

    def __init__(self) -> None:
        self.notices: list[tuple[str, dict[str, Any]]] = []
        self.deltas: list[str] = []

    def delta(self, text: str) -> None:
        self.deltas.append(text)

    def notice(self, kind: str, data: Any) -> None:
        self.notices.append((kind, dict(data)))


def _openai_only(prefix: str, **extra: Any) -> ProviderSettings:
    return ProviderSettings(
        OPENAI_API_KEY=SecretStr(OPENAI_KEY),
        AIIS_TEXT_CHAIN="openai",
        AIIS_PROVIDERS_PREFIX=prefix,
        **extra,
    )


def _sandboxed(sandbox: Sandbox, prefix: str) -> ProviderSettings:
    base = ProviderSettings(AIIS_TEXT_CHAIN="openai", AIIS_PROVIDERS_PREFIX=prefix)
    return sandbox_settings(sandbox.url, base)


def _too_many(headers: dict[str, str]) -> httpx.MockTransport:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": None}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=headers, json=body)

    return httpx.MockTransport(handler)


async def _events(engine: Engine, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    store = engine.client.store
    for p in range(engine.settings.partitions):
        for _, fields in await store.entries(store.keys(p).log):
            if fields[b"task"] == task_id.encode():
                out.append((fields[b"type"].decode(), orjson.loads(fields[b"data"])))
    return out


async def _wait_terminal(engine: Engine, ids: list[str], timeout: float = 30.0) -> list[str]:
    statuses: list[str] = []
    async with asyncio.timeout(timeout):
        for tid in ids:
            while True:
                status = (await engine.client.get(tid)).status.value
                if status in ("succeeded", "failed", "dead_lettered", "cancelled"):
                    statuses.append(status)
                    break
                await asyncio.sleep(0.02)
    return statuses


async def test_six_concurrent_429s_leave_the_breaker_closed(redis: aioredis.Redis) -> None:
    """Six concurrent 429s with `retry-after: 1` are pacing, not failures: the breaker
    (threshold 5) stays closed with no failure counted, and no circuit notice is written."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    router = build_router(redis, _openai_only(prefix), transport=_too_many({"retry-after": "1"}))
    sinks = [Notices() for _ in range(6)]
    try:
        results = await asyncio.gather(
            *(
                router.process(ProviderRequest(f"t{i}", "acme", "text", prompt="hi"), sink)
                for i, sink in enumerate(sinks)
            ),
            return_exceptions=True,
        )
    finally:
        await router.aclose()
    assert all(isinstance(r, RateLimited) and r.retry_after == 1.0 for r in results)
    assert router.breakers is not None
    assert await router.breakers.state("openai") == "closed"
    assert await redis.hget(keys.breaker(prefix, "openai"), "failures") in (None, b"0")
    kinds = [kind for s in sinks for kind, _ in s.notices]
    assert "circuit_opened" not in kinds
    assert kinds.count("attempt") == 6  # each was a real call, reported with its outcome


async def test_retry_after_ms_hint_is_the_scheduled_delay(engine: Engine) -> None:
    """OpenAI's `retry-after-ms: 1500` (with a rounded `retry-after: 1`) is honoured: the
    retry event schedules the next attempt no sooner than 1.5 s."""
    transport = _too_many({"retry-after-ms": "1500", "retry-after": "1"})
    router = build_router(
        engine.client.store.redis, _openai_only(engine.settings.namespace), transport=transport
    )
    engine.workers.start(engine.client, router, concurrency=2)
    task_id = await engine.client.submit("paced", tenant="acme")
    try:
        async with asyncio.timeout(20):
            while True:
                retries = [
                    d for t, d in await _events(engine, task_id) if t == "TaskRetryScheduled"
                ]
                if retries:
                    break
                await asyncio.sleep(0.02)
    finally:
        await engine.client.cancel(task_id)
        await engine.workers.stop_all()
        await router.aclose()
    assert retries[0]["error"]["error_class"] == "RateLimited"
    assert retries[0]["delay_ms"] >= 1500
    assert retries[0]["due_ms"] - 1500 >= 0


async def test_a_transient_401_does_not_fail_later_tasks(engine: Engine) -> None:
    """One brief 401 on a worker's only key: the task that met it is retried and succeeds,
    and every later task is sent and succeeds (no NoUsableKey without a request)."""
    async with start_sandbox() as sandbox:
        sandbox.inject("openai", "bad_key", times=1)
        router = build_router(
            engine.client.store.redis, _sandboxed(sandbox, engine.settings.namespace)
        )
        engine.workers.start(engine.client, router, concurrency=1)
        ids = [await engine.client.submit(f"task {i}", tenant="acme") for i in range(6)]
        try:
            statuses = await _wait_terminal(engine, ids)
        finally:
            await engine.workers.stop_all()
            await router.aclose()
        received = sandbox.stats()["requests"]["openai"]
    assert statuses == ["succeeded"] * 6
    classes = [
        d["error"]["error_class"]
        for tid in ids
        for t, d in await _events(engine, tid)
        if t in ("TaskRetryScheduled", "TaskFailed")
    ]
    assert classes == ["KeyRejected"]
    assert received == 7  # the rejected request, its retry and five more: all sent


async def test_reload_with_the_same_key_clears_its_mark(tmp_path: Path) -> None:
    """A key confirmed bad (two rejections) is usable again after the secrets file is rewritten
    with the same key and reloaded."""
    (tmp_path / "openai_api_key").write_text(OPENAI_KEY + "\n")
    now = [0.0]
    ring = Keyring(default_loader(tmp_path, ProviderSettings), clock=lambda: now[0])

    async def rejected(key: Key) -> str:
        raise AuthFailed("401", provider="openai", status=401)

    async def accepted(key: Key) -> str:
        return key.id

    with pytest.raises(KeyRejected):
        await ring.call("openai", rejected)
    now[0] = 1.0
    with pytest.raises(AuthFailed) as confirmed:
        await ring.call("openai", rejected)
    assert not isinstance(confirmed.value, KeyRejected)
    with pytest.raises(NoUsableKey):
        await ring.call("openai", accepted)
    (tmp_path / "openai_api_key").write_text(OPENAI_KEY + "\n")
    assert ring.reload()
    assert await ring.call("openai", accepted) == ring.key_ids("openai")[0]


async def test_a_reply_echoing_the_key_is_scrubbed(engine: Engine) -> None:
    """A reply that echoes the API key (streamed and whole) reaches the log with the key
    replaced: neither the progress deltas nor the result hold it."""
    async with start_sandbox() as sandbox:
        settings = _sandboxed(sandbox, engine.settings.namespace)
        secret = settings.provider("openai").api_key
        assert secret is not None
        key = secret.get_secret_value()
        router = build_router(engine.client.store.redis, settings)
        engine.workers.start(engine.client, router)
        ids = [
            await engine.client.submit("[[fault:echo_key@openai]] tell me", tenant="acme"),
            await engine.client.submit(
                "[[fault:echo_key@openai]] whole", tenant="acme", params={"stream": False}
            ),
        ]
        try:
            assert await _wait_terminal(engine, ids) == ["succeeded", "succeeded"]
        finally:
            await engine.workers.stop_all()
            await router.aclose()
        assert sandbox.stats()["faults_by_provider"]["openai"] == {"echo_key": 2}
    for tid in ids:
        events = await _events(engine, tid)
        progress = "".join(d.get("delta", "") for t, d in events if t == "TaskProgress")
        result = next(d for t, d in events if t == "TaskSucceeded")["result"]["text"]
        assert result.endswith("***")
        assert key not in orjson.dumps(events).decode()
        if tid == ids[0]:
            assert progress.endswith("***")


async def test_our_own_error_never_opens_the_breaker(redis: aioredis.Redis) -> None:
    """`max_tokens: "abc"` fails inside the adapter (a ValueError of our code): OwnFailure,
    never sent, never retried, the breaker untouched — the next tenant's call goes out."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    async with start_sandbox() as sandbox:
        router = build_router(redis, _sandboxed(sandbox, prefix))
        bad = {"provider": "openai", "max_tokens": "abc"}
        try:
            for i in range(6):
                with pytest.raises(OwnFailure) as info:
                    await router.process(
                        ProviderRequest(f"a{i}", "tenant-a", "text", prompt="x", params=bad),
                        Notices(),
                    )
                assert info.value.provider is None and not info.value.retryable
            assert router.breakers is not None
            assert await router.breakers.state("openai") == "closed"
            sink = Notices()
            result = await router.process(
                ProviderRequest("b", "tenant-b", "text", prompt="fine"), sink
            )
        finally:
            await router.aclose()
        assert sandbox.stats()["requests"] == {"openai": 1}
    assert result.provider == "openai"
    assert [k for k, _ in sink.notices] == ["attempt"]
    verdict = decide(
        RetryPolicy(), info.value.error_class, 1, retry_after=None, now_ms=0, deadline_ms=10**9
    )
    assert verdict.verdict is Verdict.FAIL


async def test_no_usable_key_is_a_skip_not_a_call() -> None:
    """With its only key confirmed bad, the provider is not called: the router reports a skip
    (reason no_usable_key), never an `attempt` the health view would count as a failure."""
    async with start_sandbox() as sandbox:
        router = build_router(None, _sandboxed(sandbox, "p"))
        assert router.keyring is not None
        router.keyring.mark_failed("openai", router.keyring.key_ids("openai")[0])
        sink = Notices()
        try:
            with pytest.raises(NoUsableKey):
                await router.process(ProviderRequest("t", "acme", "text", prompt="hi"), sink)
        finally:
            await router.aclose()
        assert sandbox.stats()["requests"] == {}
    assert [(k, d.get("reason")) for k, d in sink.notices] == [("skipped", "no_usable_key")]
