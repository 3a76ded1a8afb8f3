"""Self-healing of `aiis serve`: a SIGKILLed embedded redis-server is restarted from its AOF,
with the finished tasks intact and new work flowing again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.client import Client
from engine.core.events import Status
from engine.settings import Settings
from tests.engine.helpers import wait_terminal
from tests.engine.test_serve import ctrl_c, redis_info, serve_env, start_serve

pytestmark = pytest.mark.slow


def test_sigkilled_embedded_redis_is_restarted_from_its_aof(tmp_path: Path) -> None:
    """SIGKILL of serve's redis-server: serve restarts it on the same URL from its AOF; tasks
    finished before are intact, a new `aiis submit --wait` succeeds, Ctrl-C still exits 0."""
    data = tmp_path / "data"
    env = serve_env(data)
    serve = start_serve(env, tmp_path, "--workers", "1")
    try:
        info = redis_info(data)
        url = str(info["url"])
        settings = Settings(redis_url=url)

        async def finish_some() -> list[str]:
            async with Client.from_url(url, settings) as client:
                ids = [await client.submit(f"before the crash {i}") for i in range(10)]
                await wait_terminal(client, ids, timeout=120)
                return ids

        ids = asyncio.run(finish_some())
        os.kill(int(str(info["pid"])), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while redis_info(data).get("pid") == info["pid"]:
            assert serve.poll() is None, "aiis serve exited instead of healing"
            assert time.monotonic() < deadline, "redis-server was not restarted"
            time.sleep(0.1)
        assert redis_info(data)["url"] == url

        async def intact() -> None:
            async with Client.from_url(url, settings) as client:
                for task_id in ids:
                    assert (await client.get(task_id)).status is Status.SUCCEEDED

        asyncio.run(intact())
        after = subprocess.run(
            [sys.executable, "-m", "engine", "submit", "after the crash", "--wait"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert after.returncode == 0, after.stderr
        assert "succeeded" in after.stdout
    finally:
        out = ctrl_c(serve)
    assert serve.returncode == 0, out
    assert "restarting it from its AOF" in out
