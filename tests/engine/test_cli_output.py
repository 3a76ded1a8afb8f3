"""What `aiis submit --wait` shows a newcomer: a closed pipe is not a traceback, a cache hit says
so, a streamed or image result is laid out like any other, a cancelled stream ends its line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core.events import TaskCancelled, TaskCancelledData, TaskProgress, TaskProgressData
from engine.runtime.commands import _Printer
from engine.runtime.embedded import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox_worker(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real worker calling a real sandbox, with the result cache on; yields the CLI's env."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIIS_")}
    env.update(
        AIIS_REDIS_URL=redis_url,
        AIIS_NAMESPACE=f"out{os.getpid()}{port}",
        AIIS_SANDBOX_URL=f"http://127.0.0.1:{port}",
        AIIS_CACHE="true",
    )
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "providers.sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "engine", "worker", "--concurrency", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield env
    finally:
        for proc in (worker, sandbox):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(env: dict[str, str], *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "submit", *args, "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_closed_pipe_stops_quietly(sandbox_worker: dict[str, str]) -> None:
    """`aiis submit --wait | head -1`: the reader leaves after the id; no traceback, exit 141."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "submit", "a long story please", "--wait"],
        env=sandbox_worker,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip()  # the task id, as `head -1` reads it
    proc.stdout.close()
    with proc.stderr:
        stderr = proc.stderr.read()
    assert proc.wait(120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_wait_shows_a_cache_hit_like_a_fresh_answer(sandbox_worker: dict[str, str]) -> None:
    """The same prompt twice: the second answer says "cached", no blank line, text before the
    summary, exactly as the first (streamed) answer is laid out."""
    first = _wait(sandbox_worker, "the cache test prompt")
    second = _wait(sandbox_worker, "the cache test prompt")
    for lines in (first, second):
        assert "" not in lines, lines
        assert lines[-1].startswith("✔ succeeded"), lines
        assert len(lines) >= 3, lines  # id, the text, the summary
    assert "cached" not in first[-1]
    assert "cached" in second[-1], second
    assert second[-2] == first[-2]  # the same text, before the summary


def test_wait_on_an_image_task_starts_with_no_blank_line(sandbox_worker: dict[str, str]) -> None:
    """An image task prints its id, progress, the image URLs, then the summary; no blank line."""
    lines = _wait(sandbox_worker, "mountains", "--kind", "image")
    assert "" not in lines, lines
    assert lines[-1].startswith("✔ succeeded")
    body = [line for line in lines[1:-1] if not line.startswith(("· ", "["))]
    assert body and all(line.startswith("http") for line in body), lines


def test_cancelled_stream_ends_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Streamed text then TaskCancelled: the cancellation starts on a line of its own."""
    show = _Printer()
    show(TaskProgress(task_id="t", tenant="d", ts=1, data=TaskProgressData(attempt=1, delta="Hi")))
    show(
        TaskCancelled(
            task_id="t", tenant="d", ts=2, data=TaskCancelledData(attempt=1, stage="running")
        )
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Hi" and out[1].startswith("✘ TaskCancelled"), out
