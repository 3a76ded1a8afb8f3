"""`aiis serve` as a process tree: Ctrl-C with queued work stops the children in dependency
order (nothing restarts, no breaker opens), and the next start finds every task and closed
breakers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.client import Client
from engine.core.events import TERMINAL_EVENTS
from engine.core.keys import intake_key
from engine.errors import TaskNotFound
from engine.runtime.embedded import EmbeddedRedis, free_port
from engine.settings import Settings
from providers import keys as provider_keys
from tests.engine.helpers import log_events, wait_terminal

pytestmark = pytest.mark.slow
PROVIDERS = ("gemini", "openai", "anthropic", "unsplash", "pexels")


def serve_env(data_dir: Path) -> dict[str, str]:
    """The environment of a newcomer's `aiis serve` (no key: the sandbox), on free ports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIIS_") and not k.endswith(("_API_KEY", "_ACCESS_KEY"))
    }
    env["AIIS_DATA_DIR"] = str(data_dir)
    env["AIIS_GATEWAY_PORT"] = str(free_port())
    env["AIIS_GRPC_PORT"] = str(free_port())
    return env


def start_serve(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    """`aiis serve` in its own session, as a terminal runs it (Ctrl-C = SIGINT to the group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def redis_info(data_dir: Path, timeout: float = 60) -> dict[str, object]:
    """The embedded Redis `aiis serve` advertises (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info: dict[str, object] = orjson.loads((data_dir / "redis.json").read_bytes())
            return info
        except (OSError, orjson.JSONDecodeError):
            assert time.monotonic() < deadline, "aiis serve never advertised its Redis"
            time.sleep(0.05)


def ctrl_c(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """What a terminal's Ctrl-C does: SIGINT to the whole process group; returns the output."""
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=timeout)
    return out


async def _breaker_states(client: Client) -> dict[str, str]:
    states = {}
    for name in PROVIDERS:
        state = await client.store.redis.hget(provider_keys.breaker("aiis", name), "state")
        states[name] = (state or b"closed").decode()
    return states


def test_ctrl_c_with_queued_work_stops_in_order_and_carries_nothing_over(tmp_path: Path) -> None:
    """Ctrl-C while work is queued: workers drain before the sandbox stops, so no call fails
    with NetworkError, no breaker opens, nothing restarts; the next start finishes every task."""
    data = tmp_path / "data"
    env = serve_env(data)
    env["AIIS_GEMINI_RPM"] = "1200"  # 20 tasks/s on the first provider: work stays queued
    serve = start_serve(env, tmp_path, "--workers", "1", "--concurrency", "16")
    try:
        url = str(redis_info(data)["url"])
        settings = Settings(redis_url=url)

        async def submit_and_wait_for_some() -> list[str]:
            async with Client.from_url(url, settings) as client:
                ids = [await client.submit(f"queued task {i}") for i in range(600)]
                deadline = time.monotonic() + 60
                while True:
                    done = {
                        e["task_id"]
                        for e in await log_events(client)
                        if e["type"] in TERMINAL_EVENTS
                    }
                    if len(done) >= 20:
                        assert len(done) < len(ids), "no queued work left to stop with"
                        return ids
                    assert time.monotonic() < deadline, "serve processed nothing"
                    await asyncio.sleep(0.05)

        ids = asyncio.run(submit_and_wait_for_some())
    finally:
        out = ctrl_c(serve)
    assert serve.returncode == 0, out
    assert "restarting" not in out, out
    assert "NetworkError" not in out and "circuit breaker" not in out, out

    redis = EmbeddedRedis(data)
    url = redis.start()
    try:

        async def check_stopped_state() -> None:
            async with Client.from_url(url, Settings(redis_url=url)) as client:
                assert set((await _breaker_states(client)).values()) == {"closed"}
                events = await log_events(client)
                failed = [
                    e
                    for e in events
                    if e["type"] in ("TaskRetryScheduled", "TaskFailed", "TaskDeadLettered")
                ]
                assert failed == []

        asyncio.run(check_stopped_state())
    finally:
        redis.stop()

    serve = start_serve(env, tmp_path, "--workers", "1")
    try:
        url = str(redis_info(data)["url"])

        async def everything_finishes() -> None:
            async with Client.from_url(url, Settings(redis_url=url)) as client:
                await wait_terminal(client, ids, timeout=300)
                events = await log_events(client)
                ends = {e["task_id"]: e["type"] for e in events if e["type"] in TERMINAL_EVENTS}
                assert {ends[i] for i in ids} == {"TaskSucceeded"}
                assert set((await _breaker_states(client)).values()) == {"closed"}

        asyncio.run(everything_finishes())
    finally:
        out = ctrl_c(serve)
    assert serve.returncode == 0, out


def test_serve_uses_a_sandbox_named_by_aiis_sandbox_url(tmp_path: Path) -> None:
    """With AIIS_SANDBOX_URL set, `aiis serve` starts no sandbox of its own and its workers
    answer through the one named (it used to die at start on the sandbox it had not made)."""
    port = free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "providers.sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    data = tmp_path / "data"
    env = serve_env(data)
    env["AIIS_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
    serve = start_serve(env, tmp_path, "--workers", "1")
    try:
        redis_info(data)
        result = subprocess.run(
            [sys.executable, "-m", "engine", "submit", "through my sandbox", "--wait"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "through my sandbox" in result.stdout
    finally:
        out = ctrl_c(serve)
        sandbox.terminate()
        sandbox.wait(30)
    assert serve.returncode == 0, out
    assert f"sandbox at http://127.0.0.1:{port} (AIIS_SANDBOX_URL)" in out
    assert "started sandbox" not in out


def test_serve_admits_the_intake_stream(tmp_path: Path) -> None:
    """`aiis serve` runs `aiis intake`: an entry XADDed to the intake stream becomes a task
    that succeeds, found by its correlation id."""
    data = tmp_path / "data"
    env = serve_env(data)
    serve = start_serve(env, tmp_path, "--workers", "1")
    try:
        url = str(redis_info(data)["url"])

        async def go() -> None:
            client = Client.from_url(url, Settings(redis_url=url))
            try:
                await client.store.redis.xadd(
                    intake_key("aiis"),
                    {"task": orjson.dumps({"input": "via the intake"}), "correlation_id": "s-1"},
                )
                deadline = time.monotonic() + 60
                while True:
                    try:
                        task_id = await client.find_correlation("s-1")
                        break
                    except TaskNotFound:
                        assert time.monotonic() < deadline, "the entry was never admitted"
                        await asyncio.sleep(0.1)
                await wait_terminal(client, [task_id], timeout=60)
                assert (await client.get(task_id)).status == "succeeded"
            finally:
                await client.aclose()

        asyncio.run(go())
    finally:
        out = ctrl_c(serve)
    assert serve.returncode == 0, out
