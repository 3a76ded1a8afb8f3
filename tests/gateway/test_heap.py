"""The gateway process's garbage collector settings (gateway/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway import heap
from gateway.settings import GatewaySettings


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, afterwards."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("collector")
def test_settle_freezes_start_up_and_raises_the_young_threshold() -> None:
    """After `settle`, what existed is frozen out of the collector and a young collection
    waits for the configured number of allocations; the older thresholds are Python's."""
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    heap.settle(GatewaySettings(gc_threshold=12_345).gc_threshold)
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == (12_345, middle, old)


@pytest.mark.usefixtures("collector")
def test_zero_leaves_the_collector_alone() -> None:
    """`AIIS_GATEWAY_GC_THRESHOLD=0`: nothing frozen, thresholds unchanged."""
    gc.unfreeze()
    before = gc.get_threshold()
    heap.settle(0)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_the_default_is_bounded_and_set() -> None:
    """The gateway's default raises the threshold; it is parsed from the environment."""
    assert GatewaySettings().gc_threshold == 20_000
    with pytest.raises(ValueError):
        GatewaySettings(gc_threshold=-1)
