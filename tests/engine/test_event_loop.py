"""The services' event loop: uvloop when installed (AIIS_EVENT_LOOP=auto), asyncio's on request;
and their quietened garbage collector."""

from __future__ import annotations

import gc

import pydantic
import pytest

from engine.runtime.workers import GC_YOUNG_THRESHOLD, loop_name, quiet_gc, run_loop
from engine.settings import Settings


async def running() -> str:
    return loop_name()


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_run_loop_runs_on_the_chosen_loop(choice: str, expected: str) -> None:
    assert run_loop(running(), choice) == expected


def test_an_unknown_loop_is_a_settings_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="event_loop"):
        Settings(event_loop="trio")


def test_quiet_gc_freezes_what_is_alive_and_collects_the_young_less_often() -> None:
    """What a service runs before its loop: its start-up objects leave the collected
    generations, and young collections need GC_YOUNG_THRESHOLD allocations."""
    before = gc.get_threshold()
    try:
        quiet_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
