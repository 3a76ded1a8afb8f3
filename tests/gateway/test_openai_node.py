"""The ``openai`` npm SDK against the gateway (skipped without node and the installed package:
``npm ci --prefix tests/gateway/node``, which scripts/test runs when npm exists)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from engine.core.events import TaskSucceeded
from tests.gateway.openai_fixtures import Stack, make_stack

HERE = Path(__file__).parent / "node"
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        shutil.which("node") is None or not (HERE / "node_modules" / "openai").is_dir(),
        reason="no node or no node_modules: npm ci --prefix tests/gateway/node",
    ),
]


@pytest.fixture
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    async for s in make_stack(redis_url):
        yield s


async def test_node_sdk_completes_streams_and_gets_a_400(stack: Stack) -> None:
    """Non-streamed and streamed completions carry the task's text; n=3 is a 400 naming n."""
    env = {**os.environ, "AIIS_BASE_URL": stack.base_url, "AIIS_TOKEN": "tok-acme"}
    proc = await asyncio.create_subprocess_exec(
        "node", str(HERE / "chat.mjs"), env=env, stdout=asyncio.subprocess.PIPE, cwd=HERE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    got = orjson.loads(out)
    done = (await stack.events(got["taskId"]))[-1]
    assert isinstance(done, TaskSucceeded)
    assert got["id"] == f"chatcmpl-{got['taskId']}"
    assert got["content"] == done.data.result.text
    assert got["streamed"] == done.data.result.text
    assert got["usage"]["completion_tokens"] == done.data.usage.output_tokens
    assert got["refused"] == {"status": 400, "param": "n", "name": "BadRequestError"}
