"""Keeps child processes alive: restarts the ones that die (with a backoff that resets once a
child has run healthy for a while), and on SIGTERM/SIGINT stops them in dependency order —
stage by stage, each child with SIGTERM (it drains) — before returning. Used by
``aiis worker --processes N``, ``aiis worker --autoscale`` and ``aiis serve``. With a ``Pool``,
the number of pool children follows a scaler: growing starts new ones, shrinking retires the
newest with SIGTERM — the same drain as a shutdown — and a retired child is not restarted.

Children run in their own session, so a terminal's Ctrl-C reaches only the supervisor, which
then stops them in order (gateway before workers before the sandbox they call …). A child that
exits with ``EXIT_CONFIG`` cannot start as configured: restarting it cannot help, so the
supervisor stops everything and reports the child's last error line.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from engine.runtime.embedded import die_with_parent

log = logging.getLogger("aiis.supervisor")

EXIT_CONFIG = 78  # sysexits.h EX_CONFIG: the child's configuration is wrong; do not restart
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_S = 60.0  # a child that ran this long before dying restarts after the first delay
TICK_S = 0.2
MAX_ERROR_LINE = 500  # characters of a child's last stderr line kept for the report


@dataclass
class Backoff:
    """Restart delays of one child: doubling from ``base_s`` up to ``max_s`` while it keeps
    dying, back to the first delay once it has run ``healthy_s`` (pure; the caller's clock)."""

    base_s: float = BACKOFF_BASE_S
    max_s: float = BACKOFF_MAX_S
    healthy_s: float = HEALTHY_S
    failures: int = 0
    started_at: float = 0.0

    def started(self, now: float) -> None:
        self.started_at = now

    def exited(self, now: float) -> float:
        """The delay before the next start of a child that exited at ``now``."""
        if now - self.started_at >= self.healthy_s:
            self.failures = 0
        self.failures += 1
        return min(self.max_s, self.base_s * 2.0 ** min(self.failures, 16))


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    quiet: bool = False  # discard the child's stdout (it has its own way to report)
    stage: int = 1  # shutdown order: lower stages stop (and drain) first
    pooled: bool = False
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    last_error: str = ""  # the last line the child wrote to stderr
    relay: threading.Thread | None = None


@dataclass
class Pool:
    """Children made from ``make(n)`` whose count follows ``scale(current) -> target``."""

    make: Callable[[int], Child]
    scale: Callable[[int], int]
    initial: int
    every_s: float = 1.0


def _relay(child: Child, stream: IO[bytes]) -> None:
    """Copy a child's stderr to ours, remembering its last line (runs in a thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()
            text = line.decode(errors="replace").strip()
            if text:
                child.last_error = text[:MAX_ERROR_LINE]


class Supervisor:
    def __init__(
        self,
        children: Sequence[Child],
        *,
        stop_timeout: float = 60.0,
        pool: Pool | None = None,
        tick: Callable[[], str | None] | None = None,
    ) -> None:
        """``tick`` runs every loop turn (e.g. heals the embedded Redis); a string it returns
        is a fatal reason: everything stops and ``run`` returns 1."""
        self.children = list(children)
        self.stop_timeout = stop_timeout
        self.pool = pool
        self.tick = tick
        self.retiring: list[Child] = []
        self.failure: str | None = None
        self._made = 0
        self._stop = False
        if pool is not None:
            for _ in range(pool.initial):
                self._add_pool_child()

    def _add_pool_child(self) -> Child:
        assert self.pool is not None
        self._made += 1
        child = self.pool.make(self._made)
        child.pooled = True
        self.children.append(child)
        return child

    @property
    def pool_size(self) -> int:
        return sum(1 for c in self.children if c.pooled)

    def _rescale(self) -> None:
        assert self.pool is not None
        target = self.pool.scale(self.pool_size)
        while self.pool_size < target:
            self._start(self._add_pool_child())
        while self.pool_size > target:
            newest = next(c for c in reversed(self.children) if c.pooled)
            self.children.remove(newest)
            if newest.process is not None and newest.process.poll() is None:
                newest.process.send_signal(signal.SIGTERM)  # drains, then exits
                self.retiring.append(newest)
            log.info("retiring %s", newest.name)

    def _reap_retiring(self) -> None:
        for child in list(self.retiring):
            if child.process is None or child.process.poll() is not None:
                self.retiring.remove(child)

    def _start(self, child: Child) -> None:
        stdout = subprocess.DEVNULL if child.quiet else None
        child.process = subprocess.Popen(
            child.argv,
            env=child.env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only sets the parent-death signal
        )
        child.backoff.started(time.monotonic())
        assert child.process.stderr is not None
        relay = threading.Thread(
            target=_relay, args=(child, child.process.stderr), name=f"relay-{child.name}"
        )
        relay.daemon = True
        relay.start()
        child.relay = relay
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop = True

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._stop = True

    def _exited(self, child: Child, code: int) -> None:
        """A child died while we run: restart it later, or stop all if it cannot start."""
        child.process = None
        if code == EXIT_CONFIG:
            if child.relay is not None:  # its error line may still be in the pipe
                child.relay.join(1.0)
            reason = child.last_error.removeprefix("aiis: error: ") or "configuration error"
            self._fail(f"{child.name} cannot start: {reason}")
            return
        child.restarts += 1
        now = time.monotonic()
        delay = child.backoff.exited(now)
        print(f"aiis: {child.name} exited with {code}; restarting in {delay:.1f}s", file=sys.stderr)
        child.next_start = now + delay

    def _supervise(self) -> None:
        next_scale = time.monotonic()
        while not self._stop:
            time.sleep(TICK_S)
            if self._stop:
                break
            if self.tick is not None:
                reason = self.tick()
                if reason is not None:
                    self._fail(reason)
                    break
            self._reap_retiring()
            if self.pool is not None and time.monotonic() >= next_scale:
                next_scale = time.monotonic() + self.pool.every_s
                self._rescale()
            for child in self.children:
                if self._stop:  # a signal arrived: no restart during shutdown
                    break
                proc = child.process
                if proc is not None and proc.poll() is not None:
                    self._exited(child, proc.returncode)
                elif proc is None and time.monotonic() >= child.next_start:
                    self._start(child)

    def run(self, on_start: Callable[[], None] | None = None) -> int:
        """Start every child (in order; ``on_start`` runs after the first), supervise until
        SIGTERM/SIGINT (or a fatal reason), then stop them all; 0, or 1 after a failure."""
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            try:
                for i, child in enumerate(self.children):
                    if self._stop:
                        break
                    self._start(child)
                    if i == 0 and on_start is not None:
                        on_start()
                self._supervise()
            finally:
                self.shutdown()
            if self.failure is not None:
                print(f"aiis: error: {self.failure}", file=sys.stderr)
                return 1
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def shutdown(self) -> int:
        """Stop every child, one stage after the other (SIGTERM, then SIGKILL past the
        timeout); nothing is restarted from here on."""
        self._stop = True
        everyone = self.children + self.retiring
        for stage in sorted({c.stage for c in everyone}):
            live = [
                c.process
                for c in everyone
                if c.stage == stage and c.process is not None and c.process.poll() is None
            ]
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in live:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for child in everyone:
            if child.relay is not None:
                child.relay.join(1.0)
        return 0
