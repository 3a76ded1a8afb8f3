"""A mergeable latency histogram: log-spaced bins (≈ 9 % wide) as ``{bin: count}``, so shards
and time buckets add up bin by bin, and percentiles are read from the merged counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import lru_cache

BINS_PER_DOUBLING = 8
_LOG2 = math.log(2)


@lru_cache(maxsize=65_536)  # latencies repeat; log + ceil + str per sample added up in replay
def bin_of(ms: int) -> str:
    """The bin (as a JSON-safe str key) holding a latency of ``ms`` milliseconds."""
    if ms <= 1:
        return "0"
    return str(math.ceil(math.log(ms) / _LOG2 * BINS_PER_DOUBLING))


def upper_ms(bin_key: str) -> float:
    """The upper bound of a bin, the value percentiles report (never under-states)."""
    b = int(bin_key)
    return 1.0 if b <= 0 else 2.0 ** (b / BINS_PER_DOUBLING)


def add(hist: dict[str, int], ms: int, n: int = 1) -> None:
    key = bin_of(ms)
    hist[key] = hist.get(key, 0) + n


def merge(hists: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hists:
        for k, n in h.items():
            out[k] = out.get(k, 0) + n
    return out


def percentile(hist: Mapping[str, int], q: float) -> float | None:
    """The ``q`` (0..1) quantile, ``None`` for an empty histogram."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for key in sorted(hist, key=int):
        seen += hist[key]
        if seen >= rank:
            return round(upper_ms(key), 1)
    return None  # unreachable: seen reaches total
