"""`aiis watch` as a newcomer runs it against a gateway that requires tokens."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from gateway.auth import hash_token
from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway


@pytest.mark.slow
async def test_watch_without_a_token_says_to_pass_one_and_exits_1(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Token mode, no token given: one line that names --token, exit code 1 (not 2)."""
    gateway = await make_gateway(engine.settings, tokens=f"{hash_token('s3cret')}=default")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIIS_")}
    env["AIIS_REDIS_URL"] = engine.settings.redis_url or ""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        "watch",
        "--url",
        gateway.ws_url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert "--token" in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
