"""Keeps N child processes alive: restarts the ones that die, and on SIGTERM/SIGINT stops them
all with SIGTERM (each drains) before returning. Used by ``aiis worker --processes N`` and
``aiis serve``.
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
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0


class Supervisor:
    def __init__(self, children: Sequence[Child], *, stop_timeout: float = 60.0) -> None:
        self.children = list(children)
        self.stop_timeout = stop_timeout
        self._stop = False

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
            while not self._stop:
                time.sleep(0.2)
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
        live = [c.process for c in self.children if c.process and c.process.poll() is None]
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
