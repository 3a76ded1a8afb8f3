"""Real processes: SIGKILLed and SIGTERMed workers, a SIGKILLed Redis restarted from its AOF,
and the CLI as a newcomer runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.client import Client
from engine.core.events import Status
from engine.runtime.embedded import EmbeddedRedis, free_port
from tests.conftest import TOPOLOGIES, Topology, fast_settings
from tests.engine.helpers import events_of, log_events, terminal_counts, wait_for, wait_terminal

pytestmark = pytest.mark.slow


def _env(url: str, namespace: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIIS_REDIS_URL": url,
        "AIIS_NAMESPACE": namespace,
        "AIIS_PROVIDER": "scripted",
        "AIIS_VISIBILITY_TIMEOUT_S": "1.0",
        "AIIS_CONTROL_INTERVAL_S": "0.05",
        "AIIS_RETRY_BASE_S": "0.01",
        **extra,
    }


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def worker(self, env: dict[str, str], concurrency: int = 8) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--concurrency", str(concurrency)],
            env=env,
            stdout=subprocess.DEVNULL,  # stderr is inherited: pytest shows it on failure
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.cleanup()


async def _started(client: Client, ids: list[str], attempt: int = 1) -> bool:
    events = await log_events(client)
    started = {
        e["task_id"]
        for e in events
        if e["type"] == "TaskStarted" and e["data"]["attempt"] == attempt
    }
    return set(ids) <= started


async def test_sigkilled_worker_tasks_finish_on_another_worker(
    redis_url: str, procs: Procs
) -> None:
    """SIGKILL a worker mid-call: another worker reclaims its tasks; one terminal event each."""
    settings = fast_settings(redis_url=redis_url)
    env = _env(redis_url, settings.namespace)
    async with Client.from_url(redis_url, settings) as client:
        doomed = procs.worker(env)
        ids = [
            await client.submit(f"t{i}", params={"script": ["sleep:30", "ok"]}) for i in range(3)
        ]
        await wait_for(lambda: _started(client, ids))
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        procs.worker(env)
        await wait_terminal(client, ids)
        events = await log_events(client)
        assert terminal_counts(events) == {i: 1 for i in ids}
        for task_id in ids:
            mine = [e for e in events if e["task_id"] == task_id]
            assert mine[-1]["type"] == "TaskSucceeded" and mine[-1]["data"]["attempt"] == 2
            restarts = [e["data"] for e in mine if e["type"] == "TaskStarted"]
            assert restarts[1]["reclaimed"] is True
            assert restarts[0]["worker"] != restarts[1]["worker"]


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_a_frozen_worker_woken_after_its_tasks_were_reclaimed_writes_nothing(
    topology: Topology, procs: Procs
) -> None:
    """DESIGN.md §3.3 with real processes: a worker frozen mid-call (SIGSTOP) loses its leases;
    another worker reclaims and finishes the tasks. The first is woken (SIGCONT) only after
    its calls were due to end, so its outbox sends their results before it can learn that the
    leases are gone: the commit script's fencing token refuses them. One terminal event per
    task, attempt 2's, and nothing of attempt 1 after the reclaim."""
    settings = topology.settings()
    extra = {"AIIS_PARTITIONS": str(settings.partitions)}
    if topology.cluster:
        extra["AIIS_REDIS_CLUSTER"] = "1"
    env = _env(topology.url, settings.namespace, **extra)
    async with Client.from_url(topology.url, settings) as client:
        frozen = procs.worker(env)
        ids = [await client.submit(f"t{i}", params={"script": ["sleep:2", "ok"]}) for i in range(4)]
        await wait_for(lambda: _started(client, ids))
        frozen.send_signal(signal.SIGSTOP)
        calls_end = time.monotonic() + 2.5
        try:
            procs.worker(env)
            await wait_terminal(client, ids)
            await asyncio.sleep(calls_end - time.monotonic())
        finally:
            frozen.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.5)  # its results are committed, and refused
        assert frozen.poll() is None  # fenced out, not crashed
        events = await log_events(client)
        assert terminal_counts(events) == {i: 1 for i in ids}
        for task_id in ids:
            mine = [e for e in events if e["task_id"] == task_id]
            assert mine[-1]["type"] == "TaskSucceeded" and mine[-1]["data"]["attempt"] == 2
            reclaim = next(
                n for n, e in enumerate(mine)
                if e["type"] == "TaskStarted" and e["data"]["attempt"] == 2
            )  # fmt: skip
            assert all(e["data"].get("attempt") != 1 for e in mine[reclaim:])


async def test_sigterm_drains_in_flight_work(redis_url: str, procs: Procs) -> None:
    """SIGTERM: the worker stops taking work, finishes what it holds and exits 0."""
    settings = fast_settings(redis_url=redis_url)
    async with Client.from_url(redis_url, settings) as client:
        worker = procs.worker(_env(redis_url, settings.namespace))
        ids = [await client.submit(f"t{i}", params={"script": ["sleep:1"]}) for i in range(4)]
        await wait_for(lambda: _started(client, ids))
        worker.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the worker is still draining 1 s calls; it must not fetch
        late = await client.submit("submitted after SIGTERM")
        assert await asyncio.to_thread(worker.wait, 30) == 0
        events = await log_events(client)
        assert terminal_counts(events) == {i: 1 for i in ids}
        assert all(e["data"]["attempt"] == 1 for e in events if e["type"] == "TaskSucceeded")
        assert (await client.get(late)).status is Status.QUEUED


async def test_sigterm_past_drain_timeout_releases_work(redis_url: str, procs: Procs) -> None:
    """Calls still running at the drain timeout are released to the queue, not lost."""
    settings = fast_settings(redis_url=redis_url)
    env = _env(redis_url, settings.namespace, AIIS_DRAIN_TIMEOUT_S="0.3")
    async with Client.from_url(redis_url, settings) as client:
        worker = procs.worker(env)
        ids = [
            await client.submit(f"t{i}", params={"script": ["sleep:30", "ok"]}) for i in range(3)
        ]
        await wait_for(lambda: _started(client, ids))
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
        for task_id in ids:
            assert (await client.get(task_id)).status is Status.QUEUED
        procs.worker(env)
        await wait_terminal(client, ids)
        assert terminal_counts(await log_events(client)) == {i: 1 for i in ids}


async def test_redis_restart_loses_nothing(tmp_path: Path, procs: Procs) -> None:
    """SIGKILL Redis (AOF on) before and during processing: every task still ends exactly once."""
    port = free_port()
    server = EmbeddedRedis(tmp_path / "data", port=port)
    url = server.start()
    settings = fast_settings(redis_url=url)
    env = _env(url, settings.namespace)
    try:
        async with Client.from_url(url, settings) as client:
            before = [
                await client.submit(f"a{i}", params={"script": ["sleep:0.2"]}) for i in range(20)
            ]
            server.kill()
            server.start()
            procs.worker(env)
            during = [
                await client.submit(f"b{i}", params={"script": ["sleep:0.5"]}) for i in range(20)
            ]
            await wait_for(lambda: _started(client, during[:5]))
            server.kill()
            await asyncio.sleep(0.5)
            server.start()
            await wait_terminal(client, before + during, timeout=60)
            counts = terminal_counts(await log_events(client))
            assert {i: counts.get(i) for i in before + during} == {i: 1 for i in before + during}
    finally:
        server.stop()


def _aiis(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_redis_unreachable_is_one_line(tmp_path: Path) -> None:
    """With Redis unreachable, commands print one error line and exit non-zero, no traceback."""
    env = {**os.environ, "AIIS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (["submit", "hi"], ["worker"], ["dlq", "list"]):
        result = _aiis(*args, env=env)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("aiis: error: Redis unavailable")
    env = {k: v for k, v in os.environ.items() if k != "AIIS_REDIS_URL"}
    env["AIIS_DATA_DIR"] = str(tmp_path / "nothing-here")
    result = _aiis("submit", "hi", env=env)
    assert result.returncode == 1 and "aiis serve" in result.stderr


def test_cli_rejects_bad_input_naming_the_field(redis_url: str) -> None:
    """Bad CLI input is refused with a message naming the field."""
    env = {**os.environ, "AIIS_REDIS_URL": redis_url, "AIIS_NAMESPACE": "cli-bad"}
    result = _aiis("submit", "", env=env)
    assert result.returncode == 1 and "input" in result.stderr
    result = _aiis("submit", "x", "--priority", "urgent", env=env)
    assert result.returncode == 2 and "priority" in result.stderr
    result = _aiis("submit", "x", "--tenant", "no spaces", env=env)
    assert result.returncode == 1 and "tenant" in result.stderr


def _serve(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--workers", "1"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_serve_submit_wait_and_restart_keeps_data(tmp_path: Path) -> None:
    """`aiis serve` runs embedded Redis + workers; `submit --wait` ends; data survives restart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIIS_")}
    env["AIIS_DATA_DIR"] = str(tmp_path / "data")
    env["AIIS_GATEWAY_PORT"] = str(free_port())  # never collide with a running service
    env["AIIS_GRPC_PORT"] = str(free_port())
    info = tmp_path / "data" / "redis.json"
    serve = _serve(env, tmp_path)
    try:
        _wait_file(info)
        second = _aiis("serve", env=env, timeout=30)
        assert second.returncode == 1 and "another aiis process" in second.stderr
        result = _aiis("submit", "hello from the cli", "--wait", env=env)
        assert result.returncode == 0, result.stderr
        task_id = result.stdout.splitlines()[0]
        assert "succeeded" in result.stdout and "hello from the cli" in result.stdout
    finally:
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, out
    assert not info.exists()
    serve = _serve(env, tmp_path)
    try:
        _wait_file(info)
        shown = _aiis("get", task_id, env=env)
        assert shown.returncode == 0 and '"status": "succeeded"' in shown.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)


def test_dlq_list_retry_purge(redis_url: str) -> None:
    """Dead letters are listed, retried as a new task, and purged from the CLI."""
    namespace = "cli-dlq-" + str(os.getpid())
    env = {**os.environ, "AIIS_REDIS_URL": redis_url, "AIIS_NAMESPACE": namespace}

    async def dead_letter_one() -> str:
        settings = fast_settings(redis_url=redis_url, namespace=namespace, max_deliveries=1)
        async with Client.from_url(redis_url, settings) as client:
            from engine.runtime.workers import new_worker
            from providers.echo import ScriptedProvider

            task_id = await client.submit("again", params={"script": ["NetworkError", "ok"]})
            worker = new_worker(client.store, ScriptedProvider())
            run = asyncio.create_task(worker.run())
            await wait_terminal(client, [task_id])
            worker.stop()
            await run
            assert (await events_of(client, task_id))[-1]["type"] == "TaskDeadLettered"
            return task_id

    task_id = asyncio.run(dead_letter_one())
    listed = _aiis("dlq", "list", env=env)
    assert task_id in listed.stdout and "retries_exhausted" in listed.stdout
    retried = _aiis("dlq", "retry", task_id, env=env)
    assert retried.returncode == 0, retried.stderr
    new_id = retried.stdout.strip()
    assert new_id and new_id != task_id
    assert task_id not in _aiis("dlq", "list", env=env).stdout
    again = _aiis("dlq", "retry", task_id, env=env)
    assert again.returncode == 1
    assert "purged 0" in _aiis("dlq", "purge", env=env).stdout
