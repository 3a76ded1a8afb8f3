"""``aiis top`` under a pseudo-terminal: it redraws (two refreshes seen), shows the queues,
providers and the latest failure of a real run, and exits 0 on ``q``."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time

import pytest

from tests.conftest import Engine
from tests.gateway.scripted import project, wait_terminal

pytestmark = pytest.mark.slow


def _controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_until(fd: int, wanted: bytes, timeout: float, seen: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return wanted in seen


def _drain_until_exit(
    fd: int, child: subprocess.Popen[bytes], timeout: float, seen: bytearray
) -> int | None:
    """Keep reading the terminal until the child exits: a child whose screen output fills the
    pty's buffer blocks in its write and could never read the quit key."""
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                return child.wait(max(0.0, deadline - time.monotonic()))
    return child.poll()


async def test_top_refreshes_and_quits_on_q(engine: Engine) -> None:
    """Two refreshes of a screen naming the failed task, then ``q``: exit code 0; Ctrl-C
    quits as cleanly."""
    engine.start_worker()
    ok = await engine.client.submit("fine", tenant="acme")
    bad = await engine.client.submit("bad", tenant="acme", params={"script": ["InvalidRequest"]})
    assert await wait_terminal(engine.client, ok) == "succeeded"
    assert await wait_terminal(engine.client, bad) == "failed"
    await project(engine)
    env = {
        **os.environ,
        "AIIS_REDIS_URL": engine.settings.redis_url or "",
        "AIIS_NAMESPACE": engine.settings.namespace,
        "AIIS_PARTITIONS": str(engine.settings.partitions),
        "COLUMNS": "160",
        "LINES": "60",
        "TERM": "xterm",
    }
    for quit_key in (b"q", b"\x03"):
        await _run_top(env, quit_key, bad)


async def _run_top(env: dict[str, str], quit_key: bytes, failed_id: str) -> None:
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "engine", "top"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        # the pty becomes the child's controlling terminal, so Ctrl-C there is a SIGINT to it
        preexec_fn=_controlling_tty,  # noqa: PLW1509 - one ioctl, takes no lock
    )
    os.close(slave)
    seen = bytearray()
    try:
        got = await asyncio.to_thread(_read_until, master, b"refresh 2", 60.0, seen)
        assert got, seen.decode(errors="replace")[-2000:]
        screen = seen.decode(errors="replace")
        assert "Queues" in screen and "Providers" in screen and "Latest failures" in screen
        assert failed_id[:12] in screen
        os.write(master, quit_key)
        code = await asyncio.to_thread(_drain_until_exit, master, child, 30.0, seen)
        assert code == 0, seen.decode(errors="replace")[-2000:]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
