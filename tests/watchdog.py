"""A pytest plugin that shows what a hung test is waiting for.

pytest-timeout's thread method ends a hung run with the threads' stacks, and for an asyncio test
those say only "in selector.poll": the coroutine that never resumes is invisible. This watchdog
prints, shortly before that timeout, the stack of every pending asyncio task (found through the
garbage collector, so it needs no handle on the test's loop), once per phase.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

# print this long before pytest-timeout's ``timeout`` ends the run
LEAD_S = 20.0


class _Watchdog:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.limit = float(config.getini("timeout") or 0) - LEAD_S
        self.phase: tuple[str, float] | None = None
        self.dumped = False
        if self.limit > 0:
            threading.Thread(target=self._watch, name="test-watchdog", daemon=True).start()

    def enter(self, what: str) -> None:
        self.phase, self.dumped = (what, time.monotonic()), False

    def leave(self) -> None:
        self.phase = None

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            phase = self.phase
            if phase is None or self.dumped or time.monotonic() - phase[1] < self.limit:
                continue
            self.dumped = True
            self._dump(phase[0])

    def _dump(self, what: str) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
        if capman is not None:
            capman.suspend_global_capture(in_=True)
        try:
            out = sys.stderr
            print(f"\n+++ watchdog: {what} still running; {len(tasks)} pending tasks +++", file=out)
            for task in tasks:
                print(f"--- {task!r}", file=out)
                try:
                    task.print_stack(limit=12, file=out)
                except Exception as exc:  # a task running on another thread's loop, say
                    print(f"    (no stack: {exc!r})", file=out)
            out.flush()
        finally:
            if capman is not None:
                capman.resume_global_capture()


_dog: _Watchdog | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _dog
    _dog = _Watchdog(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watched(f"{item.nodeid} (setup)"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watched(f"{item.nodeid} (call)"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watched(f"{item.nodeid} (teardown)"))


def _watched(what: str) -> Generator[None, Any, Any]:
    if _dog is not None:
        _dog.enter(what)
    try:
        return (yield)
    finally:
        if _dog is not None:
            _dog.leave()
