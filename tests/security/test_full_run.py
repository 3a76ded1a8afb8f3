"""A full run — worker, gateway, projections and ops as processes, providers in the sandbox,
fake keys in the environment and a secrets directory — where one Gemini key is rejected (and
rotated away) and the secrets file is replaced and reloaded with SIGHUP. Every output is then
grepped for the key strings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect

from engine.core.keys import all_partitions, ops_key
from engine.runtime.connection import connect
from engine.runtime.embedded import free_port
from providers.sandbox import Sandbox, launch

pytestmark = pytest.mark.timeout(90)

BAD_GEMINI = "AIzaSyFAKE-rejected-000000000000000000"
GOOD_GEMINI = "AIzaSyFAKE-accepted-11111111111111111"
OPENAI = "sk-proj-FAKEopenai2222222222222222"
PEXELS = "FAKEpexels333333333333333333"
ANTHROPIC_OLD = "sk-ant-FAKEold44444444444444444444"
ANTHROPIC_NEW = "sk-ant-FAKEnew55555555555555555555"
WEBHOOK_SECRET = "whsec-FAKE666666666666666666"
KEYS = (BAD_GEMINI, GOOD_GEMINI, OPENAI, PEXELS, ANTHROPIC_OLD, ANTHROPIC_NEW, WEBHOOK_SECRET)


class Run:
    def __init__(self, tmp: Path, redis_url: str, sandbox: Sandbox) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.secrets = tmp / "secrets"
        self.secrets.mkdir()
        (self.secrets / "anthropic_api_key").write_text(f"# rotated by ops\n{ANTHROPIC_OLD}\n")
        self.namespace = f"f{uuid.uuid4().hex[:10]}"
        self.env = {
            **os.environ,
            "AIIS_REDIS_URL": redis_url,
            "AIIS_NAMESPACE": self.namespace,
            "AIIS_SANDBOX_URL": sandbox.url,
            "AIIS_GATEWAY_PORT": str(self.port),
            "AIIS_GRPC_PORT": "0",  # never a default port (tests/conftest.py holds them)
            "AIIS_SECRETS_DIR": str(self.secrets),
            "AIIS_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "AIIS_CACHE": "1",
            "AIIS_OPS_TICK_S": "0.2",
            "AIIS_CONTROL_INTERVAL_S": "0.1",
            "GEMINI_API_KEY": f"{BAD_GEMINI},{GOOD_GEMINI}",
            "OPENAI_API_KEY": OPENAI,
            "PEXELS_API_KEY": PEXELS,
        }
        for name in ("ANTHROPIC_API_KEY", "UNSPLASH_ACCESS_KEY", "AIIS_GATEWAY_TOKENS"):
            self.env.pop(name, None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        with open(self.tmp / f"{name}.log", "wb") as out:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "engine", name], env=self.env, stdout=out, stderr=out
            )

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def logs(self) -> str:
        return "".join((self.tmp / f"{n}.log").read_text(errors="replace") for n in self.procs)


@pytest.fixture
async def run(tmp_path: Path, redis_url: str) -> AsyncIterator[Run]:
    sandbox = await launch(bad_keys={BAD_GEMINI})
    r = Run(tmp_path, redis_url, sandbox)
    try:
        for name in ("worker", "gateway", "projections", "ops"):
            r.start(name)
        yield r
    finally:
        r.stop()
        await sandbox.stop()


async def wait_http(base: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not come up")


async def finished(http: httpx.AsyncClient, base: str, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            body: dict[str, Any] = (await http.get(f"{base}/v1/tasks/{task_id}")).json()
            if body["terminal"] is not None:
                return body
            await asyncio.sleep(0.05)


async def test_full_run_rotates_keys_and_leaks_no_key_anywhere(run: Run) -> None:
    """A rejected key is rotated without a failed task, a reloaded secrets file is used, and
    no key string appears in logs, events, errors, /metrics, the dashboard or its WS stats."""
    await wait_http(run.base)
    outputs: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http:
        ids = []
        for prompt in ("first task", "second task", "mail bob@example.com please"):
            r = await http.post(f"{run.base}/v1/tasks", json={"input": prompt})
            assert r.status_code == 202, r.text
            ids.append(r.json()["task_id"])
        for task_id in ids:
            body = await finished(http, run.base, task_id)
            outputs.append(orjson.dumps(body).decode())
            terminal = body["terminal"]
            assert terminal["type"] == "TaskSucceeded", terminal
            assert terminal["data"]["provider"] == "gemini"  # the good key; no fallback
        assert "bob@example.com" in outputs[-1]  # restored for the caller on read

        first = await http.post(
            f"{run.base}/v1/tasks",
            json={"input": "claude please", "params": {"provider": "anthropic"}},
        )
        old = await finished(http, run.base, first.json()["task_id"])
        assert old["terminal"]["type"] == "TaskSucceeded"
        (run.secrets / "anthropic_api_key").write_text(f"{ANTHROPIC_NEW}\n")
        run.procs["worker"].send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        second = await http.post(
            f"{run.base}/v1/tasks",
            json={"input": "claude again", "params": {"provider": "anthropic", "cache": False}},
        )
        new = await finished(http, run.base, second.json()["task_id"])
        assert new["terminal"]["type"] == "TaskSucceeded"
        for bad in (
            {"input": "x", "params": {"callback_url": "http://169.254.169.254/"}},
            {"input": "", "params": {"template": "nope"}},
            {"input": 5},
        ):
            r = await http.post(f"{run.base}/v1/tasks", json=bad)
            assert r.status_code == 400
            outputs.append(r.text)
        outputs.append((await http.get(f"{run.base}/metrics")).text)
        outputs.append((await http.get(f"{run.base}/")).text)
    async with ws_connect(f"ws://127.0.0.1:{run.port}/v1/ws") as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "stats": True}))
        async with asyncio.timeout(10):
            while True:
                frame = await ws.recv()
                outputs.append(str(frame))
                if orjson.loads(frame)["op"] == "stats":
                    break
    await asyncio.sleep(0.5)  # the ops reader and projections catch up
    redis = connect(run.env["AIIS_REDIS_URL"])
    types: set[str] = set()
    try:
        streams = [k.log for k in all_partitions(run.namespace, 1)]
        streams += [k.dlq for k in all_partitions(run.namespace, 1)]
        streams += [ops_key(run.namespace), f"{run.namespace}:audit"]
        for key in streams:
            for _, fields in await redis.xrange(key):
                entry = {k.decode(): v.decode() for k, v in fields.items()}
                types.add(entry.get("type", ""))
                outputs.append(orjson.dumps(entry).decode())
        audit = [o for o in outputs if '"key_reload' in o]
        key_alerts = [o for o in outputs if "key_rejected" in o]
    finally:
        await redis.aclose()
    run.stop()
    outputs.append(run.logs())
    everything = "\n".join(outputs)
    assert audit and key_alerts, "the reload and the rejected key were recorded"
    assert not types & {"TaskFailed", "TaskRetryScheduled", "TaskDeadLettered"}
    for key in KEYS:
        assert key not in everything, f"a key leaked: {key[:8]}…"
