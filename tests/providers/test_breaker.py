"""Shared circuit breakers: open after 5 consecutive failures, one half-open probe, close on
success; on fakeredis[lua] here, across worker processes on a real redis-server below."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from providers.breaker import BreakerPolicy, Breakers
from providers.errors import InvalidRequest, NetworkError, Overloaded
from providers.factory import build_router
from providers.sandbox import Sandbox
from providers.types import ProviderRequest
from tests.providers.conftest import RecordingSink, make_settings

ROOT = Path(__file__).resolve().parents[2]


async def fail() -> None:
    raise NetworkError("boom", provider="gemini")


async def ok() -> str:
    return "ok"


def breakers(redis: aioredis.Redis, open_s: float = 60.0, hook: Any = None) -> Breakers:
    return Breakers(redis, f"t{uuid.uuid4().hex[:8]}", BreakerPolicy(5, open_s, 5.0), hook)


async def test_opens_after_five_consecutive_failures(fake_redis: aioredis.Redis) -> None:
    """Four failures keep it closed, the fifth opens it, and then calls are refused unmade."""
    b = breakers(fake_redis)
    for _ in range(4):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    assert await b.state("gemini") == "closed"
    with pytest.raises(NetworkError):
        await b.call("gemini", fail)
    assert await b.state("gemini") == "opened"
    called = False

    async def spy() -> None:
        nonlocal called
        called = True

    with pytest.raises(Overloaded) as info:
        await b.call("gemini", spy)
    assert not called
    assert info.value.retry_after is not None and 55 < info.value.retry_after <= 60


async def test_success_resets_the_count(fake_redis: aioredis.Redis) -> None:
    """Failures must be consecutive: a success in between resets the count."""
    b = breakers(fake_redis)
    for _ in range(4):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    assert await b.call("gemini", ok) == "ok"
    for _ in range(4):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    assert await b.state("gemini") == "closed"


async def test_invalid_request_does_not_count(fake_redis: aioredis.Redis) -> None:
    """InvalidRequest is the caller's fault, not the provider's: the breaker stays closed."""
    b = breakers(fake_redis)

    async def invalid() -> None:
        raise InvalidRequest("bad", provider="gemini")

    for _ in range(6):
        with pytest.raises(InvalidRequest):
            await b.call("gemini", invalid)
    assert await b.state("gemini") == "closed"


async def test_failures_from_two_workers_add_up(fake_redis: aioredis.Redis) -> None:
    """Two workers (two Breakers on one Redis) share the count: 3 + 2 failures open it."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = Breakers(fake_redis, prefix, BreakerPolicy(5, 60, 5))
    b = Breakers(fake_redis, prefix, BreakerPolicy(5, 60, 5))
    for worker in (a, a, a, b, b):
        with pytest.raises(NetworkError):
            await worker.call("openai", fail)
    assert await a.state("openai") == "opened"


async def test_calls_starting_together_share_one_read(fake_redis: aioredis.Redis) -> None:
    """Twenty calls on a cold, healthy breaker read its state once, not twenty times (the
    first read's healthy answer is shared); the half-open test below shows a read that is not
    healthy is never shared."""
    # no cache at all: the reads are shared because one is in flight, not because it is cached
    b = Breakers(fake_redis, f"t{uuid.uuid4().hex[:8]}", BreakerPolicy(5, 60.0, 5.0, 0.0))
    reads = 0
    script = b.repository._acquire

    async def counted(**kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await script(**kwargs)

    b.repository._acquire = counted  # type: ignore[method-assign]
    results = await asyncio.gather(*(b.call("gemini", ok) for _ in range(20)))
    assert results == ["ok"] * 20
    assert reads == 1


async def test_half_open_single_probe_then_close(fake_redis: aioredis.Redis) -> None:
    """Half-open: one of ten concurrent calls probes, success closes, transitions once each."""
    events: list[tuple[str, str]] = []
    b = breakers(fake_redis, open_s=0.3, hook=lambda p, s, _i: events.append((p, s)))
    for _ in range(5):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    await asyncio.sleep(0.4)
    gate = asyncio.Event()
    probes = 0

    async def slow_ok() -> str:
        nonlocal probes
        probes += 1
        await gate.wait()
        return "ok"

    calls = [asyncio.ensure_future(b.call("gemini", slow_ok)) for _ in range(10)]
    await asyncio.sleep(0.1)
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert probes == 1
    assert sum(r == "ok" for r in results) == 1
    assert all(isinstance(r, Overloaded) for r in results if r != "ok")
    assert await b.state("gemini") == "closed"
    assert events == [("gemini", "opened"), ("gemini", "closed")]


async def test_failed_probe_reopens(fake_redis: aioredis.Redis) -> None:
    """A failing probe opens the breaker again for a full period."""
    b = breakers(fake_redis, open_s=0.2)
    for _ in range(5):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    await asyncio.sleep(0.3)
    with pytest.raises(NetworkError):
        await b.call("gemini", fail)
    assert await b.state("gemini") == "opened"
    with pytest.raises(Overloaded):
        await b.call("gemini", ok)


async def test_cancelled_probe_frees_the_probe(fake_redis: aioredis.Redis) -> None:
    """A cancelled probe is neither success nor failure and lets the next caller probe."""
    b = breakers(fake_redis, open_s=0.2)
    for _ in range(5):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    await asyncio.sleep(0.3)
    probe = asyncio.ensure_future(b.call("gemini", lambda: asyncio.sleep(10)))
    await asyncio.sleep(0.05)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await b.call("gemini", ok) == "ok"
    assert await b.state("gemini") == "closed"


async def test_router_falls_back_on_open_circuit_and_notices(
    sandbox: Sandbox, fake_redis: aioredis.Redis
) -> None:
    """Router: 5th failure notices circuit_opened; while open Gemini is skipped unmade."""
    settings = make_settings(sandbox.url, AIIS_BREAKER_OPEN_S=60)
    hook_calls: list[tuple[str, str]] = []
    router = build_router(
        fake_redis, settings, on_circuit=lambda p, s, _i: hook_calls.append((p, s))
    )
    try:
        sinks = []
        for _ in range(5):
            sink = RecordingSink()
            await router.process(
                ProviderRequest("t", "a", "text", prompt="x [[fault:unavailable@gemini]]"), sink
            )
            sinks.append(sink)
        assert "circuit_opened" in sinks[-1].kinds()
        assert hook_calls == [("gemini", "opened")]
        before = sandbox.stats()["requests"]["gemini"]
        sink = RecordingSink()
        result = await router.process(ProviderRequest("t", "a", "text", prompt="fine"), sink)
        assert result.provider == "openai"
        assert sandbox.stats()["requests"]["gemini"] == before
        fallback = dict(sink.notices)["fallback"]
        assert fallback["error_class"] == "Overloaded" and "circuit open" in fallback["message"]
    finally:
        await router.aclose()


@pytest.mark.slow
async def test_one_probe_across_worker_processes(
    real_redis: aioredis.Redis, provider_redis_url: str
) -> None:
    """Four worker processes race for the probe: exactly one goes, its success closes it."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    b = Breakers(real_redis, prefix, BreakerPolicy(5, 1.0, 5.0))
    for _ in range(5):
        with pytest.raises(NetworkError):
            await b.call("gemini", fail)
    assert await b.state("gemini") == "opened"
    start_at = time.time() + 1.5  # after the open period and after the interpreters start
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.providers.workers",
            "probe",
            provider_redis_url,
            prefix,
            str(start_at),
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        for _ in range(4)
    ]
    outputs = [json.loads((await p.communicate())[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o["outcome"] for o in outputs) == ["admitted", "rejected", "rejected", "rejected"]
    assert await b.state("gemini") == "closed"
    admitted = next(o for o in outputs if o["outcome"] == "admitted")
    assert admitted["transitions"] == [["gemini", "closed"]]
