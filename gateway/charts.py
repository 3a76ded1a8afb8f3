"""The dashboard's charts in the stats push: each window some subscriber looks at, read once per
push from the ``charts`` view (``projections.series``), then cut down for each principal.

An operator sees everything; a tenant sees the service-wide series the dashboard already shows
it as numbers (completions, queue depth, provider calls, latency, breakers) and, of the cost,
only its own tenant's — no other tenant's and no per-provider total of everyone's spend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from gateway.auth import Principal
from projections.series import DEFAULT_WINDOW, WINDOWS, read, series
from projections.storage import ShardStore

log = logging.getLogger("aiis.gateway")
# how long a window's series may be reused (ms): a tenth of its bucket — the coarse windows move
# slowly, and reading 144 buckets every push would cost the push its latency
REUSE_MS = {"15m": 0, "1h": 6_000, "24h": 60_000}


class Charts:
    """Reads the windows' series for one push; ``view`` gives one principal its part."""

    def __init__(self, views: ShardStore, partitions: int) -> None:
        self.views = views
        self.partitions = partitions
        self._failed = False
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}  # window -> (read at, series)

    async def read(self, windows: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The series of each window asked for (an unreadable view: none, logged once)."""
        now = int(time.time() * 1000)
        wanted = sorted({w or DEFAULT_WINDOW for w in windows} & WINDOWS.keys())
        stale = [w for w in wanted if now - self._cache.get(w, (-(2**62), {}))[0] > REUSE_MS[w]]
        try:
            fresh = await asyncio.gather(*(self._series(w, now) for w in stale))
        except Exception as exc:  # the dashboard must survive a broken or missing view
            if not self._failed:
                log.warning("charts unavailable: %s", exc)
            self._failed = True
            return {}
        self._failed = False
        self._cache.update((w, (now, s)) for w, s in zip(stale, fresh, strict=True))
        self._cache = {w: self._cache[w] for w in wanted}
        return {w: self._cache[w][1] for w in wanted}

    async def _series(self, window: str, now: int) -> dict[str, Any]:
        return series(await read(self.views, self.partitions, window, now), window, now)

    @staticmethod
    def view(read: dict[str, dict[str, Any]], window: str, who: Principal) -> dict[str, Any] | None:
        """Window ``window`` ("" = the default) as ``who`` may see it; None when unreadable."""
        s = read.get(window or DEFAULT_WINDOW)
        if s is None or who.operator:
            return s
        mine = {k: v for k, v in s["usd_tenant"].items() if who.may_read(k)}
        totals = s["totals"]
        return {
            **s,
            "usd_provider": {},
            "usd_tenant": mine,
            "totals": {
                **totals,
                "usd_nanos_provider": {},
                "usd_nanos_tenant": {
                    k: v for k, v in totals["usd_nanos_tenant"].items() if who.may_read(k)
                },
            },
        }
