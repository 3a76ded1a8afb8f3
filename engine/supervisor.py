"""Keeps child processes alive: restarts the ones that die, and on SIGTERM/SIGINT stops them
all with SIGTERM (each drains) before returning. Used by ``aiis worker --processes N`` and
``aiis serve``. With a ``Pool``, the number of pool children follows a scaler: growing starts
new ones, shrinking retires the newest with SIGTERM — the same drain as a shutdown — and a
retired child is not restarted.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("aiis.supervisor")


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    quiet: bool = False  # discard the child's stdout (it has its own way to report)
    pooled: bool = False
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0


@dataclass
class Pool:
    """Children made from ``make(n)`` whose count follows ``scale(current) -> target``."""

    make: Callable[[int], Child]
    scale: Callable[[int], int]
    initial: int
    every_s: float = 1.0


class Supervisor:
    def __init__(
        self, children: Sequence[Child], *, stop_timeout: float = 60.0, pool: Pool | None = None
    ) -> None:
        self.children = list(children)
        self.stop_timeout = stop_timeout
        self.pool = pool
        self.retiring: list[Child] = []
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
        child.process = subprocess.Popen(child.argv, env=child.env, stdout=stdout)
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self._stop = True

    def run(self, on_start: Callable[[], None] | None = None) -> int:
        """Start every child (in order; ``on_start`` runs after the first), supervise until
        SIGTERM/SIGINT, then stop them all."""
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for i, child in enumerate(self.children):
                self._start(child)
                if i == 0 and on_start is not None:
                    on_start()
            next_scale = time.monotonic()
            while not self._stop:
                time.sleep(0.2)
                self._reap_retiring()
                if self.pool is not None and time.monotonic() >= next_scale:
                    next_scale = time.monotonic() + self.pool.every_s
                    self._rescale()
                for child in self.children:
                    proc = child.process
                    if proc is not None and proc.poll() is not None:
                        child.restarts += 1
                        delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
                        print(
                            f"aiis: {child.name} exited with {proc.returncode}; "
                            f"restarting in {delay:.1f}s",
                            file=sys.stderr,
                        )
                        child.process = None
                        child.next_start = time.monotonic() + delay
                    if child.process is None and time.monotonic() >= child.next_start:
                        self._start(child)
            return self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def shutdown(self) -> int:
        everyone = self.children + self.retiring
        live = [c.process for c in everyone if c.process and c.process.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0
