"""The worker's event loop: uvloop when installed (AIIS_EVENT_LOOP=auto), asyncio's on request."""

from __future__ import annotations

import pydantic
import pytest

from engine.runtime.workers import loop_name, run_loop
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
