"""The gateway process's cyclic garbage collector, set for latency.

A gateway holding 2,000 WebSocket connections has ~400,000 container objects (the modules and
the app, ~80 per connection). A full collection walks every one with the event loop stopped —
100-500 ms on a shared 2-core machine — and every frame in flight (events, the stats push)
waits for it. Python starts one when the objects promoted into the old generation since the
last reach a quarter of it, and at 1,000 events/s the young collections (every 700 net
allocations) kept finding events in flight (outbox items, frames being written) and promoting
them: a full collection every 10-20 s (docs/benchmarks.md, "Dashboard charts").

Two changes, once the gateway has started: what start-up built (modules, settings, the app) is
frozen out of the collector (``gc.freeze``: never walked again, still freed by reference
counting when dropped), and a young collection waits for ``threshold`` net allocations instead
of 700, so far fewer short-lived objects are still alive when it runs. Cycles are still
collected, only less often.
"""

from __future__ import annotations

import gc


def settle(threshold: int) -> None:
    """Freeze what start-up built and let the young generation grow to ``threshold`` net
    allocations before a collection (0: leave the collector as Python set it)."""
    if not threshold:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)
